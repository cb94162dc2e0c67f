// An 8-lane floating-point sum for LeanQuant's fits (private header).
#pragma once

#include "quantease/types.hpp"

namespace quantease::leanquant_detail {

// sum of term(i) over i < n in 8 independent running sums (a single one waits an add latency per term,
// and keeps the compiler from vectorising a floating-point sum)
template <class Term>
double lane_sum(Index n, Term term) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  Index i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lane[l] += term(i + l);
  for (; i < n; ++i) lane[i % 8] += term(i);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

}  // namespace quantease::leanquant_detail
