// QuantEase's outlier-aware variant: the sparse full-precision part S and its iterative hard-thresholding
// step (see quantease.hpp).
#pragma once

#include <cstdint>
#include <vector>

#include "problem.hpp"
#include "quantease/quantease.hpp"

namespace quantease::qe {

class Outliers {
 public:
  // λ_max(Σ), η = step / (2 λ_max), k, and the start: S = the k largest |W| entries (or the k columns of
  // largest norm) of W, exactly W's values there.
  Outliers(const Problem& problem, const QuantEaseOptions& opt);

  double lambda_max() const { return lambda_max_; }
  double eta() const { return eta_; }
  std::int64_t k() const { return k_; }  // entries, or columns when structured
  bool structured() const { return structured_; }
  const RowMatrixXf& values() const { return values_; }          // S, processing order
  const std::vector<char>& columns() const { return columns_; }  // structured: the outlier columns

  // S ← top_k(S + η G); G −= (S_new − S_old) Σ (T = W − S moved). Returns whether S changed.
  bool step(RowMatrixXf& G);

  // S and its support, as the best iterate keeps them.
  struct Snapshot {
    RowMatrixXf values;
    RowMatrixU8 support;
  };
  Snapshot snapshot() const { return {values_, support_}; }
  void restore(const Snapshot& s) {
    values_ = s.values;
    support_ = s.support;
  }

 private:
  bool select(RowMatrixXf& candidate, bool update_gradient, RowMatrixXf* G);
  void select_columns(RowMatrixXf& candidate);
  void select_entries(RowMatrixXf& candidate);

  const Problem& problem_;
  bool structured_;
  double lambda_max_ = 0.0, eta_ = 0.0;
  std::int64_t k_ = 0;
  RowMatrixXf values_;         // S (rows x cols)
  RowMatrixU8 support_;        // 1 on the support of S (its k entries, or k whole columns)
  std::vector<char> columns_;  // structured: the current outlier columns
};

}  // namespace quantease::qe
