"""Head-to-head comparisons in one process: ``python -m mm1model.bench --compare [--json]``.

Each comparison times two contenders in alternating rounds (A B, then B A, ...), so a change in
the machine's load hits both alike, and reports the median of each and their ratio, oriented
so that ratio > 1 means we win (throughputs: ours / reference; times: reference / ours).

* ``lm_step/SIZE``: one training step (forward, cross-entropy, backward, global-norm clip,
  AdamW) of our language model, the ``LM`` module of MM1 alone on a text-only batch with the
  trainer's fused head + loss (:mod:`mm1model.loss`), against
  Hugging Face ``transformers``' ``LlamaForCausalLM`` of the same shape (d_model, layers,
  heads, FFN width, vocabulary, tied head, RMSNorm eps, RoPE theta; SDPA attention, no KV
  cache), same batch, sequence length, dtype (fp32), thread count, optimizer and clipping.
  Both attend causally over one document per row: HF's model has no packed-document mask.
* ``mm1_step/SIZE``: the trainer's full MM1 step (ViT + connector + LM, images filling about
  half of the positions, two documents per row) against the LM step above on the same
  batch x sequence length: the ratio is what the image path costs (no target).
* ``doc_mask/T``: one attention layer of the 1M size (the LM with one block, a 1-wide FFN and a
  tiny vocabulary, so the cost is the attention block's), forward + backward, on the document
  boundaries of real packed rows from the data pipeline against the same rows as one causal
  document. Target: masking costs <= 25%, i.e. ratio >= 0.8.

The per-cell overhead of a sweep (submit to first optimizer step) is measured one layer up, where
sweep cells are: :mod:`scaling.overhead` (``python -m scaling.overhead``).
"""
from __future__ import annotations

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mm1model import paper
from mm1model.bench.step import BENCH_LR, synthetic_batch
from mm1model.config import ConfigError
from mm1model.data import DataConfig, PackedStream
from mm1model.loss import linear_cross_entropy
from mm1model.model import MM1
from mm1model.sizes import get_size
from mm1model.train import (
    TrainConfig,
    build_model,
    clip_gradients,
    forward_backward,
    resolve,
)
from mm1model.train_config import OptimizerConfig

CPU_SIZES = ("100K", "300K", "1M", "3M")
DOC_MASK_SEQ_LENS = (512, 1024, 2048)
DOC_MASK_TARGET = 0.8  # masked / causal throughput: masking costs at most 25% more time
KINDS = ("lm", "mm1", "doc_mask")


@dataclass
class Comparison:
    """One head-to-head result. ``ours`` and ``reference`` are medians in ``unit``; ``ratio`` > 1
    means we win (ours / reference for a throughput, reference / ours for a time); ``target``
    is the ratio to reach (None: informative only). ``detail`` holds the samples, the shapes and
    the machine's load average (1 min) before and after."""

    name: str
    ours: float
    reference: float
    unit: str
    ratio: float
    target: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target


def alternate(contenders: dict[str, Callable[[], Any]], repeats: int, calls: int) -> dict[str, list[float]]:
    """Seconds per call of each contender: ``repeats`` rounds, each timing ``calls`` calls of
    every contender in turn, the order reversed every other round. Returns the per-round means."""
    names = list(contenders)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            for _ in range(calls):
                contenders[name]()
            samples[name].append((time.perf_counter() - start) / calls)
    return samples


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _throughput(name: str, ours_s: list[float], ref_s: list[float], work: float, unit: str,
                target: float | None, detail: dict[str, Any]) -> Comparison:
    ours = statistics.median(work / s for s in ours_s)
    reference = statistics.median(work / s for s in ref_s)
    # the same ratio round by round: each round's pair ran back to back under the same load
    paired = statistics.median(r / o for o, r in zip(ours_s, ref_s))
    return Comparison(name, ours, reference, unit, ours / reference, target,
                      {**detail, "paired_ratio_median": paired, "ours_samples": [round(work / s, 1) for s in ours_s],
                       "reference_samples": [round(work / s, 1) for s in ref_s]})


# ------------------------------------------------------------------------------------ LM steps
def hf_llama(lm_cfg) -> torch.nn.Module:
    """``transformers.LlamaForCausalLM`` with the shape of our ``LMConfig`` (raises ConfigError
    when ``transformers`` is not installed: it is the optional ``bench`` extra)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise ConfigError("the transformers comparison needs `pip install transformers` "
                          "(the optional `bench` extra); skip it with --skip lm") from None
    if (lm_cfg.attn_scale is not None or lm_cfg.readout_mult != 1.0 or lm_cfg.residual_mult != 1.0
            or lm_cfg.input_mult != 1.0):
        raise ConfigError("LlamaForCausalLM has no muP multipliers: compare a standard-parametrization size")
    config = LlamaConfig(vocab_size=lm_cfg.vocab_size, hidden_size=lm_cfg.d_model, intermediate_size=lm_cfg.ffn_dim,
                         num_hidden_layers=lm_cfg.n_layers, num_attention_heads=lm_cfg.n_heads,
                         num_key_value_heads=lm_cfg.kv_heads, rms_norm_eps=lm_cfg.norm_eps,
                         rope_theta=lm_cfg.rope_theta, tie_word_embeddings=lm_cfg.tie_embeddings,
                         max_position_embeddings=4096, attention_bias=False, mlp_bias=False,
                         initializer_range=lm_cfg.init_std, use_cache=False, attn_implementation="sdpa")
    return LlamaForCausalLM(config).train()


def _optimizer(module: torch.nn.Module) -> torch.optim.AdamW:
    # The same optimizer for every contender: the trainer's betas and decay, torch's default
    # (foreach) AdamW implementation.
    return torch.optim.AdamW(module.parameters(), lr=1e-4, betas=paper.ADAM_BETAS, weight_decay=1e-5)


def _step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor]):
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
    return step


def initialised_lm(mcfg, seed: int = 0) -> torch.nn.Module:
    """The LM of an MM1 as training starts it (``MM1.init_weights``: N(0, init_std) matrices and
    embeddings, scaled residual projections). torch's default module init would be unfair to
    it: N(0, 1) tied embeddings saturate the softmax, and the tiny gradients that follow are
    denormal floats, which are slow on CPU in every matmul and in AdamW."""

    torch.manual_seed(seed)
    return MM1(mcfg).lm.train()


def lm_contenders(size: str, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, Callable[[], None]]:
    """Training-step closures of our LM and of HF's Llama of the same shape on the same batch."""

    mcfg = get_size(size)
    cfg = mcfg.lm
    reference = hf_llama(cfg)  # initialised by transformers' own rule, N(0, initializer_range)
    ours = initialised_lm(mcfg, seed)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, min(cfg.vocab_size, 4096), (batch_size, seq_len), generator=generator)
    labels = torch.roll(ids, -1, dims=1)  # our labels are pre-shifted; HF shifts ``ids`` itself
    labels[:, -1] = -100
    positions = torch.arange(seq_len).expand(batch_size, seq_len)

    def ours_loss() -> torch.Tensor:  # as MM1.forward trains: the fused head + loss
        return linear_cross_entropy(ours.features(ours.embed(ids), positions, None), ours.output.weight, labels,
                                    cfg.z_loss)[0]

    def reference_loss() -> torch.Tensor:
        return reference(input_ids=ids, labels=ids).loss

    return {"ours": _step(ours, _optimizer(ours), ours_loss),
            "reference": _step(reference, _optimizer(reference), reference_loss)}


def compare_lm(size: str, batch_size: int = 8, seq_len: int = 128, repeats: int = 5, calls: int = 3) -> Comparison:
    """``lm_step/SIZE``: our LM against ``LlamaForCausalLM`` (tokens/s, see the module docstring)."""
    load = _load()
    # Denormals flushed for both: HF's own init leaves gradients small enough to go denormal
    # after a few steps, which slows its CPU matmuls by up to 30% (measured at 100K); that is
    # an artefact of the CPU, not of the model.
    flushed = torch.set_flush_denormal(True)
    try:
        contenders = lm_contenders(size, batch_size, seq_len)
        for step in contenders.values():  # allocator and kernel warm-up, untimed
            step()
            step()
        samples = alternate(contenders, repeats, calls)
    finally:
        torch.set_flush_denormal(False)
    return _throughput(f"lm_step/{size}", samples["ours"], samples["reference"], batch_size * seq_len, "tokens/s",
                       1.0, {"ours_is": "mm1model.model.LM (text-only path), fp32",
                             "flush_denormal": flushed,
                             "reference_is": "transformers.LlamaForCausalLM, sdpa, fp32",
                             "batch_size": batch_size, "seq_len": seq_len, "threads": torch.get_num_threads(),
                             "repeats": repeats, "calls": calls, "load_before": load, "load_after": _load()})


def compare_mm1(size: str, batch_size: int = 8, seq_len: int = 128, repeats: int = 5, calls: int = 2) -> Comparison:
    """``mm1_step/SIZE``: the trainer's full MM1 step with images against our LM step alone."""

    load = _load()
    config = resolve(TrainConfig(size=size, data=DataConfig(seq_len=seq_len), batch_size=batch_size,
                                 optimizer=OptimizerConfig(lr=BENCH_LR, warmup_steps=0), device="cpu"))
    cpu = torch.device("cpu")
    model, mcfg = build_model(config, cpu)
    tpi = mcfg.tokens_per_image
    images = min(16, (seq_len // 2) // (tpi + 2))
    batch = synthetic_batch(batch_size, seq_len, tpi, config.data.image_size, min(mcfg.lm.vocab_size, 4096),
                            images, torch.Generator().manual_seed(0))
    mm1_opt = _optimizer(model)

    def mm1_step() -> None:
        mm1_opt.zero_grad(set_to_none=True)
        forward_backward(model, iter([batch]), 1, cpu)
        clip_gradients(model, 1.0)
        mm1_opt.step()

    lm = initialised_lm(mcfg)
    lm_opt = _optimizer(lm)
    text = batch["input_ids"].clamp(min=5)  # the same positions as plain text
    positions = torch.arange(seq_len).expand(batch_size, seq_len)
    labels = torch.roll(text, -1, dims=1)
    def lm_loss() -> torch.Tensor:
        return linear_cross_entropy(lm.features(lm.embed(text), positions, None), lm.output.weight, labels)[0]

    contenders = {"ours": mm1_step, "reference": _step(lm, lm_opt, lm_loss)}
    for step in contenders.values():
        step()
    samples = alternate(contenders, repeats, calls)
    return _throughput(f"mm1_step/{size}", samples["ours"], samples["reference"], batch_size * seq_len, "tokens/s",
                       None, {"ours_is": f"trainer step of the full MM1 ({images} images of {tpi} tokens per row, "
                                         "2 documents per row)",
                              "reference_is": "the LM alone, text only, one document per row",
                              "batch_size": batch_size, "seq_len": seq_len, "threads": torch.get_num_threads(),
                              "repeats": repeats, "calls": calls, "load_before": load, "load_after": _load()})


# ------------------------------------------------------------------------------------ doc mask
def packed_doc_ids(seq_len: int, batch_size: int, size: str = "1M",
                   corpus: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(doc_ids, position_ids) (B, T) of the first ``batch_size`` packed training rows at
    ``seq_len`` of the bundled corpus, as the trainer packs them for ``size`` (its image tokens
    and resolution): the mixture's real document lengths."""

    data = DataConfig(corpus=corpus, seq_len=seq_len, seed=0)
    data = resolve(TrainConfig(size=size, data=data, optimizer=OptimizerConfig(lr=BENCH_LR, warmup_steps=0))).data
    batch = PackedStream(data).next_batch(batch_size)
    return batch["doc_ids"], batch["position_ids"]


def compare_doc_mask(seq_len: int, batch_size: int = 4, size: str = "1M", repeats: int = 5, calls: int = 2,
                     corpus: str | None = None) -> Comparison:
    """``doc_mask/T``: an attention layer on packed documents against plain causal attention."""

    load = _load()
    doc_ids, position_ids = packed_doc_ids(seq_len, batch_size, size, corpus)
    # one block whose cost is attention: an FFN of width 1 and a vocabulary of the special tokens
    mcfg = get_size(size)
    cfg = dataclasses.replace(mcfg.lm, n_layers=1, ffn_dim=1, vocab_size=8, tie_embeddings=True)
    layer = initialised_lm(dataclasses.replace(mcfg, lm=cfg))
    x = torch.randn(batch_size, seq_len, cfg.d_model)
    causal_positions = torch.arange(seq_len).expand(batch_size, seq_len)

    def run(position: torch.Tensor, docs: torch.Tensor | None) -> Callable[[], None]:
        def step() -> None:
            layer.zero_grad(set_to_none=True)
            layer(x, position, docs).square().mean().backward()
        return step

    contenders = {"ours": run(position_ids, doc_ids), "reference": run(causal_positions, None)}
    for step in contenders.values():
        step()
    samples = alternate(contenders, repeats, calls)
    docs_per_row = [len(torch.unique_consecutive(row)) for row in doc_ids]
    return _throughput(f"doc_mask/{seq_len}", samples["ours"], samples["reference"], batch_size * seq_len, "tokens/s",
                       DOC_MASK_TARGET, {"ours_is": f"one {size} attention block, forward + backward, packed documents "
                                                    f"({docs_per_row} per row)",
                                         "reference_is": "the same block, one causal document per row",
                                         "batch_size": batch_size, "seq_len": seq_len,
                                         "threads": torch.get_num_threads(), "repeats": repeats, "calls": calls,
                                         "load_before": load, "load_after": _load()})


# ------------------------------------------------------------------------------------ all
def compare(sizes: tuple[str, ...] = CPU_SIZES, seq_lens: tuple[int, ...] = DOC_MASK_SEQ_LENS,
            skip: tuple[str, ...] = (), threads: int = 1, repeats: int = 5, batch_size: int = 8, seq_len: int = 128,
            corpus: str | None = None, echo: Callable[[str], None] = lambda _: None) -> list[Comparison]:
    """Every comparison of the module docstring, in order; ``skip`` names kinds to leave out
    (``lm``, ``mm1``, ``doc_mask``). A missing ``transformers`` skips ``lm_step`` with a line
    through ``echo``."""
    unknown = set(skip) - set(KINDS)
    if unknown:
        raise ConfigError(f"unknown comparison kind(s) {sorted(unknown)}; valid: {', '.join(KINDS)}")
    if repeats < 5:
        raise ConfigError(f"need repeats >= 5 for a median of alternating runs, got {repeats}")
    torch.set_num_threads(threads)
    out: list[Comparison] = []
    if "lm" not in skip:
        try:
            import transformers  # noqa: F401
        except ImportError:
            echo("skip lm_step: transformers is not installed (pip install 'mm1-scaling[bench]')")
            skip = (*skip, "lm")
    for size in sizes if "lm" not in skip else ():
        out.append(compare_lm(size, batch_size, seq_len, repeats))
        echo(format_comparison(out[-1]))
    for size in sizes if "mm1" not in skip else ():
        out.append(compare_mm1(size, batch_size, seq_len, repeats))
        echo(format_comparison(out[-1]))
    for t in seq_lens if "doc_mask" not in skip else ():
        out.append(compare_doc_mask(t, repeats=repeats, corpus=corpus))
        echo(format_comparison(out[-1]))
    return out


def format_comparison(c: Comparison) -> str:
    """One line: name, ours, reference, ratio and whether the target is met."""
    verdict = "" if c.target is None else ("  meets target" if c.met else f"  BELOW target {c.target:g}")
    return (f"{c.name:<22} ours {c.ours:>10,.2f} {c.unit:<9} reference {c.reference:>10,.2f}   "
            f"ratio {c.ratio:.3f}{verdict}  (load {c.detail.get('load_before')}->{c.detail.get('load_after')})")


def to_record(c: Comparison) -> dict[str, Any]:
    """The ``--json`` record: name, ours, reference, unit, ratio first, then target and detail."""
    return {"name": c.name, "ours": c.ours, "reference": c.reference, "unit": c.unit, "ratio": c.ratio,
            "target": c.target, "met": c.met, **c.detail}
