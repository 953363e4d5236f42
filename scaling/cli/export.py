"""`scaling export`: a run's newest (sharded) checkpoint as a Hugging Face Llama LM and an MM1 safetensors file."""
from __future__ import annotations

import click

from mm1model.export import export_run


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for lm/ (config.json + model.safetensors), mm1.safetensors and mm1_config.json.")
def export_command(run_dir: str, out: str) -> None:
    """Write RUN_DIR's newest checkpoint (saved by any number of processes) as a Llama checkpoint of
    the LM that transformers' LlamaForCausalLM loads, and the whole MM1 as safetensors."""
    click.echo(export_run(run_dir, out).summary())
