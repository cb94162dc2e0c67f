"""A quantize_model run for test_kill_resume.py: a tiny 4-block Llama (tests/tiny_llama.py), GPTQ with
act-order and groups, checkpoints in DIR. It prints one line per finished layer, then the sha256 of every
weight of the model at the end.

    python resume_child.py DIR                    run (or resume) to the end
    python resume_child.py DIR after_layer N      SIGKILL itself right after the N-th layer of this run
    python resume_child.py DIR during_write B     SIGKILL itself halfway through writing block B's checkpoint
    python resume_child.py DIR after_rename B     SIGKILL itself right after block B's file got its final name
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sys

import torch

import tiny_llama
from quantease.torch import quantize_model

VOCAB = 128


def model_and_data():
    model = tiny_llama.model(0, layers=4, mlp=128, vocab=VOCAB)
    g = torch.Generator().manual_seed(1)
    return model, [torch.randint(0, VOCAB, (2, 16), generator=g) for _ in range(4)]


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    directory, mode, arg = sys.argv[1], *(sys.argv[2:4] + [None, None])[:2]
    torch.set_num_threads(1)
    model, data = model_and_data()
    layers_done = 0

    def on_layer(record, result, H):
        nonlocal layers_done
        layers_done += 1
        print("layer", record.block, record.name, flush=True)
        if mode == "after_layer" and layers_done == int(arg):
            die()

    if mode == "during_write":  # the checkpoint of block B is half written when the process dies
        real_save = torch.save

        def save(obj, f, *a, **kw):
            if isinstance(obj, dict) and obj.get("block") == int(arg):
                buf = io.BytesIO()
                real_save(obj, buf, *a, **kw)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                die()
            return real_save(obj, f, *a, **kw)

        torch.save = save
    if mode == "after_rename":  # the file is in place, the directory's fsync has not happened
        real_replace = os.replace

        def replace(src, dst, *a, **kw):
            real_replace(src, dst, *a, **kw)
            if os.path.basename(str(dst)) == f"block_{int(arg):05d}.pt":
                die()

        os.replace = replace

    report = quantize_model(
        model,
        data,
        method="gptq",
        bits=3,
        group_size=32,
        checkpoint_dir=directory,
        progress=False,
        solver_kwargs={"act_order": True},
        on_layer=on_layer,
    )
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    print("resumed", report.resumed_blocks)
    print("digest", h.hexdigest())


if __name__ == "__main__":
    main()
