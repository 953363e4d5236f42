"""`scaling sweep`: a thin shell over :func:`scaling.sweep.run_sweeps`."""
from __future__ import annotations

import click

from mm1model.config import ConfigError
from scaling.executors import EXECUTORS
from scaling.sweep import run_sweeps


def _floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError(f"empty grid: {flag} {text!r} lists no learning rate")
    return values


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{flag} {text!r} lists no value")
    return values


@click.command("sweep")
@click.option("--sizes", help="Comma-separated sizes, e.g. 9M,85M,302M,1.2B (see `scaling sizes`).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Sweep file (TOML), e.g. sweeps/cpu.toml; flags override it.")
@click.option("--lrs", help="Comma-separated peak LRs, the same grid for every size.")
@click.option("--points", type=int, help="LRs per size in the default grid (log-spaced around MM1's law).")
@click.option("--span", type=float, help="Half-width of the default grid, in decades.")
@click.option("--seeds", type=int, help="Seeds per (size, lr): 0..S-1.")
@click.option("--steps", type=int, help="Training steps per cell.")
@click.option("--tokens", type=int, help="Training tokens per cell (sets the steps).")
@click.option("--horizons", help="Comma-separated horizons of every size (in --horizon-unit), e.g. 150,300,600: "
                                 "one cell per horizon; under the wsd schedule the longest is a trunk, the others "
                                 "branch from it.")
@click.option("--horizon-unit", type=click.Choice(["steps", "tokens"]), default=None,
              help="Unit of the horizons [steps]; tokens -> steps = ceil(tokens / (batch x seq_len)) per batch.")
@click.option("--batch-sizes", help="Comma-separated global batch sizes (sequences) of every size, e.g. 8,16.")
@click.option("--executor", default=None,
              help=f"{' | '.join(EXECUTORS)} | replay:RUNS.csv. local: subprocesses on this machine; slurm: a job "
                   "array; debug: in-process; replay: answer each cell from a recorded runs table, no training.")
@click.option("--max-parallel", type=int, help="Most cells running at once.")
@click.option("--batch-size", type=int, help="Global batch in sequences [CPU sizes 8, the paper's 512].")
@click.option("--micro-batch-size", type=int, help="Sequences per process per forward (gradient accumulation).")
@click.option("--seq-len", type=int, help="Tokens per sequence [CPU sizes 128, the paper's 4096].")
@click.option("--memory-gb", type=float,
              help="Memory the local cells may share, GB [what this machine has available now].")
@click.option("--max-retries", type=int, help="Retries of a failed cell.")
@click.option("--parametrization", type=click.Choice(["sp", "mup", "completep"]), default=None,
              help="Model parametrization of every cell (default: the file's, else sp).")
@click.option("--base-size", help="Base size of muP / CompleteP (e.g. w32).")
@click.option("--alpha", type=float, help="CompleteP's depth exponent (1 CompleteP, 0.5 Depth-muP).")
@click.option("--init-lm", type=click.Path(file_okay=False),
              help="Every cell's LM starts from this Hugging Face Llama-format directory (one size per checkpoint).")
@click.option("--init-vit", type=click.Path(file_okay=False),
              help="Every cell's image encoder starts from this Hugging Face CLIP directory.")
@click.option("--out", type=click.Path(file_okay=False), help="Sweep directory (default runs/<name>).")
@click.option("--arms", help="For a sweep file with [arms.NAME] tables: the arms to run, comma-separated "
                             "(default: all, one after another, each in OUT/NAME).")
@click.option("--no-wait", is_flag=True, help="Start the sweep in the background and print its directory.")
@click.option("--keep-checkpoints", is_flag=True, default=None,
              help="Keep the newest checkpoint of each finished cell (default: remove them once a cell is final).")
@click.option("--adaptive", is_flag=True, default=None,
              help="Adaptive mode: sizes smallest first, each from 3 LRs around the prior, LRs added where they "
                   "narrow the optimum until its 95%% interval is within --target-halfwidth or --max-points.")
@click.option("--target-halfwidth", type=float, help="Adaptive: stop a size at this 95%% half-width of ln lr* [0.15].")
@click.option("--max-points", type=int, help="Adaptive: the most LRs per size [9].")
@click.option("--dry-run", is_flag=True, help="List cells, LRs and resources per job; submit nothing.")
def sweep_command(sizes, config_path, lrs, points, span, seeds, steps, tokens, horizons, horizon_unit, batch_sizes,
                  executor, max_parallel, batch_size,
                  micro_batch_size, seq_len, memory_gb, max_retries, parametrization, base_size, alpha, init_lm, init_vit,
                  out, arms, no_wait, keep_checkpoints, adaptive, target_halfwidth, max_points, dry_run) -> None:
    """Run (or resume) a learning-rate grid: one trainer run per (size, lr, batch, horizon, seed).
    A sweep file with arms runs each arm as its own sweep, in OUT/ARM."""
    flags = dict(sizes=tuple(s.strip() for s in sizes.split(",") if s.strip()) if sizes is not None else None,
                 lrs=_floats(lrs, "--lrs"), points=points, span=span, seeds=seeds, steps=steps, tokens=tokens,
                 horizons=_ints(horizons, "--horizons"), horizon_unit=horizon_unit,
                 batch_sizes=_ints(batch_sizes, "--batch-sizes"),
                 mode="adaptive" if adaptive else None, target_halfwidth=target_halfwidth, max_points=max_points,
                 executor=executor, max_parallel=max_parallel, max_retries=max_retries, out=out, memory_gb=memory_gb,
                 model={"parametrization": parametrization, "base_size": base_size, "alpha": alpha},
                 init={"lm": init_lm, "vit": init_vit},
                 shape={"batch_size": batch_size, "micro_batch_size": micro_batch_size, "seq_len": seq_len})
    chosen = tuple(a.strip() for a in arms.split(",") if a.strip()) if arms else None
    result = run_sweeps(config_path, chosen, flags, dry_run=dry_run, no_wait=no_wait, echo=click.echo,
                        keep_checkpoints=keep_checkpoints or None)
    click.echo(result.summary())
    if result.failure:
        raise click.ClickException(result.failure)
