"""quantease.torch: Hessians from forward hooks and the sequential quantize_model pipeline.

Tiny randomly initialised HF models built from configs (no download): GPT-2 (Conv1D layers), OPT, Llama
(rotary position_embeddings passed to every block; tests/tiny_llama.py builds it), BERT (encoder) -- 2 blocks
each, hidden size 64.
The solvers are the compiled quantease.rtn / quantease.gptq.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import quantease  # noqa: E402
import tiny_llama  # noqa: E402
from quantease.blocks import capture_block_inputs, find_blocks, linear_layers, resolve_blocks  # noqa: E402
from quantease.torch import HessianCollector, quantize_model, trace_input_groups  # noqa: E402

VOCAB, HIDDEN, SEQ = 128, 64, 16
KINDS = ("gpt2", "opt", "llama", "bert")


# ----------------------------------------------------------------------------------------------- fixtures


def make_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    t = transformers
    if kind == "gpt2":
        cfg = t.GPT2Config(
            n_layer=2, n_embd=HIDDEN, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0
        )
        model = t.GPT2LMHeadModel(cfg)
    elif kind == "opt":
        cfg = t.OPTConfig(
            num_hidden_layers=2,
            hidden_size=HIDDEN,
            num_attention_heads=4,
            ffn_dim=128,
            vocab_size=VOCAB,
            max_position_embeddings=64,
            word_embed_proj_dim=HIDDEN,
        )
        model = t.OPTForCausalLM(cfg)
    elif kind == "llama":
        model = tiny_llama.model(seed, layers=2, hidden=HIDDEN, mlp=128, vocab=VOCAB)
    elif kind == "bert":
        cfg = t.BertConfig(
            num_hidden_layers=2,
            hidden_size=HIDDEN,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=VOCAB,
            max_position_embeddings=64,
        )
        model = t.BertModel(cfg, add_pooling_layer=False)
    else:
        raise ValueError(kind)
    return model.eval()


def batches(n: int = 4, seed: int = 1, padded: bool = False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (2, SEQ), generator=g)
        if padded:  # dict inputs with a right-padded second row: masks reach every block as kwargs
            mask = torch.ones_like(ids)
            mask[1, SEQ - 5 :] = 0
            out.append({"input_ids": ids, "attention_mask": mask})
        else:
            out.append(ids)
    return out


def output(model, data):
    with torch.no_grad():
        outs = []
        for b in data:
            o = model(**b) if isinstance(b, dict) else model(b)
            outs.append(o.logits if hasattr(o, "logits") else o.last_hidden_state)
        return torch.cat(outs).double()


def rel_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def quantized(kind, method, data, **kw):
    model = make_model(kind)
    kw.setdefault("bits", 4)
    kw.setdefault("group_size", 32)
    kw.setdefault("progress", False)
    report = quantize_model(model, data, method=method, **kw)
    return model, report


def on_grid(weight: np.ndarray, bits: int, group_size: int) -> bool:
    """Every row has at most 2^bits distinct values in each group of columns."""
    cols = weight.shape[1]
    gs = cols if group_size == -1 else group_size
    for c in range(0, cols, gs):
        block = weight[:, c : c + gs]
        if max(len(np.unique(row)) for row in block) > 2**bits:
            return False
    return True


def direct_hessians(model, layers, data):
    """H = (2/n) Σ x xᵀ in float64 from the inputs captured by plain hooks on a full-model forward."""
    xs = {n: [] for n in layers}
    hooks = [
        m.register_forward_hook(lambda mod, a, o, n=n: xs[n].append(a[0].detach().reshape(-1, a[0].shape[-1])))
        for n, m in layers.items()
    ]
    try:
        output(model, data)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, lst in xs.items():
        X = torch.cat(lst).double().numpy()
        out[n] = 2.0 / X.shape[0] * X.T @ X
    return out


# -------------------------------------------------------------------------------------- blocks and hooks

EXPECTED_GROUPS = {
    "gpt2": ("transformer.h", [["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]]),
    "opt": (
        "model.decoder.layers",
        [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.out_proj"], ["fc1"], ["fc2"]],
    ),
    "llama": (
        "model.layers",
        [
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            ["self_attn.o_proj"],
            ["mlp.gate_proj", "mlp.up_proj"],
            ["mlp.down_proj"],
        ],
    ),
    "bert": (
        "encoder.layer",
        [
            ["attention.self.query", "attention.self.key", "attention.self.value"],
            ["attention.output.dense"],
            ["intermediate.dense"],
            ["output.dense"],
        ],
    ),
}


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_found_and_layers_grouped_in_run_order(kind):
    model = make_model(kind)
    path, expected = EXPECTED_GROUPS[kind]
    found, lst = find_blocks(model)
    assert found == path and len(lst) == 2
    (name, block), _ = resolve_blocks(model)
    inputs, _ = capture_block_inputs(model, block, batches(2, padded=kind == "llama"))
    layers = linear_layers(block, prefix=name)
    trace = trace_input_groups(layers, lambda: inputs.run(block, 0))
    assert trace.never_called == [] and set(trace.calls.values()) == {1}
    assert trace.groups == [[f"{path}.0.{n}" for n in g] for g in expected]


def test_blocks_named_explicitly():
    model = make_model("llama")
    by_path = resolve_blocks(model, "model.layers")
    by_list = resolve_blocks(model, list(model.model.layers))
    assert [n for n, _ in by_path] == [n for n, _ in by_list] == ["model.layers.0", "model.layers.1"]
    with pytest.raises(ValueError, match="names no submodule"):
        resolve_blocks(model, "model.nope")
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_blocks(model, [torch.nn.Linear(2, 2)])


@pytest.mark.parametrize("kind", KINDS)
def test_hessians_equal_direct_computation(kind):
    model = make_model(kind)
    data = batches(3, padded=kind == "llama")
    layers = linear_layers(model)  # every linear layer, lm_head included, Conv1D for GPT-2
    with HessianCollector(layers) as collector:
        output(model, data)
    expected = direct_hessians(model, layers, data)
    for name, H in expected.items():
        got = collector.hessian(name)
        assert got.dtype == np.float64 and got.shape == H.shape
        # float32 activations: each batch's product at float32 precision, summed in float64
        np.testing.assert_allclose(got, H, rtol=1e-5, atol=1e-6 * np.abs(H).max(), err_msg=name)
        assert collector.n_samples(name) == 3 * 2 * SEQ


def test_hessian_float32_accumulator_and_shared_groups():
    model = make_model("llama")
    data = batches(2)
    block = model.model.layers[0]
    layers = linear_layers(block, prefix="b")
    qkv = ["b.self_attn.q_proj", "b.self_attn.k_proj", "b.self_attn.v_proj"]
    with HessianCollector(layers, dtype="float32", shared=[qkv]) as c32, HessianCollector(layers) as c64:
        output(model, data)
    for name in layers:
        assert c32.hessian(name).dtype == np.float32
        np.testing.assert_allclose(
            c32.hessian(name), c64.hessian(name), rtol=1e-4, atol=1e-5 * np.abs(c64.hessian(name)).max()
        )
    assert c32.n_samples(qkv[2]) == c64.n_samples(qkv[2]) == 2 * 2 * SEQ
    # the hooks are gone after the with-block
    before = c64.n_samples(qkv[0])
    output(model, data)
    assert c64.n_samples(qkv[0]) == before


# -------------------------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("kind", KINDS)
def test_quantize_model_rtn_and_gptq(kind):
    calib, held_out = batches(4, seed=1), batches(2, seed=2)
    reference_out = output(make_model(kind), held_out)
    errors = {}
    for method in ("rtn", "gptq"):
        model, report = quantized(kind, method, calib, bits=3, group_size=32)
        names = [r.name for r in report]
        assert len(names) == len(set(names)) == len(linear_layers(model)) - (kind != "bert")  # all but lm_head
        for name, module in linear_layers(model).items():
            if name in names:
                W = module.weight.detach().numpy()
                assert on_grid(W.T if kind == "gpt2" else W, 3, 32), name
        for r in report:
            assert r.method == method and r.bits == 3 and r.group_size == 32
            if method == "rtn":  # no Hessian: no calibration pass, no layer loss
                assert r.loss is None and r.relative_loss is None and r.n_samples == 0
            else:
                assert r.loss > 0 and 0 < r.relative_loss < 0.5 and r.n_samples == 4 * 2 * SEQ
        errors[method] = rel_error(output(model, held_out), reference_out)
        assert errors[method] < 0.5, (method, errors)
    assert errors["gptq"] < errors["rtn"], errors


@pytest.mark.parametrize("kind", KINDS)
def test_true_sequential_hessians_come_from_the_quantized_model(kind):
    """Each layer's Hessian was collected with every layer that runs before it already quantized: so the
    pipeline's Hessians equal those of a plain forward through the final, fully quantized model."""
    data = batches(3, padded=kind == "llama")
    seen = {}
    model, report = quantized(kind, "gptq", data, on_layer=lambda rec, res, H: seen.__setitem__(rec.name, H))
    expected = direct_hessians(model, {n: m for n, m in linear_layers(model).items() if n in seen}, data)
    for name, H in expected.items():
        np.testing.assert_allclose(seen[name], H, rtol=1e-6, atol=1e-7 * np.abs(H).max(), err_msg=name)
    # ... and differ from the unquantized model's (else the check above would prove nothing)
    unquantized = make_model(kind)
    original = direct_hessians(unquantized, linear_layers(unquantized), data)
    last = report[-1].name
    assert not np.allclose(seen[last], original[last], rtol=1e-3)


def test_passes_per_block_and_early_stop():
    """Per block: one traced batch, one pass per group that ends after the group's last layer, and one pass
    of the quantized block to make the next block's inputs (not after the last block). The attention, whose
    layers are all quantized before the MLP's passes, runs in none of the passes after the one that recorded
    its output (quantease.reuse)."""
    n = 3
    model = make_model("llama")
    calls = {}
    for name, m in linear_layers(model).items():
        m.register_forward_hook(lambda mod, a, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    quantize_model(model, batches(n), method="gptq", bits=4, group_size=32, progress=False)
    for b, advance in ((0, n), (1, 0)):
        p = f"model.layers.{b}."
        assert calls[p + "self_attn.q_proj"] == 1 + 3 * n  # groups 0-2's passes; replayed in down's and advance
        assert calls[p + "self_attn.o_proj"] == 1 + 2 * n  # stopped before it in group 0's pass
        assert calls[p + "mlp.up_proj"] == 1 + 2 * n + advance
        assert calls[p + "mlp.down_proj"] == 1 + 1 * n + advance
    assert "lm_head" not in calls


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt", "bert"])
def test_reused_outputs_give_the_same_bits(kind, monkeypatch):
    """Replaying the kept outputs of unchanged children gives bit for bit the weights (and the next blocks'
    inputs) of recomputing them; a child whose output is changed in place is computed again."""
    import quantease.pipeline as pipeline

    data = batches(3, padded=kind == "bert")
    model_reused, _ = quantized(kind, "gptq", data)

    class Recompute(pipeline.ReusedOutputs):
        def pass_(self, first_group, last=False):  # neither records nor replays: every child computed
            self._unhook()

    monkeypatch.setattr(pipeline, "ReusedOutputs", Recompute)
    model_plain, _ = quantized(kind, "gptq", data)
    for (name, a), (_, b) in zip(model_reused.state_dict().items(), model_plain.state_dict().items()):
        assert torch.equal(a, b), name


def test_reused_output_changed_in_place_is_computed_again():
    from quantease.reuse import ReusedOutputs

    lin = torch.nn.Linear(4, 4)
    block = torch.nn.Sequential(torch.nn.Sequential(lin), torch.nn.Linear(4, 4))
    reused = ReusedOutputs(block, {"0.0": lin, "1": block[1]}, {"0.0": 0, "1": 1})
    x = torch.randn(2, 4)
    runs = []
    lin.register_forward_hook(lambda *a: runs.append(1))
    reused.pass_(1)  # records block[0]
    reused.on_batch(0)
    out = block[0](x)
    reused.pass_(2, last=True)  # replays it
    assert block[0](x) is out and len(runs) == 1
    out.mul_(2)  # a consumer changed it in place: recomputed
    again = block[0](x)
    assert len(runs) == 2 and torch.equal(again, lin(x))
    reused.close()
    assert "forward" not in block[0].__dict__


def test_not_true_sequential_uses_block_inputs_from_quantized_previous_blocks():
    data = batches(3)
    seen = {}
    model, _ = quantized(
        "llama", "gptq", data, true_sequential=False, on_layer=lambda rec, res, H: seen.__setitem__(rec.name, H)
    )
    # block 1 calibrated on quantized block 0's outputs with block 1 itself unquantized
    mixed = make_model("llama")
    mixed.model.layers[0].load_state_dict(model.model.layers[0].state_dict())
    layers1 = linear_layers(mixed.model.layers[1], prefix="model.layers.1")
    expected = direct_hessians(mixed, layers1, data)
    for name, H in expected.items():
        np.testing.assert_allclose(seen[name], H, rtol=1e-6, atol=1e-7 * np.abs(H).max(), err_msg=name)
    unquantized = make_model("llama")
    original = direct_hessians(unquantized, linear_layers(unquantized.model.layers[1], prefix="model.layers.1"), data)
    assert not np.allclose(
        seen["model.layers.1.self_attn.q_proj"], original["model.layers.1.self_attn.q_proj"], rtol=1e-3
    )


def test_lm_head_and_skipped_layers_stay_full_precision():
    data = batches(2)
    original = make_model("llama")
    model, report = quantized("llama", "rtn", data, skip=("lm_head", "mlp"))
    names = {r.name for r in report}
    assert names == {f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkvo"}
    sd, sd0 = model.state_dict(), original.state_dict()
    for key in sd:
        same = torch.equal(sd[key], sd0[key])
        assert same == (key.removesuffix(".weight") not in names), key


def test_report_table_logging_and_progress_without_tqdm(caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError: silent fallback
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with caplog.at_level(logging.INFO, logger="quantease"):
        _, report = quantized("gpt2", "gptq", batches(2), progress=True)
    table = report.to_markdown().splitlines()
    assert table[0].startswith("| block | layer | method | bits |") and len(table) == 2 + 8
    assert "transformer.h.1.mlp.c_proj" in table[-1]
    logged = [r.getMessage() for r in caplog.records if r.name == "quantease"]
    assert len(logged) == 8 and "transformer.h.0.attn.c_attn" in logged[0]
    d = report.to_dicts()[0]
    assert set(d) >= {"block", "name", "method", "bits", "group_size", "loss", "relative_loss", "seconds", "damp"}
    assert all(r.damp is not None and r.damp > 0 for r in report)  # GPTQ reports the damping it used


def test_errors_are_value_errors():
    model = make_model("gpt2")
    with pytest.raises(ValueError, match="method must be one of"):
        quantize_model(model, batches(1), method="awq")
    missing = [m for m in ("quantease", "easyquant", "leanquant") if getattr(quantease, m, None) is None]
    if missing:
        with pytest.raises(ValueError, match=f"method '{missing[0]}' is not available"):
            quantize_model(model, batches(1), method=missing[0])
    with pytest.raises(ValueError, match="bits must be"):
        quantize_model(model, batches(1), method="rtn", bits=0)
    with pytest.raises(
        ValueError, match="group_size=48 does not divide the 64 input features of layer transformer.h.0.attn.c_attn"
    ):
        quantize_model(model, batches(1), method="rtn", group_size=48)
    with pytest.raises(ValueError, match="calibration_batches is empty"):
        quantize_model(model, [], method="gptq", group_size=32)
    with pytest.raises(ValueError, match="method 'gptq' needs calibration_batches"):
        quantize_model(model, None, method="gptq", group_size=32)


@pytest.mark.parametrize("method", ["rtn", "easyquant"])
def test_solvers_without_hessian_run_no_forward_pass(method):
    """rtn and easyquant read no calibration data: not one forward of any layer, and the same weights as the
    solver called on each layer alone."""
    model, original = make_model("llama"), make_model("llama")
    calls = []
    for m in linear_layers(model).values():
        m.register_forward_hook(lambda mod, a, o: calls.append(mod))
    report = quantize_model(model, None, method=method, bits=3, group_size=32, progress=False)
    assert calls == [] and len(report) == len(linear_layers(model)) - 1
    assert report.phase_seconds["forward"] == 0 and report.phase_seconds["hessian"] == 0
    layers0 = linear_layers(original)
    for name, module in linear_layers(model, skip=("lm_head",)).items():
        expected = getattr(quantease, method)(
            layers0[name].weight.detach().numpy(), bits=3, group_size=32, sym=False
        ).weight
        np.testing.assert_array_equal(module.weight.detach().numpy(), expected, err_msg=name)


def test_phase_split_adds_up():
    _, report = quantized("llama", "gptq", batches(2))
    phases = report.phase_seconds
    assert set(phases) == {"forward", "hessian", "solve", "loss", "other"}
    assert all(v >= 0 for v in phases.values()) and phases["forward"] > 0 and phases["hessian"] > 0
    assert sum(phases.values()) == pytest.approx(report.seconds, rel=1e-9)
    assert phases["solve"] == pytest.approx(sum(r.seconds for r in report), rel=0.05)
    text = report.summary()
    worst = max(report, key=lambda r: r.relative_loss)
    assert text.startswith(f"{len(report)} layers, relative layer loss mean ") and f"({worst.name});" in text
    assert "forward " in text and "solve " in text


# ----------------------------------------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def test_resume_after_interruption_is_bit_exact(tmp_path):
    data = batches(3, padded=True)
    kw = dict(bits=3, group_size=32, keep_results=True)
    full_model, full = quantized("llama", "gptq", data, **kw)

    def interrupt_in_block_1(record, result, H):
        if record.block == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        quantized("llama", "gptq", data, checkpoint_dir=str(tmp_path), on_layer=interrupt_in_block_1, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block_00000.pt"]

    solved = []
    model, resumed = quantized(
        "llama", "gptq", data, checkpoint_dir=str(tmp_path), **kw, on_layer=lambda rec, res, H: solved.append(rec.name)
    )
    assert resumed.resumed_blocks == 1 and all(n.startswith("model.layers.1.") for n in solved)
    sd, sd_full = model.state_dict(), full_model.state_dict()
    assert all(torch.equal(sd[k], sd_full[k]) for k in sd)
    assert [(r.name, r.loss, r.relative_loss, r.damp) for r in resumed] == [
        (r.name, r.loss, r.relative_loss, r.damp) for r in full
    ]
    for name, res in full.results.items():
        np.testing.assert_array_equal(resumed.results[name].codes, res.codes)
        np.testing.assert_array_equal(resumed.results[name].weight, res.weight)

    # a finished directory solves nothing and gives the same model
    again_model, again = quantized(
        "llama",
        "gptq",
        data,
        checkpoint_dir=str(tmp_path),
        **kw,
        on_layer=lambda *a: pytest.fail("re-solved a finished block"),
    )
    assert again.resumed_blocks == 2 and len(again) == len(full)
    assert all(torch.equal(v, sd_full[k]) for k, v in again_model.state_dict().items())

    # other settings or other calibration data cannot reuse the directory
    with pytest.raises(ValueError, match="other settings.*bits"):
        quantized("llama", "gptq", data, checkpoint_dir=str(tmp_path), bits=4, group_size=32)
    with pytest.raises(ValueError, match="calibration_sha256"):
        quantized("llama", "gptq", batches(3, seed=7, padded=True), checkpoint_dir=str(tmp_path), **kw)
