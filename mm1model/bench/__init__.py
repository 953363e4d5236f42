"""Benchmarks: ``python -m mm1model.bench``.

* ``--size NAME [--json]``: throughput of one trainer step (:mod:`mm1model.bench.step`).
* ``--compare [--json]``: our LM against Hugging Face's Llama, the image path's cost, and
  document masking against plain causal attention, in one process with alternating runs
  (:mod:`mm1model.bench.compare`). The per-cell overhead of a sweep is measured where sweep
  cells live, one layer up: ``python -m scaling.overhead``.
* ``--gpu [--json]``: the sweep sizes in bf16 with and without torch.compile under FSDP2 on one
  GPU (:mod:`mm1model.bench.gpu`; ``scripts/gpu-bench.sh`` runs it on an H200).

* ``--data [--json]``: packed sequences/s and images/s of the data pipeline with 0, 1, 2 loader
  workers, beside what a step of each sweep size needs per rank (:mod:`mm1model.bench.data`).

``--json`` prints one JSON object per line (one per comparison or per benchmarked pair;
``--size`` prints one). Bad input prints ``error: ...`` and exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from mm1model import paper
from mm1model.bench.compare import (
    CPU_SIZES,
    DOC_MASK_SEQ_LENS,
    compare,
    format_comparison,
    to_record,
)
from mm1model.bench import data as data_bench
from mm1model.bench.gpu import GPU_SIZES, format_record, gpu_bench
from mm1model.bench.step import bench, synthetic_batch
from mm1model.config import ConfigError

__all__ = ["bench", "main", "synthetic_batch"]


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mm1model.bench", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--size", help="benchmark one trainer step of this size (see `scaling sizes`)")
    mode.add_argument("--compare", action="store_true", help="run the head-to-head comparisons")
    mode.add_argument("--gpu", action="store_true", help="the GPU benchmark (bf16, FSDP2, eager and compiled)")
    mode.add_argument("--data", action="store_true", help="the data pipeline's throughput per loader worker count")
    parser.add_argument("--workers", type=lambda t: tuple(int(x) for x in _csv(t)), default=(0, 1, 2),
                        help="--data: loader worker counts (default 0,1,2)")
    parser.add_argument("--image-size", type=int, default=336, help="--data: ViT input side in pixels (default 336)")
    parser.add_argument("--image-tokens", type=int, default=paper.IMAGE_TOKENS, help="--data: tokens per image")
    parser.add_argument("--max-images", type=int, default=paper.MAX_IMAGES, help="--data: images per sequence at most")
    parser.add_argument("--mfu", type=float, help="--data: MFU of the GPU step the demand assumes (default the planner's)")
    parser.add_argument("--corpus", help="--data: a prepared corpus directory (default the bundled one)")
    parser.add_argument("--sizes", type=_csv, help="comma-separated sizes for --compare / --gpu")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 128 on CPU, 4096 on GPU)")
    parser.add_argument("--batch-size", type=int, help="global batch in sequences (default 8; --gpu: per size)")
    parser.add_argument("--micro-batch-size", type=int, help="sequences per forward (default: the batch per rank)")
    parser.add_argument("--steps", type=int, help="timed steps (default 5; --gpu 8)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2; --gpu 3)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (--compare default 1, as a sweep cell)")
    parser.add_argument("--images-per-seq", type=int, help="default: about half the positions, at most 16")
    parser.add_argument("--peak-flops", type=float, help="peak FLOP/s of one device, for MFU")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--compile", action="store_true", help="torch.compile each block")
    parser.add_argument("--compile-modes", type=_csv, default=("eager", "compiled"),
                        help="--gpu: eager,compiled (default both)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 over a world of one in a single process")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--model", type=json.loads, help='MM1Config overrides as JSON, e.g. \'{"lm": {"n_layers": 1}}\'')
    parser.add_argument("--seq-lens", type=lambda t: tuple(int(x) for x in _csv(t)),
                        help="--compare: doc-mask sequence lengths (default 512,1024,2048)")
    parser.add_argument("--repeats", type=int, default=5, help="--compare: alternating rounds (>= 5)")
    parser.add_argument("--skip", type=_csv, default=(), help="--compare: kinds to skip (lm, mm1, doc_mask)")
    parser.add_argument("--json", action="store_true", help="print JSON objects, one per line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.compare:
            return _compare(args)
        if args.gpu:
            return _gpu(args)
        if args.data:
            return _data(args)
        return _size(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _size(args: argparse.Namespace) -> int:
    import torch

    on_gpu = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    out = bench(args.size, args.seq_len or (paper.SEQ_LEN if on_gpu else 128), args.batch_size or 8, args.micro_batch_size,
                args.steps or 5, 2 if args.warmup is None else args.warmup, args.threads, args.images_per_seq,
                args.peak_flops, args.device, args.compile, args.activation_checkpointing, fsdp=args.fsdp,
                compile_backend=args.compile_backend, model=args.model)
    if args.json:
        print(json.dumps(out))
        return 0
    mfu = f"{out['mfu']:.1%}" if out["mfu"] is not None else "n/a (no peak FLOP/s for this device)"
    print(f"{out['size']} (N={out['params']:,}) on {out['device']} x{out['world_size']}, {out['threads']} threads, "
          f"batch {out['batch_size']} x {out['seq_len']} ({out['images_per_seq']} images/seq)\n"
          f"  tokens/s {out['tokens_per_s']:,.0f}   steps/s {out['steps_per_s']:.2f}   MFU {mfu}   "
          f"peak memory {out['peak_memory_mb']:,.0f} MB")
    return 0


def _compare(args: argparse.Namespace) -> int:

    echo = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else (lambda line: print(line, flush=True))
    results = compare(sizes=args.sizes or CPU_SIZES, seq_lens=args.seq_lens or DOC_MASK_SEQ_LENS,
                      skip=args.skip, threads=args.threads or 1, repeats=args.repeats,
                      batch_size=args.batch_size or 8, seq_len=args.seq_len or 128, echo=echo)
    if args.json:
        for result in results:
            print(json.dumps(to_record(result)))
    else:
        print(f"{sum(1 for r in results if r.met)} of {sum(1 for r in results if r.target is not None)} "
              "comparisons with a target meet it" + "".join(f"\n  {format_comparison(r)}" for r in results))
    return 0


def _gpu(args: argparse.Namespace) -> int:

    modes = {"eager": False, "compiled": True}
    unknown = [m for m in args.compile_modes if m not in modes]
    if unknown:
        raise ConfigError(f"unknown compile mode(s) {unknown}; valid: eager, compiled")
    echo = (lambda r: print(json.dumps(r), flush=True)) if args.json else (lambda r: print(format_record(r), flush=True))
    gpu_bench(sizes=args.sizes or GPU_SIZES, compile_modes=tuple(modes[m] for m in args.compile_modes),
              seq_len=args.seq_len or paper.SEQ_LEN, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
              steps=args.steps or 8, warmup=3 if args.warmup is None else args.warmup, device=args.device,
              compile_backend=args.compile_backend, model=args.model, threads=args.threads, echo=echo)
    return 0


def _data(args: argparse.Namespace) -> int:
    echo = (lambda r: print(json.dumps(r), flush=True)) if args.json else (
        lambda r: print(data_bench.format_record(r), flush=True))
    data_bench.data_bench(workers=args.workers, sizes=args.sizes or data_bench.SWEEP_SIZES,
                          mfu=args.mfu or data_bench.DEFAULT_MFU, echo=echo, seq_len=args.seq_len or paper.SEQ_LEN,
                          image_size=args.image_size, image_tokens=args.image_tokens, max_images=args.max_images,
                          micro_size=args.batch_size or 8, steps=args.steps or 8,
                          warmup=1 if args.warmup is None else args.warmup, corpus=args.corpus)
    return 0
