"""`scaling sizes`: the size table, as text or JSON."""
from __future__ import annotations

import json

import click

from mm1model.sizes import FAMILIES, NO_PUBLIC_LM, NO_PUBLIC_VIT, size_names, size_table


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`mm1model.sizes.size_table` as an aligned text table."""
    header = ("size", "family", "N", "LM total", "vision", "connector", "total", "d_model", "layers", "heads",
              "img tokens", "image")
    lines = [header]
    for r in rows:
        lines.append((r["name"], r["family"], _human(r["params"]), _human(r["params_lm_total"]), _human(r["params_vision"]),
                      _human(r["params_connector"]), _human(r["params_total"]), str(r["d_model"]),
                      str(r["n_layers"]), str(r["n_heads"]), str(r["image_tokens"]),
                      f"{r['image_size']}px/{r['patch_size']}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    note = "N = LM non-embedding parameters; image: ViT resolution / patch; `--json` adds each shape's source."
    starts = [f"{r['name']}: LM {r['pretrained_lm']}; ViT {r['pretrained_vit']}" for r in rows
              if r["pretrained_lm"] != NO_PUBLIC_LM or r["pretrained_vit"] != NO_PUBLIC_VIT]
    if starts:
        starts = ["", "Pretrained starts (--init-lm / --init-vit; a size without one starts from scratch):", *starts]
    return "\n".join(text + starts + ["", note])


@click.command("sizes")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per size.")
@click.option("--size", "sizes", multiple=True, metavar="NAME", help="Only these sizes (repeatable).")
@click.option("--family", type=click.Choice([*FAMILIES, "all"]), default="mm1", show_default=True,
              help="mm1: the named sizes; width / depth: the transfer families; all: every size.")
def sizes_command(as_json: bool, sizes: tuple[str, ...], family: str) -> None:
    """The model sizes: parameter counts per component and shapes."""
    rows = size_table(list(sizes) or size_names(None if family == "all" else family))
    click.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))
