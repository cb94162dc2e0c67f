"""A straightforward PyTorch-CPU port of the official LeanQuant non-uniform path (the peer baseline).

Written from ../../../shared/specs/leanquant.md in the style of the official code: GPTQ preparation (dead
columns, act-order, damping relative to mean(diag H), ``U`` = upper Cholesky factor of ``H⁻¹`` by the
reference's cholesky -> cholesky_inverse -> cholesky(upper) chain, float32), importance ``s_j = U_jj^(−p)`` in
processing order, a per-row weighted 1-D k-means into ``2^bits`` centroids fitted on the ORIGINAL (permuted)
weights, then the GPTQ column loop (blocks, lazy batch update) with ``quant(w)`` = nearest centroid of the row.

Two k-means back ends:
- ``kmeans="sklearn"`` -- as the official code: one ``sklearn.cluster.KMeans`` per row (n_init 'auto' = 1
  run for an explicit init, initial centroids evenly spaced between the row's min and max when
  ``2^bits <= 8``, k-means++ seeded otherwise, max_iter 100, tol 1e-6, sample_weight = s), rows farmed out
  to a process pool (the official code uses one worker per core; the pool is started before the clock,
  as the official code starts it at import);
- ``kmeans="lloyd"`` -- a simple batched weighted Lloyd in torch (all rows at once, same init, same stopping
  rule in spirit: labels unchanged or centroid shift² ≤ tol·var(row), at most 100 iterations), for speed
  comparisons.

    Q, seconds = leanquant(W, H, bits=4, exponent=4.0, damp=0.1, act_order=True, kmeans="sklearn")
"""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import torch

from .torch_gptq import _check, torch_threads

__all__ = ["leanquant", "kmeans_sklearn", "kmeans_lloyd"]


def _kmeans_fit_row(task):
    """One row's weighted k-means with sklearn, as the official ``kmeans_fit``."""
    from sklearn.cluster import KMeans

    weights_np, sample_weight, n_cluster, random_seed = task
    kmeans = KMeans(
        n_clusters=n_cluster,
        init=(
            np.linspace(weights_np.min(), weights_np.max(), num=n_cluster)[:, None] if n_cluster <= 8 else "k-means++"
        ),
        n_init="auto",
        random_state=random_seed,
        max_iter=100,
        tol=1e-6,
    ).fit(weights_np, sample_weight=sample_weight)
    return kmeans.cluster_centers_.reshape(-1)


def kmeans_sklearn(W: np.ndarray, s: np.ndarray, k: int, seed: int = 0, pool=None) -> np.ndarray:
    """Per-row sklearn KMeans of W (rows x cols, float32) with sample weights s (cols,) -> rows x k."""
    tasks = [(W[j, :, None], s, k, seed) for j in range(W.shape[0])]
    if pool is None:
        results = [_kmeans_fit_row(t) for t in tasks]
    else:
        results = list(pool.imap(_kmeans_fit_row, tasks, chunksize=max(1, len(tasks) // 64)))
    return np.stack(results).reshape(W.shape[0], k).astype(np.float32)


def kmeans_lloyd(W: torch.Tensor, s: torch.Tensor, k: int, max_iter: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Batched weighted 1-D Lloyd on every row of W (rows x cols) with weights s (cols,) -> rows x k.

    Initial centroids evenly spaced between each row's min and max. Empty clusters keep their centroid.
    """
    rows, cols = W.shape
    lo = W.min(1, keepdim=True)[0]
    hi = W.max(1, keepdim=True)[0]
    steps = torch.linspace(0, 1, k, dtype=W.dtype).unsqueeze(0)
    C = lo + (hi - lo) * steps  # sorted per row
    sw = s.to(W.dtype).unsqueeze(0).expand(rows, cols)
    # tolerance relative to the row's (weighted-free) variance, as sklearn scales tol by the data variance
    thresh = tol * W.var(1, unbiased=False)
    active = torch.ones(rows, dtype=torch.bool)
    labels = torch.full((rows, cols), -1, dtype=torch.long)
    for _ in range(max_iter):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        Wa, Ca = W[idx], C[idx]
        Ca, _ = torch.sort(Ca, dim=1)
        mid = 0.5 * (Ca[:, 1:] + Ca[:, :-1])
        lab = torch.searchsorted(mid.contiguous(), Wa.contiguous())
        swa = sw[idx]
        num = torch.zeros_like(Ca).scatter_add_(1, lab, swa * Wa)
        den = torch.zeros_like(Ca).scatter_add_(1, lab, swa)
        Cn = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), Ca)
        shift = ((Cn - Ca) ** 2).sum(1)
        same = (lab == labels[idx]).all(1)
        C[idx] = Cn
        labels[idx] = lab
        active[idx] = ~(same | (shift <= thresh[idx]))
    return C


def leanquant(
    W: np.ndarray,
    H: np.ndarray,
    bits: int = 4,
    exponent: float = 4.0,
    damp: float = 0.1,
    act_order: bool = True,
    block_size: int = 128,
    seed: int = 0,
    *,
    kmeans: str = "sklearn",
    processes: int | None = None,
    threads: int | None = None,
    info: dict | None = None,
) -> tuple[np.ndarray, float]:
    """LeanQuant non-uniform quantisation of ``W`` (rows x cols) against ``H``, official semantics.

    Returns ``(Q, seconds)``: the dequantized weight (float32 numpy) and the wall time of the solve
    (preparation + k-means + column loop). When ``info`` is a dict it receives ``codes`` (uint8 rows x cols,
    indices into the row's codebook), ``codebook`` (float32 rows x 2^bits), ``kmeans_seconds``, ``perm``.
    ``processes``: sklearn worker processes (default: the thread count; 1 = in-process, no pool).
    """
    _check(W, H)
    if kmeans not in ("sklearn", "lloyd"):
        raise ValueError(f"kmeans must be 'sklearn' or 'lloyd', got {kmeans!r}")
    k = 2**bits
    nproc = processes if processes is not None else (threads or multiprocessing.cpu_count())
    pool = None
    if kmeans == "sklearn" and nproc > 1:
        pool = multiprocessing.get_context("spawn").Pool(nproc)
        pool.map(
            _kmeans_fit_row,
            [(np.zeros((k, 1), np.float32) + np.arange(k)[:, None], np.ones(k, np.float32), k, 0)] * nproc,
        )  # warm the workers
    try:
        with torch_threads(threads):
            W_t = torch.from_numpy(np.array(W, dtype=np.float32, copy=True))
            H_t = torch.from_numpy(np.array(H, dtype=np.float32, copy=True))
            rows, columns = W_t.shape
            tick = time.perf_counter()

            dead = torch.diag(H_t) == 0
            H_t[dead, dead] = 1
            W_t[:, dead] = 0

            perm = invperm = None
            if act_order:
                perm = torch.argsort(torch.diag(H_t), descending=True)
                W_t = W_t[:, perm]
                H_t = H_t[perm][:, perm]
                invperm = torch.argsort(perm)

            dampv = damp * torch.mean(torch.diag(H_t))
            diag = torch.arange(columns)
            H_t[diag, diag] += dampv
            H_t = torch.linalg.cholesky(H_t)
            H_t = torch.cholesky_inverse(H_t)
            H_t = torch.linalg.cholesky(H_t, upper=True)
            Hinv = H_t

            Q = torch.zeros_like(W_t)
            Q_codes = torch.zeros((rows, columns), dtype=torch.uint8)

            t_km = time.perf_counter()
            s = torch.diagonal(Hinv) ** (-exponent)
            if kmeans == "sklearn":
                centroids = torch.from_numpy(kmeans_sklearn(W_t.numpy(), s.numpy(), k, seed, pool))
            else:
                centroids = kmeans_lloyd(W_t, s, k)
            kmeans_seconds = time.perf_counter() - t_km

            for i1 in range(0, columns, block_size):
                i2 = min(i1 + block_size, columns)
                count = i2 - i1
                W1 = W_t[:, i1:i2].clone()
                Q1 = torch.zeros_like(W1)
                Err1 = torch.zeros_like(W1)
                Hinv1 = Hinv[i1:i2, i1:i2]
                for i in range(count):
                    w = W1[:, i]
                    d = Hinv1[i, i]
                    codes = torch.argmin((centroids - w[:, None]).abs(), dim=1, keepdim=True)
                    Q_codes[:, i1 + i] = codes.flatten().to(torch.uint8)
                    q = torch.gather(centroids, 1, codes).flatten()
                    Q1[:, i] = q
                    err1 = (w - q) / d
                    W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                    Err1[:, i] = err1
                Q[:, i1:i2] = Q1
                W_t[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

            if act_order:
                Q = Q[:, invperm]
                Q_codes = Q_codes[:, invperm]
            seconds = time.perf_counter() - tick
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    if info is not None:
        info.update(
            codes=Q_codes.numpy(),
            codebook=centroids.numpy().astype(np.float32),
            kmeans_seconds=kmeans_seconds,
            damp=float(dampv),
            perm=None if perm is None else perm.numpy(),
        )
    return Q.numpy(), seconds
