"""Data-parallel quantize_model (quantease.distributed): shards, owners, the canonical Hessian reduction.

The torchrun tests start 2 ranks (gloo, loopback only, one thread each) on tests/distributed_worker.py's tiny
Llama and compare their weights and codes bit for bit with one process given the same 2 Hessian shards, then
resume from the checkpoints the ranks wrote (rank 0 writes, all read), with 2 ranks and with one process. Two
more runs read the same model from safetensors on disk, one block at a time (quantease.offload), and stream it
out: as a safetensors checkpoint and as a GGUF file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import distributed_worker as worker  # noqa: E402
import quantease  # noqa: E402
from quantease.device_hessian import DeviceHessianAccumulator  # noqa: E402
from quantease.distributed import assign_owners, setup, shard_bounds  # noqa: E402
from quantease.hooks import HessianCollector  # noqa: E402
from quantease.pipeline import quantize_model  # noqa: E402
from subprocess_run import PACKAGE_DIR, TESTS_DIR  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """The ranks run one torch thread each; the single-process runs compared with them do the same."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------- pure logic


def test_shards_are_contiguous_and_cover_every_batch():
    assert shard_bounds(5, 2) == [range(0, 3), range(3, 5)]
    assert shard_bounds(4, 4) == [range(i, i + 1) for i in range(4)]
    for n, k in ((7, 3), (9, 1), (10, 4)):
        bounds = shard_bounds(n, k)
        assert [j for b in bounds for j in b] == list(range(n))
        assert max(map(len, bounds)) - min(map(len, bounds)) <= 1


def test_owners_by_solve_cost_largest_first():
    # down_proj-like layer alone on one rank, the rest balanced on the other; ties go to the lowest rank.
    assert assign_owners([1.0, 1.0, 1.0, 3.0], 2) == [1, 1, 1, 0]
    assert assign_owners([5.0, 4.0, 3.0], 1) == [0, 0, 0]
    assert assign_owners([2.0, 2.0], 4) == [0, 1]


def test_bad_options_raise_value_error():
    with pytest.raises(ValueError, match=re.escape("distributed must be True, False or None (detect torchrun), got 1")):
        setup(1, None, torch.device("cpu"))
    with pytest.raises(ValueError, match=re.escape("hessian_shards must be a positive integer or None, got 0")):
        setup(None, 0, torch.device("cpu"))
    if not torch.distributed.is_initialized():
        with pytest.raises(ValueError, match="distributed=True needs an initialised torch.distributed process group"):
            worker.run(distributed=True)
    with pytest.raises(ValueError, match=re.escape("calibration_batches has 5 batch(es), fewer than the 6 shards")):
        worker.run(hessian_shards=6)


# -------------------------------------------------------------------------- shards inside one process


def test_one_process_with_shards_folds_the_same_hessians():
    """hessian_shards=2 in one process changes only the summation order: weights equal to round-off of the
    unsharded run, and every record counts all calibration tokens."""
    plain_model, plain = worker.run()
    sharded_model, sharded = worker.run(hessian_shards=2)
    assert [r.name for r in plain] == [r.name for r in sharded]
    assert [r.n_samples for r in plain] == [r.n_samples for r in sharded]
    assert all(r.n_samples == worker.BATCHES * 2 * worker.SEQ for r in plain)
    for a, b in zip(plain, sharded):
        assert abs(a.loss - b.loss) <= 1e-4 * abs(a.loss) + 1e-9, (a.name, a.loss, b.loss)


def test_device_accumulator_on_cpu_tensors_matches_the_core():
    """The CUDA path's logic on CPU tensors: float32 GEMM per batch into a float64 running sum on the tensors'
    device, finished on the host by the C++ accumulator."""
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(2, n, 40, generator=g) for n in (5, 17, 3)]
    dev = DeviceHessianAccumulator(40)
    core = quantease.HessianAccumulator(40)
    for x in batches:
        dev.add(x)
        core.add(x.reshape(-1, 40).numpy())
    assert dev.n_samples == core.n_samples == 50
    H = dev.hessian()
    assert H.dtype == np.float64 and np.array_equal(H, H.T)
    np.testing.assert_allclose(H, core.hessian(), rtol=1e-5, atol=1e-5)
    S = dev.sum(release=True)
    assert isinstance(S, torch.Tensor) and dev.n_samples == 0
    np.testing.assert_allclose(S.numpy(), core.sum(), rtol=1e-5, atol=1e-4)


def test_pipeline_through_device_accumulators_on_cpu(monkeypatch):
    """quantize_model with the collector's device accumulators (forced on CPU tensors, as on a GPU): the same
    layers, token counts and, to round-off, the same losses as the C++ path; sharded too."""
    _, core = worker.run()
    original = HessianCollector.__init__

    def on_device(self, layers, **kw):
        original(self, layers, **{**kw, "accumulator": "device"})

    monkeypatch.setattr(HessianCollector, "__init__", on_device)
    for shards in (None, 2):
        _, dev = worker.run(hessian_shards=shards)
        assert [(r.name, r.n_samples) for r in dev] == [(r.name, r.n_samples) for r in core]
        for a, b in zip(core, dev):
            assert abs(a.loss - b.loss) <= 1e-3 * abs(a.loss) + 1e-9, (a.name, a.loss, b.loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_accumulates_on_the_device():
    _, cpu = worker.run()
    model = worker.make_model().cuda()
    batches = [{k: v.cuda() for k, v in b.items()} for b in worker.make_batches()]
    collectors = []
    original = HessianCollector.__init__

    def spy(self, *a, **kw):
        original(self, *a, **kw)
        collectors.append(self)

    HessianCollector.__init__ = spy
    try:
        report = quantize_model(model, batches, **worker.OPTIONS)
    finally:
        HessianCollector.__init__ = original
    assert all(isinstance(acc, DeviceHessianAccumulator) for c in collectors for acc in c._acc.values())
    for a, b in zip(cpu, report):
        assert a.name == b.name and a.n_samples == b.n_samples
        assert abs(a.loss - b.loss) <= 1e-2 * abs(a.loss) + 1e-9


# ------------------------------------------------------------------------------------------- torchrun


def _torchrun(out: str, checkpoint_dir: str, *options: str) -> None:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",
        PYTHONPATH=os.pathsep.join([PACKAGE_DIR, TESTS_DIR] + [p for p in [env.get("PYTHONPATH")] if p]),
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [os.path.join(TESTS_DIR, "distributed_worker.py"), out, checkpoint_dir, *options]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _load(out: str, rank: int):
    with np.load(f"{out}.rank{rank}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    with open(f"{out}.rank{rank}.json") as f:
        return arrays, json.load(f)


def _assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, different


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank run writing checkpoints: (output prefix, checkpoint dir)."""
    d = tmp_path_factory.mktemp("two_ranks")
    out, ckpt = str(d / "run"), str(d / "ckpt")
    _torchrun(out, ckpt)
    return out, ckpt


@pytest.mark.slow
def test_two_ranks_give_the_single_process_bits(two_ranks):
    out, _ = two_ranks
    rank0, meta0 = _load(out, 0)
    rank1, meta1 = _load(out, 1)
    _assert_same_arrays(rank0, rank1)  # every rank writes the same weights and gets the same report
    assert meta0 == meta1
    model, report = worker.run(hessian_shards=2)
    _assert_same_arrays(worker.arrays(model, report), rank0)
    assert [r["loss"] for r in meta0["records"]] == [r.loss for r in report]
    assert all(r["n_samples"] == worker.BATCHES * 2 * worker.SEQ for r in meta0["records"])
    # The Hessians themselves, bit for bit: each rank holds those of the layers it solved (and of the layers
    # sharing their input), the same H as the one process.
    held = [dict(np.load(f"{out}.hessians{rank}.npz")) for rank in (0, 1)]
    assert held[0] and held[1] and set(held[1]) != set(report.hessians)
    for rank in (0, 1):
        _assert_same_arrays(held[rank], {k: report.hessians[k] for k in held[rank]})
    assert set(held[0]) | set(held[1]) == set(report.hessians)
    # ... which the canonical order is needed for: where the running sum rounds, the plain one differs in the
    # last bits. (This model's few float32 batch products add up exactly in a float64 sum, in any order; a
    # float32 running sum shows the difference.)
    _, plain = worker.run(hessian_dtype="float32")
    _, folded = worker.run(hessian_dtype="float32", hessian_shards=2)
    assert any(not np.array_equal(plain.hessians[k], folded.hessians[k]) for k in plain.hessians)


@pytest.mark.slow
def test_resume_with_two_ranks_and_with_one_process(two_ranks, tmp_path):
    out, ckpt = two_ranks
    expected, _ = _load(out, 0)
    files = sorted(os.listdir(ckpt))
    assert files == [f"block_{i:05d}.pt" for i in range(3)]  # rank 0 wrote each block once
    os.remove(os.path.join(ckpt, files[-1]))
    resumed = str(tmp_path / "resumed")
    _torchrun(resumed, ckpt)
    for rank in (0, 1):
        arrays, meta = _load(resumed, rank)
        assert meta["resumed_blocks"] == 2
        _assert_same_arrays(arrays, expected)
    # One process resumes the ranks' checkpoint when it sums the same shards, and refuses other bits.
    os.remove(os.path.join(ckpt, files[-1]))
    with pytest.raises(ValueError, match=re.escape("hessian_shards: 2 there, None now")):
        worker.run(ckpt)
    model, report = worker.run(ckpt, hessian_shards=2)
    assert report.resumed_blocks == 2
    _assert_same_arrays(worker.arrays(model, report), expected)


@pytest.mark.slow
def test_two_ranks_on_an_offloaded_model_give_the_in_memory_bits(tmp_path):
    """Both at once: 2 ranks, each starting from a meta-device skeleton and reading the blocks from safetensors
    on disk, rank 0 streaming the quantized blocks out; the written checkpoint is the single-process in-memory
    run's model bit for bit, and every rank's codes and records are that run's."""
    from quantease.offload import SafetensorsWeights

    source = str(tmp_path / "source")
    worker.make_model().save_pretrained(source, max_shard_size="60KB")
    assert os.path.exists(os.path.join(source, "model.safetensors.index.json"))  # sharded, read block by block
    out = str(tmp_path / "run")
    _torchrun(out, str(tmp_path / "ckpt"), "--offload", source)
    model, report = worker.run(hessian_shards=2)
    expected = worker.arrays(model, report)
    for rank in (0, 1):
        arrays, meta = _load(out, rank)
        assert not any(k.startswith("weight/") for k in arrays)  # nothing stayed in memory
        _assert_same_arrays(arrays, {k: v for k, v in expected.items() if not k.startswith("weight/")})
        assert [r["loss"] for r in meta["records"]] == [r.loss for r in report]
    written = SafetensorsWeights(f"{out}.model")
    state = model.state_dict()
    assert sorted(written.names()) == sorted(state)
    loaded = written.load(state)
    different = [k for k in state if not torch.equal(loaded[k], state[k])]
    assert not different, different


@pytest.mark.slow
def test_two_ranks_stream_the_gguf_file_of_the_in_memory_run(tmp_path):
    """Rank 0 writes the GGUF header and every tensor as the ranks finish each block: the file is save_gguf's of
    the single-process in-memory run, byte for byte."""
    pytest.importorskip("gguf")
    import tiny_llama
    from quantease.export import save_gguf

    source = str(tmp_path / "source")
    worker.make_model().save_pretrained(source, max_shard_size="60KB")
    out = str(tmp_path / "run")
    _torchrun(out, str(tmp_path / "ckpt"), "--offload", source, "--gguf", "Q4_0")
    model = transformers.LlamaForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    model, report = worker.run(model=model, hessian_shards=2, gguf="Q4_0")
    save_gguf(model, tmp_path / "memory.gguf", report, tokenizer=tiny_llama.tokenizer())
    with open(f"{out}.gguf", "rb") as f:
        assert f.read() == (tmp_path / "memory.gguf").read_bytes()
