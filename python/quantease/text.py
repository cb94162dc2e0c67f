"""Real English text shipped inside packages, and the token batches cut from it for calibration and evaluation.

No data-set hub is reached: each corpus is a file inside a package from PyPI or Debian, fetched once into
the cache directory (see :func:`quantease.models.resolve_cache_dir`) and checked.

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

import bz2
import functools
import hashlib
import html
import io
import os
import re
import struct
import subprocess
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any, Iterable, List, Sequence

import numpy as np

from .models import FetchError, PackageFile, PyPIPackage, _unpacked_ok, fetch_pypi, resolve_cache_dir

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
# Wikipedia markup -> plain text
# ---------------------------------------------------------------------------------------------------------

# Sections made of citations and link lists, not prose.
_DROP_SECTIONS = {
    "references",
    "external links",
    "see also",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "footnotes",
    "citations",
    "notes and references",
    "works cited",
}
_LINK_DROP_PREFIXES = (
    "file:",
    "image:",
    "category:",
    "media:",
    "wikipedia:",
    "wp:",
    "template:",
    "help:",
    "portal:",
    "special:",
    "user:",
    "talk:",
)
_INNER_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_INNER_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_INNER_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_INTERWIKI = re.compile(r"^:?[a-z]{2,3}(?:-[a-z]+)?:")


def _strip_nested(pattern: re.Pattern[str], text: str, repl: Any = "") -> str:
    # Innermost first, until nothing matches: handles nesting without a parser.
    while True:
        new = pattern.sub(repl, text)
        if new == text:
            return text
        text = new


def _link_text(match: re.Match[str]) -> str:
    target, _, label = match.group(1).partition("|")
    low = target.strip().lower()
    if low.startswith(_LINK_DROP_PREFIXES) or _INTERWIKI.match(low):
        return ""
    if label:
        # [[File:..|thumb|caption]] was dropped above; for ordinary links the label is the last field.
        return label.rsplit("|", 1)[-1]
    return target.lstrip(":").split("#")[0] or target


def clean_wikitext(markup: str) -> str:
    """Plain prose from MediaWiki markup: paragraphs and headings, no templates, tables, refs or links.

    A small, deterministic cleaner (not a MediaWiki parser): templates ``{{..}}``, tables ``{|..|}``,
    ``<ref>`` notes, comments, files/categories/interwiki links and the reference sections are dropped;
    ``[[target|label]]`` becomes ``label``, ``[url label]`` becomes ``label``; bold/italic quotes and HTML
    tags go; list markers are removed. Paragraphs are separated by one blank line.
    """
    text = re.sub(r"<!--.*?-->", "", markup, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    text = re.sub(
        r"<(math|gallery|timeline|score|syntaxhighlight|source|imagemap)[^>]*>.*?</\1>", "", text, flags=re.S | re.I
    )
    text = _strip_nested(_INNER_TEMPLATE, text)
    text = _strip_nested(_INNER_TABLE, text)
    text = _strip_nested(_INNER_LINK, text, _link_text)
    text = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]+\s+([^\]]*)\]", r"\1", text)
    text = re.sub(r"\[(?:https?:|ftp:)?//[^\]]*\]", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = re.sub(r"</?[a-zA-Z][^>]*>", "", text)
    text = re.sub(r"__[A-Z]+__", "", text)
    text = html.unescape(text)

    paragraphs: list[str] = []
    dropping = False
    for raw in text.split("\n"):
        line = raw.strip()
        heading = re.fullmatch(r"(=+)\s*(.*?)\s*\1", line)
        if heading:
            title = heading.group(2).strip()
            dropping = title.lower() in _DROP_SECTIONS
            if not dropping and title:
                paragraphs.append(title)
            continue
        if dropping:
            continue
        line = re.sub(r"^[*#:;]+\s*", "", line)
        line = re.sub(r"\s+", " ", line).strip()
        # Leftovers of broken markup (unbalanced braces, table rows) carry no prose.
        if not line or line.startswith(("{{", "}}", "{|", "|", "!")) or not re.search(r"[A-Za-z]", line):
            continue
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)
        line = re.sub(r" ([,.;:])", r"\1", line)
        paragraphs.append(line)
    return "\n\n".join(paragraphs)


def _wiki_articles(path: Path) -> list[tuple[str, str]]:
    """(title, plain text) of each main-namespace, non-redirect article of a MediaWiki XML dump."""
    articles = []
    with bz2.open(path, "rb") as f:
        for _, elem in ET.iterparse(f, events=("end",)):
            if not elem.tag.endswith("}page"):
                continue
            ns = "{" + elem.tag[1:].split("}")[0] + "}"
            title = elem.findtext(f"{ns}title") or ""
            namespace = elem.findtext(f"{ns}ns") or "0"
            body = elem.findtext(f"{ns}revision/{ns}text") or ""
            elem.clear()
            if namespace != "0" or body.lstrip().upper().startswith("#REDIRECT"):
                continue
            cleaned = clean_wikitext(body)
            if cleaned:
                articles.append((title, cleaned))
    return articles


# ---------------------------------------------------------------------------------------------------------
# R data (Jane Austen) -> strings
# ---------------------------------------------------------------------------------------------------------


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


def _read_deb_member(deb: Path, member: str) -> bytes:
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


def _austen_deb(root: Path) -> Path:
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    found = sorted(downloads.glob(f"{_AUSTEN_DEB}_*.deb"))
    if found:
        return found[-1]
    by_hand = f"cd {downloads} && apt-get download {_AUSTEN_DEB}"
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".apt-") as tmp:
        try:
            proc = subprocess.run(["apt-get", "download", _AUSTEN_DEB], cwd=tmp, capture_output=True, text=True)
            ok = proc.returncode == 0
            detail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-4:])
        except OSError as err:
            ok, detail = False, str(err)
        debs = sorted(Path(tmp).glob(f"{_AUSTEN_DEB}_*.deb"))
        if not ok or not debs:
            raise FetchError(
                f"could not download the Debian package {_AUSTEN_DEB} ({detail}). "
                f"Fetch it by hand with:\n    {by_hand}\n(needs apt and Debian's package "
                f"lists: apt-get update), or copy its .deb into {downloads}."
            )
        dest = downloads / debs[-1].name
        os.replace(debs[-1], dest)
    return dest


def _austen_novels(root: Path) -> dict[str, list[str]]:
    vectors = read_rdata_strings(_read_deb_member(_austen_deb(root), _AUSTEN_RDB))
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
        articles = _wiki_articles(path)
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
    return _unpacked_ok(GENSIM_PACKAGE, root)


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


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


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

    n_samples = _check_positive("n_samples", n_samples)
    seq_len = _check_positive("seq_len", seq_len)
    batch_size = _check_positive("batch_size", batch_size)
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

    seq_len = _check_positive("seq_len", seq_len)
    ids = _token_ids(tokenizer_or_ids, text)
    n = ids.size // seq_len
    if max_windows is not None:
        n = min(n, _check_positive("max_windows", max_windows))
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
    batch_size = _check_positive("batch_size", batch_size)
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
