"""llama.cpp's GGUF block types at the layer level: their table, and packing to / from llama.cpp's bytes.

A solver called with ``gguf="Q4_K"`` (``rtn``, ``gptq``, ``quantease``) returns a ``QuantResult`` whose
``gguf`` holds the blocks' stored parameters (``GGUFBlocks``) and whose ``codes`` are the stored codes, so
that::

    raw = quantease.gguf.pack(result)            # rows x bytes-per-row, llama.cpp's block layout
    gguf.quants.dequantize(raw, GGMLQuantizationType.Q4_K) == result.weight   # bit for bit

Blocks run along a row of W (the input dimension). Codes are stored unsigned: llama.cpp's q plus the type's
``offset`` (Q4_0: q - 8 -> code q; Q8_0: int8 q -> q + 128; Q3_K: -4..3 -> 0..7; Q6_K: -32..31 -> 0..63).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

__all__ = ["GGUFBlocks", "GGUFType", "TYPES", "dequantize", "gguf_type", "pack", "unpack", "unpack_blocks"]

QK_K = 256


@dataclass(frozen=True)
class GGUFType:
    """One llama.cpp block type.

    block_size  weights per block (a row is a whole number of blocks)
    type_size   bytes per block in the file
    sub_block   weights sharing one grid (the k-quants' sub-blocks; == block_size for the 32-blocks)
    bits        bits of a code (levels = 2^bits)
    offset      code = llama.cpp's q + offset (IQ4_NL: an index into ``IQ4_NL_LEVELS``)
    has_min     the grid has an offset: Q4_1/Q5_1's m, or the k-quants' dmin * min
    fallback    what llama.cpp's quantizer (src/llama-quant.cpp) writes a tensor as when its rows are not a
                multiple of ``block_size``
    """

    name: str
    block_size: int
    type_size: int
    sub_block: int
    bits: int
    offset: int
    has_min: bool
    fallback: str

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    @property
    def sub_blocks(self) -> int:
        return self.block_size // self.sub_block

    @property
    def k_quant(self) -> bool:
        return self.block_size == QK_K


TYPES = {
    t.name: t
    for t in (
        GGUFType("Q4_0", 32, 18, 32, 4, 8, False, "F16"),
        GGUFType("Q4_1", 32, 20, 32, 4, 0, True, "F16"),
        GGUFType("Q5_0", 32, 22, 32, 5, 16, False, "F16"),
        GGUFType("Q5_1", 32, 24, 32, 5, 0, True, "F16"),
        GGUFType("Q8_0", 32, 34, 32, 8, 128, False, "F16"),
        GGUFType("IQ4_NL", 32, 18, 32, 4, 0, False, "F16"),
        GGUFType("Q2_K", QK_K, 84, 16, 2, 0, True, "Q4_0"),
        GGUFType("Q3_K", QK_K, 110, 16, 3, 4, False, "Q4_0"),
        GGUFType("Q4_K", QK_K, 144, 32, 4, 0, True, "Q5_0"),
        GGUFType("Q5_K", QK_K, 176, 32, 5, 0, True, "Q5_1"),
        GGUFType("Q6_K", QK_K, 210, 16, 6, 32, False, "Q8_0"),
    )
}

IQ4_NL_LEVELS = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


@dataclass(frozen=True)
class GGUFBlocks:
    """The stored parameters of a GGUF tensor (rows x cols, B = cols / block_size blocks per row).

    type    the GGUFType's name
    d       float16 [rows, B]        the block scale
    dmin    float16 [rows, B] | None Q4_1/Q5_1: the block's m (added); Q2_K/Q4_K/Q5_K: the scale of the mins
    scales  int8 [rows, B, S] | None k-quants' integer sub-block scales (Q3_K: -32..31, the stored 6 bits
                                     minus 32; Q6_K: -128..127; Q2_K: 0..15; Q4_K/Q5_K: 0..63)
    mins    uint8 [rows, B, S] | None Q2_K/Q4_K/Q5_K's integer sub-block mins
    """

    type: str
    d: np.ndarray
    dmin: Optional[np.ndarray] = None
    scales: Optional[np.ndarray] = None
    mins: Optional[np.ndarray] = None

    def required(self, name: str) -> np.ndarray:
        """The field ``name`` (dmin, scales or mins), which this block type stores."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"GGUFBlocks of type {self.type} need {name}, got None")
        return value

    def grid(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Every sub-block's grid, (mul, add) float32 [rows, B, S]: value = mul * level + add (add None: 0)."""
        t = TYPES[self.type]
        d = self.d.astype(np.float32)[..., None]
        mul = d * self.required("scales").astype(np.float32) if t.k_quant else d
        add = None
        if t.has_min and t.k_quant:
            add = -(self.required("dmin").astype(np.float32)[..., None] * self.required("mins").astype(np.float32))
        elif t.has_min:
            add = self.required("dmin").astype(np.float32)[..., None]
        return mul, add

    def levels(self) -> np.ndarray:
        """Every sub-block's grid as its 2^bits values, float32 [rows, B * S, 2^bits], indexed by the code."""
        t = TYPES[self.type]
        mul, add = self.grid()
        rows = mul.shape[0]
        mul = mul.reshape(rows, -1, 1)
        values = mul * _level(t, np.arange(1 << t.bits, dtype=np.uint8))
        if add is not None:
            values = values + add.reshape(rows, -1, 1)
        return values.astype(np.float32, copy=False)


def gguf_type(name, cols: Optional[int] = None, arg: str = "gguf") -> GGUFType:
    """The GGUFType named ``name`` (any case); with ``cols``, checks that a row splits into whole blocks.
    ``arg``: the argument's name in the messages."""
    if not isinstance(name, str) or name.upper() not in TYPES:
        raise ValueError(f"{arg} must be one of {', '.join(TYPES)} (any case), got {name!r}")
    t = TYPES[name.upper()]
    if cols is not None and cols % t.block_size:
        raise ValueError(
            f"{arg}={t.name!r} needs W's rows to be a whole number of {t.block_size}-weight blocks, "
            f"got {cols} columns; llama.cpp quantizes such a tensor as {t.fallback} instead"
        )
    return t


def _level(t: GGUFType, codes: np.ndarray) -> np.ndarray:
    if t.name == "IQ4_NL":
        return IQ4_NL_LEVELS[codes]
    return codes.astype(np.float32) - np.float32(t.offset)


def dequantize(blocks: GGUFBlocks, codes: np.ndarray) -> np.ndarray:
    """The float32 weights llama.cpp dequantizes ``codes`` (rows x cols) on ``blocks`` to, bit for bit."""
    t = TYPES[blocks.type]
    rows, cols = codes.shape
    nb = cols // t.block_size
    mul, add = blocks.grid()
    level = _level(t, codes).reshape(rows, nb, t.sub_blocks, t.sub_block)
    w = mul.reshape(rows, nb, -1, 1) * level
    if add is not None:
        w = w + add.reshape(rows, nb, -1, 1)
    return w.reshape(rows, cols).astype(np.float32, copy=False)


# ---- bytes ----------------------------------------------------------------------------------------------


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype(np.float16).reshape(-1, 1)).view(np.uint8)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """32-blocks: byte j holds element j (low nibble) and j + 16 (high)."""
    return (q[:, :16] & 0x0F) | (q[:, 16:] << 4)


def _crumbs(q: np.ndarray) -> np.ndarray:
    """Q2_K/Q3_K's 2-bit planes: per 128 weights, byte l holds elements l, l+32, l+64, l+96 (bits 0,2,4,6)."""
    q = (q & 3).reshape(-1, 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(-1, 64)


def _k4_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 12 bytes of 8 six-bit scales and mins."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    lo = (sc[:, :4] & 0x3F) | ((sc[:, 4:] >> 4) << 6)
    mid = (mn[:, :4] & 0x3F) | ((mn[:, 4:] >> 4) << 6)
    hi = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return np.concatenate([lo, mid, hi], axis=1)


def _q3_scales(sc: np.ndarray) -> np.ndarray:
    """Q3_K's 12 bytes of 16 six-bit scales (stored sc + 32)."""
    s = (sc.astype(np.int16) + 32).astype(np.uint8)
    lo = (s[:, :8] & 0x0F) | ((s[:, 8:] & 0x0F) << 4)
    high = (s >> 4).reshape(-1, 4, 4)  # [n, j // 4, j % 4]
    hi = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    return np.concatenate([lo, hi], axis=1)


def _high_bits_32(q: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: bit i of the little-endian 32-bit qh is element i's fifth bit."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def pack(result) -> np.ndarray:
    """The result's tensor in llama.cpp's layout: uint8 [rows, cols / block_size * type_size].

    ``result`` comes from a solver called with ``gguf=``; ``gguf.quants.dequantize(pack(result), type)``
    equals ``result.weight`` exactly, and ``GGUFWriter.add_tensor(name, pack(result), raw_dtype=type)``
    writes it to a file.
    """
    blocks = getattr(result, "gguf", None)
    if blocks is None:
        raise ValueError("pack needs a result of a solver called with gguf=<type> (result.gguf is None)")
    t = TYPES[blocks.type]
    codes = np.asarray(result.codes, dtype=np.uint8)
    rows, cols = codes.shape
    n = rows * (cols // t.block_size)
    q = codes.reshape(n, t.block_size)
    d = _f16_bytes(blocks.d)
    if t.name in ("Q4_0", "IQ4_NL"):
        parts = [d, _nibbles(q)]
    elif t.name == "Q4_1":
        parts = [d, _f16_bytes(blocks.required("dmin")), _nibbles(q)]
    elif t.name == "Q5_0":
        parts = [d, _high_bits_32(q), _nibbles(q)]
    elif t.name == "Q5_1":
        parts = [d, _f16_bytes(blocks.required("dmin")), _high_bits_32(q), _nibbles(q)]
    elif t.name == "Q8_0":
        parts = [d, q ^ np.uint8(0x80)]  # code - 128 as int8
    else:
        sc = blocks.required("scales").reshape(n, t.sub_blocks)
        if t.name == "Q2_K":
            mn = blocks.required("mins").reshape(n, t.sub_blocks)
            parts = [(sc.astype(np.uint8) & 0x0F) | (mn << 4), _crumbs(q), d, _f16_bytes(blocks.required("dmin"))]
        elif t.name == "Q3_K":
            high = (q >> 2).reshape(n, 8, 32) & 1  # element 32 k + m: bit k of hmask[m]
            hmask = (high << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
            parts = [hmask, _crumbs(q), _q3_scales(sc), d]
        elif t.name in ("Q4_K", "Q5_K"):
            mn = blocks.required("mins").reshape(n, t.sub_blocks)
            pairs = q.reshape(n, 4, 2, 32)  # 64-weight chunks: byte l holds elements l (low) and l + 32 (high)
            qs = ((pairs[:, :, 0] & 0x0F) | ((pairs[:, :, 1] & 0x0F) << 4)).reshape(n, 128)
            parts = [d, _f16_bytes(blocks.required("dmin")), _k4_scales(sc, mn)]
            if t.name == "Q5_K":
                fifth = (pairs >> 4) & 1  # [n, chunk, half, l] -> bit 2 chunk + half of qh[l]
                shift = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
                parts.append((fifth << shift[None, :, :, None]).sum(axis=(1, 2), dtype=np.uint8))
            parts.append(qs)
        else:  # Q6_K
            halves = q.reshape(n, 2, 4, 32)  # [n, half, quarter, l]
            lo = halves & 0x0F
            ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
            hi = halves >> 4
            qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
            parts = [ql.reshape(n, 128), qh.reshape(n, 64), sc.astype(np.int8).view(np.uint8), d]
    raw = np.concatenate([np.asarray(p, dtype=np.uint8).reshape(n, -1) for p in parts], axis=1)
    assert raw.shape[1] == t.type_size
    return raw.reshape(rows, -1)


def _f16(raw: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(raw[:, at : at + 2]).view(np.float16)[:, 0]


def _unnibble(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b & 0x0F, b >> 4], axis=1)


def _uncrumb(b: np.ndarray) -> np.ndarray:
    planes = b.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
    return (planes & 3).reshape(-1, QK_K)


def unpack_blocks(raw, type, shape) -> Tuple[np.ndarray, GGUFBlocks]:
    """The stored codes (uint8 [rows, cols]) and block parameters of llama.cpp bytes (pack's inverse)."""
    t = gguf_type(type, arg="type")
    rows, cols = _check_shape(shape, t)
    raw = np.asarray(raw)
    if raw.dtype != np.uint8 or raw.size != rows * cols // t.block_size * t.type_size:
        raise ValueError(
            f"raw must be uint8 with {rows * cols // t.block_size * t.type_size} bytes for a "
            f"{t.name} tensor of shape {(rows, cols)}, got {raw.dtype} with {raw.size}"
        )
    n = rows * (cols // t.block_size)
    b = raw.reshape(n, t.type_size)
    dmin = scales = mins = None
    if t.name in ("Q4_0", "IQ4_NL"):
        d, q = _f16(b, 0), _unnibble(b[:, 2:])
    elif t.name == "Q4_1":
        d, dmin, q = _f16(b, 0), _f16(b, 2), _unnibble(b[:, 4:])
    elif t.name in ("Q5_0", "Q5_1"):
        at = 2 if t.name == "Q5_0" else 4
        d = _f16(b, 0)
        dmin = None if t.name == "Q5_0" else _f16(b, 2)
        fifth = np.unpackbits(b[:, at : at + 4], axis=1, bitorder="little")
        q = _unnibble(b[:, at + 4 :]) | (fifth << 4)
    elif t.name == "Q8_0":
        d, q = _f16(b, 0), b[:, 2:] ^ np.uint8(0x80)
    elif t.name == "Q2_K":
        sm = b[:, :16]
        scales, mins = (sm & 0x0F).astype(np.int8), sm >> 4
        q, d, dmin = _uncrumb(b[:, 16:80]), _f16(b, 80), _f16(b, 82)
    elif t.name == "Q3_K":
        hmask, s12, d = b[:, :32], b[:, 96:108], _f16(b, 108)
        high = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
        q = _uncrumb(b[:, 32:96]) | (high.reshape(n, QK_K) << 2)
        lo = np.concatenate([s12[:, :8] & 0x0F, s12[:, :8] >> 4], axis=1)
        hi = ((s12[:, 8:12][:, None, :] >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3).reshape(n, 16)
        scales = ((lo | (hi << 4)).astype(np.int16) - 32).astype(np.int8)
    elif t.name in ("Q4_K", "Q5_K"):
        d, dmin, s12 = _f16(b, 0), _f16(b, 2), b[:, 4:16]
        scales = np.concatenate([s12[:, :4] & 0x3F, (s12[:, 8:] & 0x0F) | ((s12[:, :4] >> 6) << 4)], axis=1)
        mins = np.concatenate([s12[:, 4:8] & 0x3F, (s12[:, 8:] >> 4) | ((s12[:, 4:8] >> 6) << 4)], axis=1)
        scales = scales.astype(np.int8)
        qs = b[:, -128:].reshape(n, 4, 1, 32)
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=2)  # [n, chunk, half, l]
        if t.name == "Q5_K":
            shift = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)
            q = q | (((b[:, 16:48][:, None, None, :] >> shift[None, :, :, None]) & 1) << 4)
        q = q.reshape(n, QK_K)
    else:  # Q6_K
        ql, qh = b[:, :128].reshape(n, 2, 2, 32), b[:, 128:192].reshape(n, 2, 1, 32)
        lo = np.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
        hi = (qh >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
        q = (lo | (hi << 4)).reshape(n, QK_K)
        scales = b[:, 192:208].view(np.int8)
        d = _f16(b, 208)
    nb = cols // t.block_size
    blocks = GGUFBlocks(
        t.name,
        d.reshape(rows, nb).copy(),
        None if dmin is None else dmin.reshape(rows, nb).copy(),
        None if scales is None else scales.reshape(rows, nb, t.sub_blocks).copy(),
        None if mins is None else mins.reshape(rows, nb, t.sub_blocks).astype(np.uint8),
    )
    return np.ascontiguousarray(q.reshape(rows, cols), dtype=np.uint8), blocks


def unpack(raw, type, shape) -> np.ndarray:
    """llama.cpp bytes of a ``type`` tensor of ``shape`` (rows, cols) -> its float32 weights, bit for bit
    what llama.cpp (and ``gguf.quants.dequantize``) gives."""
    codes, blocks = unpack_blocks(raw, type, shape)
    return dequantize(blocks, codes)


def _check_shape(shape, t: GGUFType) -> Tuple[int, int]:
    try:
        rows, cols = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (rows, cols), got {shape!r}") from None
    if rows < 1 or cols < 1:
        raise ValueError(f"shape must be (rows, cols) with positive sizes, got {shape!r}")
    gguf_type(t.name, cols, arg="type")
    return rows, cols


def blocks_from_core(name: str, out: dict) -> GGUFBlocks:
    """The GGUFBlocks of a core solver's output dict (d, dmin as float32 holding fp16 values)."""
    t = TYPES[name]
    return GGUFBlocks(
        name,
        out["d"].astype(np.float16),
        out["dmin"].astype(np.float16) if t.has_min else None,
        out["block_scales"] if t.k_quant else None,
        out["block_mins"] if t.has_min and t.k_quant else None,
    )
