"""`scaling data stats`: what the stream actually produces from a corpus.

Runs a :class:`~mm1model.data.PackedStream` for ``n`` sequences and reports, per source and
overall: sequences (the realised mixture), tokens and images, padding (packing efficiency =
non-padding fraction of all positions), the distribution of images per sequence, and the bad
records skipped, by reason.
"""
from __future__ import annotations

from mm1model.config import ConfigError
from mm1model.data.corpus import read_manifest
from mm1model.data.mixture import SOURCES
from mm1model.data.stream import DataConfig, PackedStream


def corpus_stats(config: DataConfig, n_sequences: int = 2000, split: str = "train") -> dict:
    """Statistics of the first ``n_sequences`` of the stream of ``config`` (rank 0 of 1).

    Keys: ``mixture`` (fraction of sequences per source), ``packing_efficiency`` (non-padding
    fraction, overall), ``synthetic`` (the corpus is the procedural fallback), ``skipped``
    (reason -> records), ``sources`` (per source: sequences, tokens, images, padding,
    packing_efficiency, tokens_per_sequence, images_per_sequence histogram), ``corpus`` (the
    manifest's source rows), ``config``.
    """
    if n_sequences < 1:
        raise ConfigError(f"--sequences must be >= 1, got {n_sequences}")
    stream = PackedStream(config, split=split)
    for _ in range(n_sequences):
        next(stream)
    manifest = read_manifest(config.corpus_dir)
    per_source = {}
    for kind in SOURCES:
        c = stream.counters[kind]
        positions = c["tokens"] + c["padding"]
        histogram = c["images_per_sequence"].tolist()
        while len(histogram) > 1 and histogram[-1] == 0:
            histogram.pop()
        per_source[kind] = {
            "sequences": c["sequences"], "tokens": c["tokens"], "images": c["images"],
            "padding": c["padding"],
            "packing_efficiency": c["tokens"] / positions if positions else None,
            "tokens_per_sequence": c["tokens"] / c["sequences"] if c["sequences"] else None,
            "images_per_sequence": histogram,
        }
    tokens = sum(s["tokens"] for s in per_source.values())
    padding = sum(s["padding"] for s in per_source.values())
    return {
        "sequences": n_sequences,
        "mixture": {k: per_source[k]["sequences"] / n_sequences for k in SOURCES},
        "mixture_target": dict(zip(SOURCES, config.mixture.probabilities().tolist())),
        "packing_efficiency": tokens / (tokens + padding),
        "synthetic": bool(manifest["synthetic"]),
        "skipped": dict(sorted(stream.skipped.items())),
        "sources": per_source,
        "corpus": manifest["sources"],
        "config": {"seq_len": config.seq_len, "max_images": config.max_images,
                   "image_tokens": config.tokens_per_image, "image_size": config.image_side,
                   "corpus": str(config.corpus_dir), "split": split},
    }


def format_stats(stats: dict) -> str:
    """A human-readable report of :func:`corpus_stats`."""
    cfg = stats["config"]
    lines = [f"corpus {cfg['corpus']}" + ("  [SYNTHETIC fallback]" if stats["synthetic"] else ""),
             f"{stats['sequences']} sequences of {cfg['seq_len']} tokens, <= {cfg['max_images']} "
             f"images x {cfg['image_tokens']} tokens at {cfg['image_size']} px ({cfg['split']})",
             "",
             f"{'source':<12}{'mix':>7}{'target':>8}{'tokens':>11}{'images':>8}{'img/seq':>9}"
             f"{'efficiency':>12}"]
    for kind, s in stats["sources"].items():
        seqs = s["sequences"] or 1
        eff = f"{s['packing_efficiency']:.3f}" if s["packing_efficiency"] is not None else "-"
        lines.append(f"{kind:<12}{stats['mixture'][kind]:>7.3f}{stats['mixture_target'][kind]:>8.3f}"
                     f"{s['tokens']:>11,}{s['images']:>8,}{s['images'] / seqs:>9.2f}{eff:>12}")
    lines += [f"{'all':<12}{1:>7.3f}{1:>8.3f}{sum(s['tokens'] for s in stats['sources'].values()):>11,}"
              f"{sum(s['images'] for s in stats['sources'].values()):>8,}{'':>9}"
              f"{stats['packing_efficiency']:>12.3f}", ""]
    for kind, s in stats["sources"].items():
        if any(s["images_per_sequence"][1:]):
            lines.append(f"images per {kind} sequence (0, 1, 2, ...): "
                         + " ".join(str(n) for n in s["images_per_sequence"]))
    skipped = stats["skipped"]
    lines.append("skipped: " + (", ".join(f"{k} {v}" for k, v in skipped.items()) if skipped
                                else "none"))
    lines.append("corpus: " + "; ".join(f"{r['name']} ({r['kind']}, {r['items']} items, "
                                        f"{r['licence']}{', synthetic' if r['synthetic'] else ''})"
                                        for r in stats["corpus"]))
    return "\n".join(lines)
