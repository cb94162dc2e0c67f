// The raw output of a solver before it becomes a Python QuantResult.
#pragma once

#include <chrono>
#include <string>
#include <utility>

#include "quantease/grid_set.hpp"
#include "quantease/types.hpp"

namespace quantease {

struct QuantOutput {
  RowMatrixXf weight;  // rows x cols, dequantized (outliers not included)
  RowMatrixU8 codes;   // rows x cols, original column order
  RowMatrixXf scales;  // rows x groups (empty for codebook grids)
  RowMatrixXf zeros;   // rows x groups, integer-valued
  VectorXi32 g_idx;    // cols: group of each original column
  VectorXi64 perm;     // processing order (empty without act-order)
  double damp = 0.0;   // relative damping that factored H (0 when no H)
  int damp_attempts = 0;
  std::vector<std::pair<std::string, double>> seconds;  // where the time went, phase by phase
};

// Wall-clock phases of a solve, appended to QuantOutput::seconds.
class PhaseTimer {
 public:
  explicit PhaseTimer(QuantOutput& out) : out_(out), last_(std::chrono::steady_clock::now()) {}
  void lap(const char* phase) {
    const auto now = std::chrono::steady_clock::now();
    out_.seconds.emplace_back(phase, std::chrono::duration<double>(now - last_).count());
    last_ = now;
  }

 private:
  QuantOutput& out_;
  std::chrono::steady_clock::time_point last_;
};

// The grid part of the output from the codes (out.codes, W's column order) and their grid set: g_idx,
// scales and zeros (affine grids; a codebook's levels are the solver's to return) and the weight, through
// the one dequantize of grid_set.hpp.
void write_grids(const AffineGrids& grids, QuantOutput& out);
void write_grids(const CodebookGrids& grids, QuantOutput& out);

}  // namespace quantease
