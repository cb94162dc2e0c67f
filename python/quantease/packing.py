"""Bit packing of integer codes into 32-bit words (GPTQ) or bytes (quantease's own format).

Every packing here is one little-endian bitstream: value i of a run occupies bits [b*i, b*i + b) of the
stream, and word w holds stream bits [W*w, W*w + W) (W = 32 or 8), least significant bit first. For b that
divides W this is the classic ``word = sum_k q[k] << (b*k)``; for b = 3 and W = 32 it is exactly GPTQ's
"32 values in 3 words" layout (v10 and v21 straddle word boundaries). Runs are packed in units of
``lcm(b, W) / b`` values, which fill ``lcm(b, W) / W`` words with no padding.

All arithmetic is vectorised NumPy in the word's own unsigned type (uint32 / uint8); no loop runs over
elements, only over the handful of word positions inside one unit.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PACKABLE_BITS", "values_per_unit", "pack_axis0", "unpack_axis0", "pack_rows_bytes", "unpack_rows_bytes"]

_WORD_DTYPES = {8: np.uint8, 32: np.uint32}

#: Code widths a packed format can store (a code fits one byte). Wider than the solvers' 2..8
#: (quantease.solvers.BITS): a file may hold results of other tools.
PACKABLE_BITS = range(1, 9)


def values_per_unit(bits: int, word_bits: int = 32) -> int:
    """Values in the smallest run that fills whole words: lcm(bits, word_bits) / bits (32 for 3-bit)."""
    return math.lcm(bits, word_bits) // bits


def _layout(bits: int, word_bits: int):
    """Per value index i of one unit: its word, its shift inside the word, and whether it spills over."""
    if bits not in PACKABLE_BITS:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if word_bits not in _WORD_DTYPES:
        raise ValueError(f"word_bits must be 8 or 32, got {word_bits}")
    per = values_per_unit(bits, word_bits)
    nwords = per * bits // word_bits
    offset = np.arange(per, dtype=np.int64) * bits
    word = offset // word_bits
    shift = offset % word_bits
    spills = shift + bits > word_bits
    return per, nwords, word, shift, spills


def pack_axis0(values: np.ndarray, bits: int, word_bits: int = 32) -> np.ndarray:
    """Pack a (M, C) array of codes in [0, 2^bits) along axis 0 into (M*bits/word_bits, C) words.

    M must be a multiple of values_per_unit(bits, word_bits). Returns uint32 (word_bits=32) or uint8.
    """
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D, got shape {values.shape}")
    per, nwords, word, shift, spills = _layout(bits, word_bits)
    m, c = values.shape
    if m % per:
        raise ValueError(
            f"{bits}-bit packing into {word_bits}-bit words needs a multiple of {per} values "
            f"along the packed axis, got {m}"
        )
    dt = _WORD_DTYPES[word_bits]
    if values.size and (values.min() < 0 or values.max() >= (1 << bits)):
        raise ValueError(
            f"codes must lie in [0, {(1 << bits) - 1}] for {bits}-bit packing, got [{values.min()}, {values.max()}]"
        )
    v = values.astype(dt).reshape(m // per, per, c)
    # The low part of every value lands in its own word (bits above the word are dropped by the shift);
    # the part that spills over lands at the bottom of the next word.
    lo = v << shift.astype(dt)[None, :, None]
    # Values are sorted by word, so each word is an OR over one contiguous slice of the unit.
    starts = np.searchsorted(word, np.arange(nwords))
    out = np.bitwise_or.reduceat(lo, starts, axis=1)
    if spills.any():
        right = np.where(spills, word_bits - shift, 0).astype(dt)
        hi = np.where(spills[None, :, None], v >> right[None, :, None], dt(0))
        spill = np.bitwise_or.reduceat(hi, starts, axis=1)
        out[:, 1:] |= spill[:, :-1]
    return np.ascontiguousarray(out.reshape(m // per * nwords, c), dtype=dt)


def unpack_axis0(packed: np.ndarray, bits: int, count: int | None = None, word_bits: int = 32) -> np.ndarray:
    """Inverse of pack_axis0: (P, C) words -> (count, C) uint8 codes (count defaults to P*word_bits/bits).

    Signed words (int32 from safetensors) are reinterpreted bit for bit as unsigned.
    """
    packed = np.asarray(packed)
    if packed.ndim != 2:
        raise ValueError(f"packed must be 2-D, got shape {packed.shape}")
    per, nwords, word, shift, spills = _layout(bits, word_bits)
    dt = _WORD_DTYPES[word_bits]
    if packed.dtype.itemsize * 8 != word_bits or packed.dtype.kind not in "iu":
        raise ValueError(f"packed must hold {word_bits}-bit integers, got {packed.dtype}")
    p, c = packed.shape
    if p % nwords:
        raise ValueError(f"{bits}-bit data packed in {word_bits}-bit words comes in runs of {nwords} words, got {p}")
    w = np.ascontiguousarray(packed).view(dt).reshape(p // nwords, nwords, c)
    lo = w[:, word, :] >> shift.astype(dt)[None, :, None]
    if spills.any():
        nxt = np.minimum(word + 1, nwords - 1)
        left = np.where(spills, word_bits - shift, 0).astype(dt)
        lo |= np.where(spills[None, :, None], w[:, nxt, :] << left[None, :, None], dt(0))
    codes = (lo & dt((1 << bits) - 1)).astype(np.uint8).reshape(p // nwords * per, c)
    total = codes.shape[0]
    if count is None:
        count = total
    if not 0 <= count <= total:
        raise ValueError(f"count must be in [0, {total}], got {count}")
    return codes[:count]


def pack_rows_bytes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack each row of a (R, K) code array into ceil(K*bits/8) bytes, LSB first (4-bit: low nibble first).

    Rows are independent bitstreams, zero-padded to a whole byte; returns uint8 (R, ceil(K*bits/8)).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D, got shape {codes.shape}")
    r, k = codes.shape
    per = values_per_unit(bits, 8)
    kpad = -(-k // per) * per
    padded = np.zeros((kpad, r), dtype=np.uint8)
    padded[:k] = codes.T
    packed = pack_axis0(padded, bits, word_bits=8)
    nbytes = -(-k * bits // 8)
    return np.ascontiguousarray(packed[:nbytes].T)


def unpack_rows_bytes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack_rows_bytes: (R, ceil(count*bits/8)) uint8 -> (R, count) uint8 codes."""
    packed = np.asarray(packed)
    if packed.ndim != 2 or packed.dtype != np.uint8:
        raise ValueError(f"packed codes must be a 2-D uint8 array, got {packed.dtype} {packed.shape}")
    r, nbytes = packed.shape
    if nbytes != -(-count * bits // 8):
        raise ValueError(f"{count} codes of {bits} bits take {-(-count * bits // 8)} bytes per row, got {nbytes}")
    per = values_per_unit(bits, 8)
    unit_bytes = per * bits // 8
    full = -(-nbytes // unit_bytes) * unit_bytes
    padded = np.zeros((full, r), dtype=np.uint8)
    padded[:nbytes] = packed.T
    return np.ascontiguousarray(unpack_axis0(padded, bits, count, word_bits=8).T)
