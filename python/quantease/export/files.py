"""safetensors files: where a checkpoint path puts its tensor file, atomic writes, reading, pass-through tensors.

safetensors is imported inside the functions (extras ``quantease[export]``); torch only when the caller passes
torch tensors.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from .layers import is_torch

#: The tensor file inside a checkpoint directory.
TENSOR_FILENAME = "model.safetensors"


def tensor_file(
    path: Union[str, os.PathLike], filename: str = TENSOR_FILENAME, *, create: bool = False
) -> Tuple[str, str]:
    """(directory, tensor file) of a checkpoint path.

    A path ending in ``.safetensors`` or naming an existing file is the tensor file (its JSON configs go next
    to it); any other path is a directory holding ``filename``. ``create`` makes the directory.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors") or os.path.isfile(path):
        directory, file = os.path.dirname(path) or ".", path
    else:
        directory, file = path, os.path.join(path, filename)
    if create:
        os.makedirs(directory, exist_ok=True)
    return directory, file


def atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


# The sha256 of a file's metadata and tensors (names, dtypes, shapes, bytes), kept in its metadata: a file
# edited or damaged after it was written fails its load with a ValueError instead of loading as another model.
DIGEST_KEY = "quantease_sha256"


def tensors_digest(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in metadata.items() if k != DIGEST_KEY}, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name]
        if is_torch(t):  # bytes of any dtype, bfloat16 included
            import torch

            dtype, shape = str(t.dtype).replace("torch.", ""), tuple(t.shape)
            data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        else:
            t = np.ascontiguousarray(t)
            dtype, shape, data = t.dtype.name, t.shape, t.reshape(-1).view(np.uint8)
        h.update(f"{name}|{dtype}|{shape}|".encode())
        h.update(data)
    return h.hexdigest()


def write_safetensors(path: str, tensors: Dict[str, Any], metadata: Dict[str, str]) -> None:
    """Write NumPy (and, if any are given, torch) tensors to one file atomically (temp file + rename), with
    the digest of its metadata and tensors in the metadata."""
    if any(is_torch(t) for t in tensors.values()):
        import torch
        from safetensors.torch import save as save_torch

        payload, storages = {}, set()
        for k, t in tensors.items():
            t = t.detach().cpu().contiguous() if is_torch(t) else torch.from_numpy(np.ascontiguousarray(t))
            # safetensors refuses tensors that share memory (tied embeddings): give duplicates their own copy.
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages and t.numel():
                t = t.clone()
            storages.add(t.untyped_storage().data_ptr())
            payload[k] = t
        metadata = {**metadata, DIGEST_KEY: tensors_digest(payload, metadata)}
        data = save_torch(payload, metadata=metadata)
    else:
        from safetensors.numpy import save as save_numpy

        arrays = {k: np.ascontiguousarray(t) for k, t in tensors.items()}
        metadata = {**metadata, DIGEST_KEY: tensors_digest(arrays, metadata)}
        data = save_numpy(arrays, metadata=metadata)
    atomic_write_bytes(path, data)


def read_safetensors(path: str, framework: str = "numpy") -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Tensors and metadata of a safetensors file; ValueError naming the file when it is truncated, not
    safetensors, or (when it carries our digest) changed since it was written."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework=framework) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors' SafetensorError, or an OSError of a damaged file
        raise ValueError(f"{path} is not a readable safetensors file (truncated or damaged?): {err}") from err
    if DIGEST_KEY in meta and tensors_digest(tensors, meta) != meta[DIGEST_KEY]:
        raise ValueError(
            f"{path}: its tensors do not match the sha256 written with them, so the file was edited "
            f"or damaged after it was saved; write it again"
        )
    return tensors, meta


PASSTHROUGH_DTYPES = ("float16", "bfloat16", "float32")


def cast_float(key: str, t: Any, dtype: str) -> Any:
    """A floating tensor cast to ``dtype`` (one of PASSTHROUGH_DTYPES), other tensors as they are; a finite
    value that the cast turns into an infinity is an error rather than an inf in the file."""
    if is_torch(t):
        import torch

        if not t.is_floating_point():
            return t
        cast = t.detach().to(getattr(torch, dtype))
        overflow = bool((torch.isinf(cast) & torch.isfinite(t)).any())
    else:
        t = np.asarray(t)
        if t.dtype.kind != "f":
            return t
        if dtype == "bfloat16":  # NumPy has no bfloat16
            import torch

            return cast_float(key, torch.from_numpy(np.ascontiguousarray(t)), dtype)
        with np.errstate(over="ignore"):
            cast = t.astype(dtype)
        overflow = bool(np.any(np.isinf(cast) & np.isfinite(t)))
    if overflow:
        raise ValueError(
            f"pass-through tensor {key!r} has finite values that overflow {dtype}; use "
            f"passthrough_dtype='bfloat16' or 'float32'"
        )
    return cast


def add_passthrough(
    extra: Optional[Mapping[str, Any]], taken: Dict[str, Any], consumed: set, dtype: Optional[str]
) -> None:
    """Copy non-quantized tensors into ``taken`` (floating ones cast to ``dtype`` unless it is None); keys
    consumed by a quantized layer are dropped."""
    if dtype is not None and dtype not in PASSTHROUGH_DTYPES:
        raise ValueError(f"passthrough_dtype must be one of {PASSTHROUGH_DTYPES} or None, got {dtype!r}")
    if not extra:
        return
    for key, t in extra.items():
        if key in consumed:
            continue
        if key in taken:
            raise ValueError(f"pass-through tensor {key!r} collides with a tensor of a quantized layer")
        taken[key] = cast_float(key, t, dtype) if dtype is not None else (t if is_torch(t) else np.asarray(t))
