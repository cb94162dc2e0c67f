// The branch and bound of LeanQuant's affine search over blocks of scales (private header).
//
// For a block of consecutive t (scales in [h1, h2]) and a zero z, no candidate can beat
//   LB(z) = sum_x s dist(x, U_z)^2,  U_z = union over k in [-z, maxq - z] of the interval between k h1 and k h2,
// since each of its grid points lies in U_z. LB costs O(maxq) threshold sums (RowIndex::at()), like one E.
// Each family is cut into blocks of kTop scales, bounded, and visited in increasing order of their least
// bound; a block whose bound (for every zero) exceeds the best error found so far is dropped, otherwise it
// is split into kSplit sub-blocks bounded the same way (a child keeps its parent's bound where that is
// larger), down to blocks of at most kSplit scales, whose (t, z) are evaluated exactly where z survived.
// Dropping needs LB > best + eps (BestCandidate), so the result is the least E over the whole candidate set up
// to the round-off of the sums. Best first, the incumbent is good early and most blocks go at the first or
// second level: on 4096-value LLM-like rows about 50 bounds and 10-20 E per row at 4 bits instead of the
// T x 2^bits windows of a sweep.
#pragma once

#include <utility>
#include <vector>

#include "candidates.hpp"
#include "row_index.hpp"

namespace quantease::leanquant_detail {

class BranchAndBound {
 public:
  BranchAndBound(const RowIndex& index, const CandidateSet& candidates, BestCandidate& best)
      : index_(index), cand_(candidates), best_(best) {}

  // Sizes the per-lattice-point scratch for a search at the candidates' maxq.
  void prepare();
  // Every candidate of family fam with t < len (scales too small for float32 left out), offered to best.
  void search_family(int fam, Index len);
  // LB(z) of the block for z in [block.zlo, block.zhi] into lb[z] (+inf elsewhere).
  void bound(const ScaleBlock& block, double* lb);

 private:
  static constexpr Index kTop = 256, kSplit = 4;  // by instruction counts on LLM-like rows (2..4 bits)

  // Scratch of one level of the block tree (reused across rows).
  struct Level {
    std::vector<ScaleBlock> blocks;
    std::vector<double> lb;  // blocks x (maxq + 1)
    std::vector<std::pair<double, Index>> order;
  };
  Level& level(std::size_t depth) {
    if (levels_.size() <= depth) levels_.resize(depth + 1);
    return levels_[depth];
  }
  void explore_level(std::size_t depth, const double* parent_lb);
  void evaluate_block(const ScaleBlock& block, const double* lb);
  void evaluate(double h, int zlo, int zhi);

  const RowIndex& index_;
  const CandidateSet& cand_;
  BestCandidate& best_;
  int maxq_ = 1, off_ = 1;  // off_: lattice point kk -> index kk + off_
  int fam_ = 0;             // family and step of the candidates evaluate() sees
  Index t_ = 0;
  // sums below thresholds (index kk + off_): the boundaries of evaluate(), a bound's lattice intervals' ends
  // and the midpoints of its open gaps
  std::vector<Moments> sums_boundary_, sums_lo_, sums_hi_, sums_mid_;
  std::vector<double> cum_, lo_, hi_, below_, above_;  // per lattice point (index kk + off_)
  std::vector<char> open_;                             // gap kk to kk + 1 open (index kk + off_ + 1)
  std::vector<char> need_, present_;                   // per zero
  std::vector<Level> levels_;
};

}  // namespace quantease::leanquant_detail
