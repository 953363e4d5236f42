"""`scaling data prepare` and `scaling data stats`."""
from __future__ import annotations

import json

import click

from mm1model.data import DataConfig, prepare_corpus
from mm1model.data.stats import corpus_stats, format_stats
from mm1model.sizes import get_size


@click.group("data")
def data_group() -> None:
    """The bundled training corpus: build it, inspect what the stream makes of it."""


@data_group.command("prepare")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Corpus directory (default $MM1_CORPUS or ~/.cache/mm1-scaling/corpus).")
@click.option("--synthetic", is_flag=True,
              help="Write the procedural fallback instead of the real packages.")
def prepare(out: str | None, synthetic: bool) -> None:
    """Fetch the Debian packages and build the corpus (idempotent)."""
    manifest = prepare_corpus(out, synthetic=True if synthetic else None, echo=click.echo)
    kinds = sorted({s["kind"] for s in manifest["sources"]})
    label = "SYNTHETIC (procedural fallback)" if manifest["synthetic"] else "real"
    click.echo(f"corpus ready: {label}, {len(manifest['sources'])} sources ({', '.join(kinds)}), "
               f"vocab {manifest['vocab_size']}")


@data_group.command("stats")
@click.option("--sequences", default=2000, show_default=True, help="Packed sequences to draw.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.option("--corpus", type=click.Path(file_okay=False), default=None,
              help="Corpus directory (default: the prepared default corpus).")
@click.option("--size", default=None, metavar="NAME",
              help="Take image tokens and resolution from this model size.")
@click.option("--seq-len", default=256, show_default=True, help="Tokens per sequence.")
@click.option("--image-tokens", default=16, show_default=True,
              help="Placeholders per image (the CPU sizes' 16; MM1: 144).")
@click.option("--image-size", default=32, show_default=True, help="ViT input side, pixels.")
@click.option("--max-images", default=16, show_default=True, help="Images per sequence at most.")
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True)
def stats(sequences: int, as_json: bool, corpus: str | None, size: str | None, seq_len: int,
          image_tokens: int, image_size: int, max_images: int, split: str) -> None:
    """Mixture, packing efficiency, tokens/images per source, skipped records."""
    if size is not None:
        model = get_size(size)
        image_tokens, image_size = model.tokens_per_image, model.vit.image_size
    config = DataConfig(corpus=corpus, seq_len=seq_len, max_images=max_images,
                        image_tokens=image_tokens, image_size=image_size)
    result = corpus_stats(config, sequences, split)
    click.echo(json.dumps(result, indent=2) if as_json else format_stats(result))
