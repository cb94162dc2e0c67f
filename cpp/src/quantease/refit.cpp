// Grid refit for QuantEase (see refit.hpp).
#include "refit.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "quantease/gemm.hpp"
#include "quantease/parallel.hpp"

namespace quantease::qe {
namespace {

// The sums over one row's group C that fix the change of f for any (scale, zero) move: with e = codes − zero
// and v = Σ_CC 1, eu = eᵀ Σ_CC e, ev = eᵀ v, ge = eᵀ G_C, g1 = 1ᵀ G_C.
struct GroupSums {
  double eu = 0.0, ev = 0.0, ge = 0.0, g1 = 0.0;
};

// The move of one row's group from (s0, z0): Ŵ_C = s e moving to (s', z' = z + dz) is Δ = (s' − s) e − s' dz 1
// and changes f by −2 Δ·G_C + Δᵀ Σ_CC Δ, a 1-D quadratic in s' per dz solved in closed form. A candidate
// counts only with its exact change for the float32 scale it would store. k = 1ᵀ Σ_CC 1.
struct AffineMove {
  double change = 0.0;  // < 0: take it
  AffineGrid grid;
};
AffineMove best_affine_move(const GroupSums& sums, double k, AffineGrid from, int dz_max, float maxq) {
  const float s0 = from.scale, z0 = from.zero;
  AffineMove best{0.0, from};
  for (int dz = -dz_max; dz <= dz_max; ++dz) {
    const float z = z0 + static_cast<float>(dz);
    if (z < 0.0f || z > maxq) continue;
    const double a = sums.eu - 2.0 * dz * sums.ev + static_cast<double>(dz) * dz * k;  // e'ᵀ Σ e'
    if (!(a > 0.0)) continue;
    const float sn = static_cast<float>((sums.ge - dz * sums.g1 + s0 * (sums.eu - dz * sums.ev)) / a);
    if (!(sn > 0.0f) || !std::isfinite(sn)) continue;
    const double ds = static_cast<double>(sn) - s0, t = static_cast<double>(sn) * dz;
    const double dg = ds * sums.ge - t * sums.g1;
    const double dsd = ds * ds * sums.eu - 2.0 * ds * t * sums.ev + t * t * k;
    const double change = -2.0 * dg + dsd;
    if (change < best.change) best = {change, AffineGrid{sn, z}};
  }
  return best;
}

}  // namespace

// The groups of a row go one after the other, each with the G its predecessors left.
double refit(AffineGrids& grids, Iterate& point, const Problem& problem, bool sym) {
  const Index gs = grids.groups().size(), groups = grids.groups().count();
  const RowMatrixXf& sigma = problem.sigma();
  RowMatrixXf& G = point.gradient;
  const int dz_max = sym ? 0 : 2;
  std::vector<double> gain(problem.panels(), 0.0);
  parallel_chunks(problem.rows(), kRowPanel, [&](Index r0, Index r1) {
    const Index pr = r1 - r0;
    RowMatrixXf E(pr, gs), U(pr, gs), moved(pr, gs);
    Eigen::VectorXd v(gs);
    double part = 0.0;
    for (Index g = 0; g < groups; ++g) {
      const Index c0 = g * gs;
      const auto sigma_cc = sigma.block(c0, c0, gs, gs);
      for (Index c = 0; c < gs; ++c) v[c] = sigma_cc.row(c).cast<double>().sum();  // Σ_CC 1 (Σ symmetric)
      const double k = v.sum();                                                    // 1ᵀ Σ_CC 1
      for (Index i = 0; i < pr; ++i)
        for (Index c = 0; c < gs; ++c)
          E(i, c) = static_cast<float>(point.codes(r0 + i, c0 + c)) - grids.grid(r0 + i, g).zero;
      U.noalias() = E * sigma_cc;  // rows of U: (Σ_CC e)ᵀ
      bool any = false;
      for (Index i = 0; i < pr; ++i) {
        const Index r = r0 + i;
        GroupSums sums;
        for (Index c = 0; c < gs; ++c) {
          const double e = E(i, c), gv = G(r, c0 + c);
          sums.eu += e * U(i, c);
          sums.ev += e * v[c];
          sums.ge += e * gv;
          sums.g1 += gv;
        }
        const AffineMove move = best_affine_move(sums, k, grids.grid(r, g), dz_max, grids.maxq());
        if (move.change < 0.0) {
          grids.set(r, g, move.grid);
          for (Index c = 0; c < gs; ++c) {
            const float value = dequantize(point.codes(r, c0 + c), move.grid);
            moved(i, c) = value - point.w_hat(r, c0 + c);
            point.w_hat(r, c0 + c) = value;
          }
          part -= move.change;
          any = true;
        } else {
          moved.row(i).setZero();
        }
      }
      // G = (T − Ŵ) Σ: Ŵ moved on the group's columns
      if (any) gemm_add(G.middleRows(r0, pr), -1.0f, moved, sigma.middleRows(c0, gs));
    }
    gain[r0 / kRowPanel] = part;
  });
  return std::accumulate(gain.begin(), gain.end(), 0.0);
}

namespace {

// One row's group C (processing positions) on k levels: b = Aᵀ G_C (G summed per level) and M = Aᵀ Σ_CC A
// (Σ summed per pair of levels), A the group's one-hot code matrix. Scratch vectors are the caller's.
struct LevelSums {
  Eigen::MatrixXd M;
  Eigen::VectorXd b;
  std::vector<Index> start, fill, bucket;
  LevelSums(Index k, Index cols) : M(k, k), b(k), start(k + 1), fill(k), bucket(cols) {}

  void compute(const std::vector<Index>& C, const std::uint8_t* codes, const float* gradient,
               const RowMatrixXf& sigma) {
    const Index k = b.size();
    M.setZero();
    b.setZero();
    // the group's columns bucketed by code (counting sort), so that each M(a, t) row is a sum of gathers
    // over one bucket (no scatter into accumulators)
    std::fill(start.begin(), start.end(), Index{0});
    for (const Index j : C) ++start[codes[j] + 1];
    for (Index t = 0; t < k; ++t) start[t + 1] += start[t];
    std::copy(start.begin(), start.end() - 1, fill.begin());
    for (const Index j : C) bucket[fill[codes[j]]++] = j;
    for (const Index i : C) {
      const Index a = codes[i];
      b[a] += gradient[i];
      const float* si = sigma.row(i).data();
      for (Index t = 0; t < k; ++t) {
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        Index e = start[t];
        for (; e + 4 <= start[t + 1]; e += 4) {
          s0 += si[bucket[e]];
          s1 += si[bucket[e + 1]];
          s2 += si[bucket[e + 2]];
          s3 += si[bucket[e + 3]];
        }
        for (; e < start[t + 1]; ++e) s0 += si[bucket[e]];
        M(a, t) += (s0 + s1) + (s2 + s3);
      }
    }
  }
};

// The new float32 levels (into new_levels) of one row's group: Δ = M⁻¹ b over the levels in use (LDLT; the
// others stay). Returns the exact change of f for the float32 levels, or 0 when there is no usable move.
double solve_levels(const LevelSums& sums, const float* levels, std::vector<float>& new_levels) {
  const Index k = sums.b.size();
  std::vector<Index> used;
  for (Index t = 0; t < k; ++t)
    if (sums.M(t, t) > 0.0) used.push_back(t);
  const Index n = static_cast<Index>(used.size());
  if (n == 0) return 0.0;
  Eigen::MatrixXd Mu(n, n);
  Eigen::VectorXd bu(n);
  for (Index x = 0; x < n; ++x) {
    bu[x] = sums.b[used[x]];
    for (Index y = 0; y < n; ++y) Mu(x, y) = sums.M(used[x], used[y]);
  }
  const Eigen::VectorXd d = Mu.ldlt().solve(bu);
  if (!d.allFinite()) return 0.0;
  Eigen::VectorXd dq = Eigen::VectorXd::Zero(k);
  for (Index t = 0; t < k; ++t) new_levels[t] = levels[t];
  for (Index x = 0; x < n; ++x) {
    new_levels[used[x]] = static_cast<float>(levels[used[x]] + d[x]);
    dq[used[x]] = static_cast<double>(new_levels[used[x]]) - levels[used[x]];
  }
  const double change = -2.0 * dq.dot(sums.b) + dq.dot(sums.M * dq);
  return change < 0.0 && std::isfinite(change) ? change : 0.0;
}

}  // namespace

// The groups of a row go one after the other, each with the G its predecessors left.
double refit(CodebookGrids& grids, Iterate& point, const Problem& problem, bool) {
  const Index k = grids.levels(), groups = grids.groups().count(), cols = problem.cols();
  const RowMatrixXf& sigma = problem.sigma();
  // processing positions of every group's columns (static groups of original columns)
  std::vector<std::vector<Index>> members(groups);
  for (Index j = 0; j < cols; ++j) members[grids.groups().group(j)].push_back(j);
  std::vector<double> gain(problem.panels(), 0.0);
  parallel_chunks(problem.rows(), kRowPanel, [&](Index r0, Index r1) {
    const Index pr = r1 - r0;
    LevelSums sums(k, cols);
    std::vector<Index> order(k), renumber(k);
    std::vector<float> new_levels(k);
    RowMatrixXf moved, sigma_rows;
    double part = 0.0;
    for (Index g = 0; g < groups; ++g) {
      const std::vector<Index>& C = members[g];
      const Index nc = static_cast<Index>(C.size());
      moved.setZero(pr, nc);
      bool any = false;
      for (Index r = r0; r < r1; ++r) {
        std::uint8_t* codes = point.codes.row(r).data();
        sums.compute(C, codes, point.gradient.row(r).data(), sigma);
        float* levels = grids.levels_at(grids.index(r, g));
        const double change = solve_levels(sums, levels, new_levels);
        if (!(change < 0.0)) continue;
        part -= change;
        any = true;
        // Ŵ moves by the level's change on the group's columns (G after the panel's group, below)
        for (Index c = 0; c < nc; ++c) {
          const Index j = C[c];
          moved(r - r0, c) = new_levels[codes[j]] - point.w_hat(r, j);
          point.w_hat(r, j) = new_levels[codes[j]];
        }
        // ascending levels again: sort (stable), renumber the codes, new midpoints
        std::iota(order.begin(), order.end(), Index{0});
        std::stable_sort(order.begin(), order.end(), [&](Index x, Index y) { return new_levels[x] < new_levels[y]; });
        for (Index t = 0; t < k; ++t) {
          levels[t] = new_levels[order[t]];
          renumber[order[t]] = t;
        }
        for (const Index j : C) codes[j] = static_cast<std::uint8_t>(renumber[codes[j]]);
        grids.update_midpoints(grids.index(r, g));
      }
      // G = (T − Ŵ) Σ: Ŵ moved on the group's columns
      if (any) {
        sigma_rows.resize(nc, cols);
        for (Index c = 0; c < nc; ++c) sigma_rows.row(c) = sigma.row(C[c]);
        gemm_add(point.gradient.middleRows(r0, pr), -1.0f, moved, sigma_rows);
      }
    }
    gain[r0 / kRowPanel] = part;
  });
  return std::accumulate(gain.begin(), gain.end(), 0.0);
}

}  // namespace quantease::qe
