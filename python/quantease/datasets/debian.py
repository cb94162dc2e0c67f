"""Files inside Debian packages: the .deb fetched with ``apt-get download`` into the cache, one member read out
of its data archive (an ``ar`` archive holding ``data.tar.*``)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .cache import FetchError

__all__ = ["download_deb", "read_deb_member"]


def read_deb_member(deb: Path, member: str) -> bytes:
    """One file of a Debian package's data archive (an ``ar`` archive holding ``data.tar.*``)."""
    raw = deb.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise FetchError(f"{deb} is not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
        if not name.startswith("data.tar"):
            continue
        try:
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for info in tar:
                    if info.name.lstrip("./") == member:
                        extracted = tar.extractfile(info)
                        if extracted is not None:
                            return extracted.read()
        except tarfile.ReadError:
            # Compression tarfile cannot read (e.g. zstd): let dpkg-deb do it.
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True, capture_output=True)
                return (Path(tmp) / member).read_bytes()
        raise FetchError(f"{deb.name} has no {member}")
    raise FetchError(f"{deb.name} has no data archive")


def download_deb(package: str, root: Path) -> Path:
    """The newest ``<package>_*.deb`` under ``<cache>/downloads``, fetched with ``apt-get download`` when absent."""
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    found = sorted(downloads.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    by_hand = f"cd {downloads} && apt-get download {package}"
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".apt-") as tmp:
        try:
            proc = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
            ok = proc.returncode == 0
            detail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])
        except OSError as err:
            ok, detail = False, str(err)
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not ok or not debs:
            raise FetchError(
                f"could not download the Debian package {package} ({detail}). "
                f"Fetch it by hand with:\n    {by_hand}\n(needs apt and Debian's package "
                f"lists: apt-get update), or copy its .deb into {downloads}."
            )
        dest = downloads / debs[-1].name
        os.replace(debs[-1], dest)
    return dest
