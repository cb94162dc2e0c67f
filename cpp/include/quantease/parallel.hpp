// OpenMP loops over fixed chunks, with exceptions carried out of the parallel region.
//
// Chunk boundaries depend only on the problem size, never on the thread count, and each chunk's
// arithmetic is independent of the others: results are bit-identical for any OMP_NUM_THREADS.
#pragma once

#include <algorithm>
#include <exception>
#include <mutex>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "quantease/types.hpp"

namespace quantease {

// The number of threads parallel_chunks may use, and the calling thread's index in [0, max_threads()):
// for per-thread scratch buffers.
inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Calls body(begin, end) for consecutive chunks of [0, n) of size `chunk` (the last may be shorter),
// spread over OpenMP threads. The first exception thrown by any chunk is rethrown after the loop.
template <class Body>
void parallel_chunks(Index n, Index chunk, Body&& body) {
  if (n <= 0) return;
  chunk = std::max<Index>(chunk, 1);
  const Index n_chunks = (n + chunk - 1) / chunk;
  std::exception_ptr first_error;
  std::mutex error_mutex;
#pragma omp parallel for schedule(dynamic, 1) if (n_chunks > 1)
  for (Index c = 0; c < n_chunks; ++c) {
    {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (first_error) continue;  // another chunk failed: skip the remaining work
    }
    try {
      const Index begin = c * chunk;
      body(begin, std::min(n, begin + chunk));
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!first_error) first_error = std::current_exception();
    }
  }
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace quantease
