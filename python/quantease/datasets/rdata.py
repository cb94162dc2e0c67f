"""R's lazy-load databases (``Rdata.rdb``): the character vectors they hold, read without R."""

from __future__ import annotations

import struct
import zlib

__all__ = ["read_rdata_strings"]


def read_rdata_strings(blob: bytes) -> list[list[str]]:
    """The character vectors of an R lazy-load database (``Rdata.rdb``), in file order.

    The file is a sequence of objects, each a 4-byte big-endian length followed by a zlib stream of R's
    XDR serialization. Only what R writes for a plain character vector is read: header, STRSXP (type 16)
    with its length, then one CHARSXP (type 9) per element (length -1 = NA, read as ""). Objects of any
    other type raise ValueError.
    """
    vectors = []
    pos = 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise ValueError(f"truncated R database at byte {pos}")
        expected = struct.unpack(">I", blob[pos : pos + 4])[0]
        inflater = zlib.decompressobj()
        data = inflater.decompress(blob[pos + 4 :])
        if len(data) != expected:
            raise ValueError(f"R object at byte {pos} inflates to {len(data)} bytes, header says {expected}")
        pos = len(blob) - len(inflater.unused_data)
        if data[:2] != b"X\n":
            raise ValueError("only R's XDR (binary, big-endian) serialization is supported")
        version = struct.unpack(">i", data[2:6])[0]
        off = 14
        if version == 3:  # native encoding name follows the three version integers
            n = struct.unpack(">i", data[off : off + 4])[0]
            off += 4 + n
        flags, length = struct.unpack(">ii", data[off : off + 8])
        off += 8
        if flags & 0xFF != 16:
            raise ValueError(f"R object at byte {pos} is of type {flags & 0xFF}, not a character vector")
        strings = []
        for _ in range(length):
            cflags, clen = struct.unpack(">ii", data[off : off + 8])
            off += 8
            if cflags & 0xFF != 9:
                raise ValueError(f"character vector element of type {cflags & 0xFF}, expected 9")
            if clen < 0:
                strings.append("")
                continue
            # Latin-1 strings carry bit 2 of the levels (flags bits 12+); everything else here is UTF-8.
            encoding = "latin-1" if (cflags >> 12) & 4 else "utf-8"
            strings.append(data[off : off + clen].decode(encoding))
            off += clen
        vectors.append(strings)
    return vectors
