// QuantEase (Behdin et al., "QuantEase: Optimization-based Quantization for Language Models", arXiv 2309.01885):
// cyclic coordinate descent on the layer objective, and its outlier-aware variant.
//
// With Σ = H (any positive multiple of X Xᵀ), minimise
//     f(Ŵ) = tr((T − Ŵ) Σ (T − Ŵ)ᵀ),   T = W (plain) or W − S (outlier-aware),
// each row of Ŵ on its row's (or row-and-group's) grid. One coordinate is one column for all rows at once.
// We keep G = (T − Ŵ) Σ (rows x cols, float32), so the best unconstrained value of column j is
//     β_j = ŵ_j + G_{:,j} / Σ_jj        (= ((TΣ)_j − Σ_{k≠j} Ŵ_k Σ_kj) / Σ_jj)
// and a quantized sweep sets ŵ_j = quant(β_j), the nearest grid point; changing column j by δ changes G by
// −δ Σ_{j,:}. The objective is free from G: f = Σ_{r,c} (T − Ŵ)_{rc} G_{rc} (no constant term, because G is
// taken against T = W − S itself).
//
// Grids: affine (groups in processing order, as GPTQ's; min-max or GPTQ's MSE range search on W) or, ours,
// codebooks (2^bits ascending levels per row or row and group of ORIGINAL columns, LeanQuant's static groups):
// given (opt.codebook) or LeanQuant's (init = leanquant). The step is the nearest grid point either way; a β on
// a codebook midpoint takes the lower level. init = gptq / leanquant start from that solver's result (the
// target stays the ORIGINAL W) and return it when the descent does not improve on it in float64.
//
// Outlier-aware variant (outlier_fraction > 0): minimise f(Ŵ + S), S with k non-zeros (k = round(fraction x
// entries)) or k whole columns (structured, k = round(fraction x cols)). S starts at the k largest |W|
// (columns of largest norm), Ŵ = W − S. Per outer iteration one sweep against T = W − S, then one iterative
// hard-thresholding step S ← top_k(S + η G), η = step / (2 λ_max(Σ)), λ_max by power iteration. Grids:
// unstructured — each row's (group's) range clipped once at its quantiles from the original W
// (n = round(len * fraction / 2): xmin = n-th smallest, xmax = n-th largest, 0-based); structured — min-max
// over the current non-outlier columns of the original W, refitted whenever the column set moves.
//
// The pieces, in cpp/src/quantease/: problem (Σ and W in processing order), sweep (the blocked coordinate
// sweeps), schedule (which sweeps, the best iterate, polish, refit rounds), refit (grids to fixed codes),
// outliers, start (grids and starting point per init), output; quantease.cpp is the recipe.
#pragma once

#include <cstdint>
#include <vector>

#include "quantease/grid.hpp"
#include "quantease/leanquant.hpp"
#include "quantease/result.hpp"

namespace quantease {

enum class QuantEaseInit { w, rtn, gptq, leanquant };
enum class OutlierStructure { unstructured, structured };

struct QuantEaseOptions {
  int bits = 4;
  int group_size = -1;  // -1 or a positive divisor of cols; groups follow the processing order (as GPTQ)
  bool sym = false;
  bool mse = false;  // grid: GPTQ's MSE range search on W (per row/group) instead of min-max
  bool act_order = true;
  int iters = 30;  // sweeps of the schedule (>= 1)
  QuantEaseInit init = QuantEaseInit::w;
  bool relaxed = true;
  double tol = 0.0;               // relative improvement of the best objective below which a quantized sweep stops
  double outlier_fraction = 0.0;  // [0, 1); 0: plain QuantEase
  OutlierStructure outlier_structure = OutlierStructure::unstructured;
  double outlier_step = 1.0;  // α of η = α / (2 λ_max(Σ)) (> 0)
  int block_size = 128;
  bool polish = true;       // quantized sweeps from the best iterate after the schedule until nothing changes
  int refresh_every = 0;    // > 0: recompute G = (T − Ŵ) Σ by a GEMM every that many sweeps (drift control)
  double gptq_damp = 0.01;  // init = gptq only
  int refit = 0;            // grid refit rounds after the schedule (ours; 0: grids fixed, as the paper)
  // Codebook grids: (rows * groups) x 2^bits, ascending per row (row r, group g at r * groups + g; groups of
  // original columns). Empty: affine grids. Not with sym, mse, outliers or init = gptq/leanquant.
  RowMatrixXf codebook;
  // With a codebook and init = w: the sweeps start on these codes (rows x cols, W's column order, indices into
  // the codebook) instead of at W, and the result is never worse than them (a GPTQ solution on the same grids,
  // as quantease(gguf=, init="gptq") passes). Empty: start as init says.
  RowMatrixU8 start_codes;
  // init = leanquant: LeanQuant's exponent, damp, seed and k-means options (its bits, group_size, act_order
  // and block_size are taken from the options above; always the non-uniform grid).
  LeanQuantOptions leanquant;
};

struct QuantEaseOutput {
  QuantOutput quant;     // weight = grid part + S; codes/scales/zeros of the grid part (no scales: codebook)
  RowMatrixXf codebook;  // codebook grids: the (rows * groups) x 2^bits levels the codes index; else empty
  std::vector<double> loss_history;   // f after every sweep (after the IHT step in the outlier variant)
  std::vector<char> quantized;        // per sweep: 1 quantized, 0 relaxed
  std::vector<std::int64_t> changes;  // per sweep: entries whose value changed
  std::vector<char> polish;           // per sweep: 1 for a polish sweep
  std::vector<std::int64_t> moves;    // per sweep: entries whose change was applied to G (the update's work)
  std::vector<double> sweep_times;    // per sweep: wall seconds
  int sweeps = 0;
  bool converged = false;  // the last quantized sweep changed nothing
  bool stopped_by_tol = false;
  int best_sweep = -1;                 // sweep whose iterate is returned (-1: the initial point)
  bool kept_init = false;              // init = gptq/leanquant: the init's own result returned (CD did not improve it)
  double base = 0.0;                   // tr(W Σ Wᵀ), for relative errors
  int refreshes = 0;                   // exact recomputations of G
  int refits = 0;                      // grid refit rounds that lowered f
  std::vector<double> refit_gains;     // decrease of f by each refit (the last may be ~0: stop)
  double lambda_max = 0.0, eta = 0.0;  // outlier variant
  std::int64_t outlier_count = 0;      // k (entries, or columns when structured)
  VectorXi64 outlier_indptr;           // CSR over rows, original column order (empty without outliers)
  VectorXi32 outlier_indices;
  Eigen::VectorXf outlier_values;
  double sweep_seconds = 0.0, gemm_seconds = 0.0, column_seconds = 0.0, iht_seconds = 0.0;
};

// W: rows x cols, H: cols x cols symmetric (both finite); options validated by the caller (bits 2..8,
// group_size -1 or a divisor, iters >= 1, tol >= 0, 0 <= fraction < 1, step > 0, block_size >= 1,
// init = gptq only without outliers, a codebook finite, ascending, (rows * groups) x 2^bits and without
// sym/mse/outliers/init = gptq; init = leanquant likewise, with no codebook given). Throws
// NumericalError only from GPTQ's or LeanQuant's factorization.
template <class HT>
QuantEaseOutput quantease(const ConstRowMatrixRef<float>& W, const ConstRowMatrixRef<HT>& H,
                          const QuantEaseOptions& opt);

// λ_max of the symmetric PSD matrix A by power iteration from a fixed start (deterministic).
double power_iteration_lambda_max(const RowMatrixXf& A, int max_iters = 100, double rel_tol = 1e-7);

}  // namespace quantease
