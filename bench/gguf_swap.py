"""Which tensors make two GGUF files of the same model and types differ in llama-perplexity: the first file
with the tensors of one kind (attn_q, ffn_down, ...) replaced by the second file's, byte for byte, and
llama-perplexity of each such mix on the held-out text, paired per chunk with the first file.

Both files must hold the same tensors in the same types (e.g. llama.cpp's imatrix Q4_0 file and our GPTQ
Q4_0 file from bench_gguf.py: equal by construction). The mix is the first file with each swapped tensor's
data overwritten in place, so its metadata is the first file's.

    python bench/gguf_swap.py --work w --files llama.cpp-imatrix-Q4_0.gguf,gptq-Q4_0.gguf --chunks 24

Prints, never asserts; perplexities only (no timings).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import llama_cpp  # noqa: E402

KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def swap(first: Path, second: Path, kind: str, out: Path) -> int:
    """``first`` copied to ``out`` with every ``blk.*.{kind}.weight`` from ``second``; returns how many."""
    import gguf

    theirs = {t.name: t for t in gguf.GGUFReader(str(second)).tensors}
    shutil.copyfile(first, out)
    count = 0
    with open(out, "r+b") as f:
        for t in gguf.GGUFReader(str(first)).tensors:
            if not t.name.endswith(f".{kind}.weight"):
                continue
            other = theirs[t.name]
            if other.tensor_type != t.tensor_type or other.n_bytes != t.n_bytes:
                raise ValueError(
                    f"{t.name}: {t.tensor_type.name} in {first.name}, {other.tensor_type.name} in {second.name}"
                )
            f.seek(t.data_offset)
            f.write(other.data.tobytes())
            count += 1
    return count


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="folder holding the two files and test.txt (bench_gguf.py's)")
    parser.add_argument("--files", required=True, help="two file names in --work: first,second")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated tensor kinds swapped one at a time")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=24)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    work = Path(args.work)
    first, second = (work / name for name in args.files.split(","))
    bin_dir = llama_cpp.tools_dir()

    def ppl(path: Path) -> dict:
        return llama_cpp.perplexity_stats(
            path, work / "test.txt", ctx=args.ctx, chunks=args.chunks, bin_dir=bin_dir, threads=args.threads
        )

    base = ppl(first)
    print(f"{first.name} with one kind from {second.name}; llama-perplexity -c {args.ctx} --chunks {args.chunks}")
    print(f"{first.name}: {base['ppl']:.3f} ± {base['se']:.3f}")
    print("| kind swapped | tensors | perplexity | paired NLL difference to the first file ± s.e. |\n|---|---|---|---|")
    rows = []
    for kind in args.kinds.split(","):
        out = work / f"swap-{kind}.gguf"
        count = swap(first, second, kind, out)
        stats = ppl(out)
        out.unlink()
        mean, se = llama_cpp.paired_difference(base["chunk_nll"], stats["chunk_nll"])
        rows.append({"kind": kind, "tensors": count, "ppl": stats["ppl"], "paired": mean, "paired_se": se})
        print(f"| {kind} | {count} | {stats['ppl']:.3f} | {mean:+.4f} ± {se:.4f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
