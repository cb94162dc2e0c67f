"""Damaged and foreign files give a ValueError that names the file or layer -- never a crash, an IndexError
from deep inside, or a silently different model.

Our safetensors files (GPTQ and quantease format) carry the sha256 of their metadata and tensors, so any
edit is caught; a foreign GPTQ checkpoint (no digest) is checked for what its structure implies: tensor
kinds and shapes, bits against its quantize_config, g_idx within the groups, finite scales.
"""

from __future__ import annotations

import json
import os
import re
import struct

import numpy as np
import pytest

import problems
import quantease
from quantease import gguf as qg

pytest.importorskip("safetensors")
from quantease import export  # noqa: E402

P = problems.llm_like(32, 128, seed=3)


@pytest.fixture(scope="module")
def results():
    g = quantease.gptq(P.W, P.H, bits=4, group_size=32, act_order=True, fp16_scales=True)
    lq = quantease.leanquant(P.W, P.H, bits=3, group_size=64)
    qe = quantease.quantease(P.W, P.H, bits=3, iters=3, outliers=0.01)
    return {"gptq": g, "leanquant": lq, "quantease": qe}


@pytest.fixture
def gptq_dir(tmp_path, results):
    export.save_gptq(tmp_path, {"layer": results["gptq"]})
    return tmp_path


@pytest.fixture
def quantease_file(tmp_path, results):
    path = tmp_path / "q.safetensors"
    export.save_quantease(path, {"a": results["leanquant"], "b": results["quantease"]})
    return path


def _header(path) -> tuple:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return raw, n, json.loads(raw[8 : 8 + n])


def _rewrite(path, header: dict, data: bytes) -> None:
    """A safetensors file with this header (padded to a multiple of 8 bytes, as the format wants) and data."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_files_as_written_load(gptq_dir, quantease_file, results):
    np.testing.assert_array_equal(export.load_gptq(gptq_dir)["layer"], results["gptq"].weight)
    loaded = export.load_quantease(quantease_file)
    np.testing.assert_array_equal(loaded["a"], results["leanquant"].weight)
    np.testing.assert_array_equal(loaded["b"], results["quantease"].weight)


# --- truncated -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 5, 8, 40, "header", "half", "all_but_one"])
def test_truncated_files(gptq_dir, quantease_file, keep):
    for path, load in (
        (gptq_dir / "model.safetensors", lambda: export.load_gptq(gptq_dir)),
        (quantease_file, lambda: export.load_quantease(quantease_file)),
    ):
        raw, n, _ = _header(path)
        cut = {"header": 8 + n, "half": (8 + n + len(raw)) // 2, "all_but_one": len(raw) - 1}.get(keep, keep)
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=re.escape(str(path)) + " is not a readable safetensors file"):
            load()


# --- edited ----------------------------------------------------------------------------------------------------


def _flip_a_data_byte(path, tensor: str) -> None:
    raw, n, header = _header(path)
    start = 8 + n + header[tensor]["data_offsets"][0]
    edited = bytearray(raw)
    edited[start] ^= 0x10
    path.write_bytes(bytes(edited))


@pytest.mark.parametrize("tensor", ["layer.qweight", "layer.scales", "layer.g_idx", "layer.qzeros"])
def test_an_edited_byte_of_a_gptq_checkpoint(gptq_dir, tensor):
    _flip_a_data_byte(gptq_dir / "model.safetensors", tensor)
    with pytest.raises(ValueError, match="do not match the sha256 written with them"):
        export.load_gptq(gptq_dir)


@pytest.mark.parametrize("tensor", ["a.codes", "a.codebook", "b.scales", "b.outliers.values", "b.outliers.indices"])
def test_an_edited_byte_of_a_quantease_file(quantease_file, tensor):
    _flip_a_data_byte(quantease_file, tensor)
    with pytest.raises(ValueError, match="do not match the sha256 written with them"):
        export.load_quantease(quantease_file)


def test_edited_metadata_of_a_quantease_file(quantease_file):
    raw, n, header = _header(quantease_file)
    layers = json.loads(header["__metadata__"]["quantease_layers"])
    layers["a"]["bits"] = 4  # the codes would be read as 4-bit ones
    header["__metadata__"]["quantease_layers"] = json.dumps(layers)
    _rewrite(quantease_file, header, raw[8 + n :])
    with pytest.raises(ValueError, match="do not match the sha256"):
        export.load_quantease(quantease_file)


def test_an_edited_header_shape(gptq_dir):
    path = gptq_dir / "model.safetensors"
    raw, n, header = _header(path)
    rows, cols = header["layer.qweight"]["shape"]
    header["layer.qweight"]["shape"] = [rows // 2, cols * 2]  # same bytes, another layout
    _rewrite(path, header, raw[8 + n :])
    with pytest.raises(ValueError, match="do not match the sha256"):
        export.load_gptq(gptq_dir)


def test_a_header_pointing_past_the_data(gptq_dir):
    path = gptq_dir / "model.safetensors"
    raw, n, header = _header(path)
    header["layer.scales"]["data_offsets"][1] += 4096
    _rewrite(path, header, raw[8 + n :])
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        export.load_gptq(gptq_dir)


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"GGUF" + bytes(200))
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        export.load_gptq(tmp_path)
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        export.load_quantease(path)


# --- foreign GPTQ checkpoints (no digest): structure checks -------------------------------------------------------


def _foreign(tmp_path, tensors: dict, config: dict):
    """A GPTQ checkpoint as another tool writes it: no quantease digest."""
    from safetensors.numpy import save_file

    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        str(tmp_path / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (tmp_path / "quantize_config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.fixture
def gptq_parts(results):
    tensors = export.gptq_tensors(results["gptq"], "layer", checkpoint_format="gptq_v2")
    config = {"bits": 4, "group_size": 32, "sym": False, "desc_act": True, "checkpoint_format": "gptq_v2"}
    return {k: np.asarray(v) for k, v in tensors.items()}, config


def test_a_foreign_checkpoint_loads(tmp_path, gptq_parts, results):
    tensors, config = gptq_parts
    np.testing.assert_array_equal(
        export.load_gptq(_foreign(tmp_path, tensors, config))["layer"], results["gptq"].weight
    )


def test_a_config_with_the_wrong_bits(tmp_path, gptq_parts):
    tensors, config = gptq_parts
    with pytest.raises(
        ValueError,
        match=re.escape(
            "the quantization config says bits=3, but qweight (16, 32) with g_idx of 128 columns holds 4-bit codes"
        ),
    ):
        export.load_gptq(_foreign(tmp_path, tensors, {**config, "bits": 3}))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.update({"layer.qweight": t["layer.qweight"][:-1]}), "does not match g_idx of 128 columns"),
        (lambda t: t.update({"layer.qzeros": t["layer.qzeros"][:, :-1]}), "do not match 4 groups x 32 outputs"),
        (lambda t: t.update({"layer.scales": t["layer.scales"][:-1]}), "do not match 3 groups x 32 outputs"),
        (lambda t: t.update({"layer.g_idx": t["layer.g_idx"] + 2}), "g_idx must lie in [0, 3] for 4 groups"),
        (lambda t: t.update({"layer.qweight": t["layer.qweight"].view(np.float32)}), "qweight must be a 2-D integer"),
        (lambda t: t.update({"layer.scales": np.full_like(t["layer.scales"], np.inf)}), "scales contain NaN or Inf"),
        (lambda t: t.pop("layer.qzeros"), "missing tensor 'layer.qzeros'"),
    ],
    ids=["qweight_rows", "qzeros_cols", "scales_rows", "g_idx_range", "qweight_float", "scales_inf", "no_qzeros"],
)
def test_foreign_checkpoints_with_a_wrong_tensor(tmp_path, gptq_parts, edit, message):
    tensors, config = gptq_parts
    tensors = dict(tensors)
    edit(tensors)
    with pytest.raises(ValueError, match=re.escape(message)):
        export.load_gptq(_foreign(tmp_path, tensors, config))


# --- GGUF tensors -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def q4_k():
    W = problems.llm_like(8, 256, seed=4).W
    return qg.pack(quantease.rtn(W, gguf="Q4_K")), W.shape


@pytest.mark.parametrize("name", ["Q7_K", "F16", "", 12, None])
def test_gguf_of_an_unknown_type(q4_k, name):
    raw, shape = q4_k
    with pytest.raises(
        ValueError, match=re.escape(f"type must be one of {', '.join(qg.TYPES)} (any case), got {name!r}")
    ):
        qg.unpack(raw, name, shape)


def test_gguf_bytes_of_another_size_or_type(q4_k):
    raw, shape = q4_k
    with pytest.raises(
        ValueError,
        match=re.escape("raw must be uint8 with 1152 bytes for a Q4_K tensor of shape (8, 256), got uint8 with 1151"),
    ):
        qg.unpack(raw.reshape(-1)[:-1], "Q4_K", shape)
    with pytest.raises(ValueError, match="raw must be uint8"):
        qg.unpack(raw, "Q6_K", shape)
    with pytest.raises(ValueError, match=re.escape("type='Q4_K' needs W's rows to be a whole number of 256-weight")):
        qg.unpack(raw, "Q4_K", (16, 128))


# --- pipeline checkpoints -------------------------------------------------------------------------------------


def test_a_damaged_pipeline_checkpoint_is_named(tmp_path):
    torch = pytest.importorskip("torch")
    from quantease.pipeline import _Checkpoint

    ckpt = _Checkpoint(str(tmp_path), {"method": "gptq"})
    ckpt.save(0, "blocks.0", {"blocks.0.fc": torch.ones(2, 2)}, [], None)
    assert ckpt.load(0, "blocks.0")["block_name"] == "blocks.0"
    raw = open(ckpt.path(0), "rb").read()
    open(ckpt.path(0), "wb").write(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{ckpt.path(0)} is not a readable checkpoint")):
        ckpt.load(0, "blocks.0")
    torch.save([1, 2], ckpt.path(1))
    with pytest.raises(ValueError, match="checkpoint format 'list', expected 1"):
        ckpt.load(1, "blocks.1")
    assert os.path.exists(ckpt.path(1))
