"""Independent unpackers for the export formats, written as plain Python loops straight from the spec.

They share no code with quantease.packing: GPTQ 2/4/8-bit words are read value by value with
``(word >> (b*k)) & mask``, GPTQ 3-bit follows the spec's word-by-word table literally, and the quantease
byte format is read one bit at a time. Slow by design; use small arrays.
"""

from __future__ import annotations

import numpy as np


def _u32(x) -> int:
    return int(x) & 0xFFFFFFFF


def gptq_unpack_columns(packed: np.ndarray, bits: int) -> np.ndarray:
    """int32 [R, C] words packed along axis 0 -> codes [R*32/bits, C] (int64)."""
    rows, cols = packed.shape
    words = [[_u32(x) for x in row] for row in packed.tolist()]
    count = rows * 32 // bits
    out = np.zeros((count, cols), dtype=np.int64)
    if bits in (2, 4, 8):
        per_word = 32 // bits
        mask = (1 << bits) - 1
        for r in range(rows):
            for c in range(cols):
                for k in range(per_word):
                    out[r * per_word + k, c] = (words[r][c] >> (bits * k)) & mask
        return out
    if bits != 3:
        raise ValueError(f"GPTQ has no {bits}-bit layout")
    for blk in range(rows // 3):
        base = 32 * blk
        for c in range(cols):
            w0, w1, w2 = words[3 * blk][c], words[3 * blk + 1][c], words[3 * blk + 2][c]
            # word0: v0..v9 at bits 3k, the low 2 bits of v10 at bits 30-31
            for t in range(10):
                out[base + t, c] = (w0 >> (3 * t)) & 7
            v10 = (w0 >> 30) & 3
            # word1: bit 2 of v10 at bit 0, v11..v20 at 3k+1, bit 0 of v21 at bit 31
            v10 |= (w1 & 1) << 2
            out[base + 10, c] = v10
            for t in range(10):
                out[base + 11 + t, c] = (w1 >> (3 * t + 1)) & 7
            v21 = (w1 >> 31) & 1
            # word2: bits 1-2 of v21 at bits 0-1, v22..v31 at 3k+2
            v21 |= (w2 & 3) << 1
            out[base + 21, c] = v21
            for t in range(10):
                out[base + 22 + t, c] = (w2 >> (3 * t + 2)) & 7
    return out


def gptq_qweight_codes(qweight: np.ndarray, bits: int) -> np.ndarray:
    """qweight int32 [K*b/32, N] -> codes [N, K] (QuantResult orientation)."""
    return gptq_unpack_columns(qweight, bits).T


def gptq_qzeros_values(qzeros: np.ndarray, bits: int) -> np.ndarray:
    """qzeros int32 [G, N*b/32] -> stored zero values [N, G] (v1: z - 1, v2: z)."""
    return gptq_unpack_columns(np.ascontiguousarray(qzeros.T), bits)


def bytes_unpack_rows(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """quantease format: uint8 [R, ceil(count*bits/8)] -> codes [R, count], reading one bit at a time."""
    rows = packed.shape[0]
    out = np.zeros((rows, count), dtype=np.int64)
    data = packed.tolist()
    for r in range(rows):
        row = data[r]
        for j in range(count):
            value = 0
            for t in range(bits):
                bit = j * bits + t
                value |= ((row[bit // 8] >> (bit % 8)) & 1) << t
            out[r, j] = value
    return out
