"""QuantResult: the one result type every solver returns.

A result holds the quantized layer in two equivalent forms: the integer ``codes`` with their grid
(``scales``/``zeros`` per row and group, or a per-row ``codebook`` for non-uniform grids) plus the optional
full-precision sparse ``outliers``, and the dequantized ``weight`` that those reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional, Tuple

import numpy as np

if TYPE_CHECKING:
    from .gguf import GGUFBlocks

__all__ = ["QuantResult", "SparseOutliers"]


@dataclass(frozen=True)
class SparseOutliers:
    """Full-precision weights kept outside the grid, as CSR over the rows of W (rows x cols)."""

    indptr: np.ndarray  # int64 [rows + 1]
    indices: np.ndarray  # int32 [nnz], column of each value
    values: np.ndarray  # float32 [nnz]
    shape: Tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    def __repr__(self) -> str:
        rows, cols = self.shape
        share = self.nnz / float(rows * cols) if rows * cols else 0.0
        return f"SparseOutliers(shape=({rows}, {cols}), nnz={self.nnz} ({share:.2%}))"

    def to_dense(self) -> np.ndarray:
        rows, cols = self.shape
        dense = np.zeros((rows, cols), dtype=np.float32)
        row_of = np.repeat(np.arange(rows), np.diff(self.indptr))
        dense[row_of, self.indices] = self.values
        return dense

    @staticmethod
    def from_dense(dense: np.ndarray) -> "SparseOutliers":
        rows, cols = dense.shape
        r, c = np.nonzero(dense)
        indptr = np.zeros(rows + 1, dtype=np.int64)
        np.add.at(indptr, r + 1, 1)
        return SparseOutliers(np.cumsum(indptr), c.astype(np.int32), dense[r, c].astype(np.float32), (rows, cols))


@dataclass
class QuantResult:
    """Output of every solver. Shapes: W is rows x cols, G = number of groups (1 when group_size == -1).

    weight      float32 [rows, cols]  dequantized weight, outliers included
    codes       uint8   [rows, cols]  grid index of every weight (in the ORIGINAL column order)
    scales      float32 [rows, G]     affine grid: q = scales * (codes - zeros)   (None for codebooks)
    zeros       float32 [rows, G]     integer-valued zero points                  (None for codebooks)
    g_idx       int32   [cols]        group of each input column
    perm        int64   [cols] | None act-order processing order (column perm[j] was processed j-th)
    loss        float | None          layer_loss(W, weight, H); None when no H was given
    damp        float | None          damping actually used (relative to mean(diag H))
    """

    weight: np.ndarray
    codes: np.ndarray
    scales: Optional[np.ndarray]
    zeros: Optional[np.ndarray]
    g_idx: np.ndarray
    perm: Optional[np.ndarray]
    loss: Optional[float]
    damp: Optional[float]
    bits: int
    group_size: int
    sym: bool
    method: str
    seconds: float
    # Solver-specific extras (None where a solver does not produce them).
    loss_history: Optional[np.ndarray] = None  # objective after every sweep (QuantEase)
    iters: Optional[int] = None  # sweeps actually run (QuantEase)
    outliers: Optional[SparseOutliers] = None  # full-precision sparse part (QuantEase, EasyQuant)
    outlier_fraction: Optional[float] = None  # nnz(outliers) / W.size
    codebook: Optional[np.ndarray] = None  # float32 [rows, 2^bits] or [rows, G, 2^bits] (LeanQuant)
    gguf: Optional["GGUFBlocks"] = None  # llama.cpp block parameters (solvers called with gguf=)
    info: dict = field(default_factory=dict)  # anything else a solver reports (e.g. timings)

    @classmethod
    def from_core(
        cls,
        out: Mapping[str, Any],
        *,
        method: str,
        bits: int,
        group_size: int,
        sym: bool,
        seconds: float,
        loss: Optional[float],
        damp: Optional[float] = None,
        info: Optional[dict] = None,
        **fields: Any,
    ) -> "QuantResult":
        """The result of one compiled solver call; the one path from a binding's dict to a QuantResult.

        ``out``: the dict every binding returns (cpp/bindings/output.hpp): weight, codes, scales, zeros, g_idx,
        perm, damp_attempts, phase_seconds, plus ``codebook`` (flat rows*G x 2^bits, reshaped here) and the CSR
        ``outlier_indptr`` / ``outlier_indices`` / ``outlier_values`` where the solver has them. ``damp``: the
        damping the solver used (None where it factors nothing); ``info``: the solver's own extras, to which
        ``phase_seconds`` (and ``damp_attempts`` with a damp) are added; ``fields``: other QuantResult fields.
        """
        rows, cols = out["weight"].shape
        codebook = out.get("codebook")
        if codebook is not None:
            levels = 1 << bits
            codebook = codebook.reshape((rows, levels) if group_size == -1 else (rows, cols // group_size, levels))
        outliers = None
        if out.get("outlier_indptr") is not None:
            outliers = SparseOutliers(
                out["outlier_indptr"], out["outlier_indices"], out["outlier_values"], (int(rows), int(cols))
            )
        extras = dict(info or {})
        if damp is not None:
            extras.setdefault("damp_attempts", out["damp_attempts"])
        extras.setdefault("phase_seconds", out["phase_seconds"])
        return cls(
            weight=out["weight"],
            codes=out["codes"],
            scales=out["scales"],
            zeros=out["zeros"],
            g_idx=out["g_idx"],
            perm=out["perm"],
            loss=loss,
            damp=damp,
            bits=bits,
            group_size=group_size,
            sym=sym,
            method=method,
            seconds=seconds,
            outliers=outliers,
            outlier_fraction=None if outliers is None else outliers.nnz / float(rows * cols),
            codebook=codebook,
            info=extras,
            **fields,
        )

    @property
    def shape(self) -> Tuple[int, int]:
        rows, cols = self.weight.shape
        return int(rows), int(cols)

    def grid_weight(self) -> np.ndarray:
        """The quantized part alone, rebuilt from the codes: scales*(codes - zeros), codebook[codes], or
        llama.cpp's dequantization of the GGUF blocks."""
        if self.gguf is not None:
            from .gguf import dequantize

            return dequantize(self.gguf, self.codes)
        g = self.g_idx.astype(np.int64)
        if self.codebook is not None:
            rows = np.arange(self.codes.shape[0])[:, None]
            if self.codebook.ndim == 2:
                return self.codebook[rows, self.codes].astype(np.float32)
            return self.codebook[rows, g[None, :], self.codes].astype(np.float32)
        if self.scales is None or self.zeros is None:
            raise ValueError("a result without a codebook must have scales and zeros")
        s = self.scales[:, g]
        z = self.zeros[:, g]
        return (s * (self.codes.astype(np.float32) - z)).astype(np.float32)

    def dense_weight(self) -> np.ndarray:
        """grid_weight() plus the sparse full-precision outliers: equals ``weight``."""
        w = self.grid_weight()
        if self.outliers is not None:
            w = w + self.outliers.to_dense()
        return w

    def storage_bits(self) -> dict:
        """Bits this layer takes when stored compactly, by part: ``codes`` (``bits`` per weight), ``grid``
        (per row and group: an fp16 scale and a ``bits``-bit zero point, no zero when ``sym``; or the 2^bits
        fp16 levels of each codebook), ``g_idx`` (an int32 group index per column, only when the column ->
        group map is not ``c // group_size``, i.e. act-order with groups), ``outliers`` (per full-precision
        entry an fp16 value and an int32 column index, plus an int64 row pointer per row)."""
        rows, cols = self.shape
        groups = 1 if self.group_size in (-1, None) or self.group_size >= cols else cols // self.group_size
        if self.codebook is not None:
            grid = int(np.asarray(self.codebook).size) * 16
        else:
            grid = rows * groups * (16 + (0 if self.sym else self.bits))
        trivial = np.array_equal(np.asarray(self.g_idx), np.arange(cols) // max(cols // groups, 1))
        parts = {"codes": rows * cols * self.bits, "grid": grid, "g_idx": 0 if trivial else cols * 32, "outliers": 0}
        if self.outliers is not None and self.outliers.nnz:
            parts["outliers"] = self.outliers.nnz * (16 + 32) + (rows + 1) * 64
        return parts

    @property
    def bits_per_weight(self) -> float:
        """Effective bits per weight: every part of ``storage_bits()`` over rows x cols. 3-bit, groups of 64:
        3 + 19/64 = 3.30 (affine); a per-row 8-level codebook over 576 columns: 3 + 128/576 = 3.22."""
        rows, cols = self.shape
        return sum(self.storage_bits().values()) / float(rows * cols)

    def __repr__(self) -> str:
        rows, cols = self.shape
        loss = "None" if self.loss is None else f"{self.loss:.6g}"
        return (
            f"QuantResult(method={self.method!r}, shape=({rows}, {cols}), bits={self.bits}, "
            f"group_size={self.group_size}, sym={self.sym}, loss={loss}, seconds={self.seconds:.3f})"
        )
