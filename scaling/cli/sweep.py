"""`scaling sweep`, `scaling status`, `scaling collect`: thin shells over scaling.sweep / scaling.runs."""
from __future__ import annotations

import click

from mm1model.config import ConfigError
from scaling.cli import main


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


@main.command()
@click.option("--sizes", help="Comma-separated sizes, e.g. 9M,85M,302M,1.2B (see `scaling sizes`).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Sweep file (TOML), e.g. sweeps/cpu.toml; flags override it.")
@click.option("--lrs", help="Comma-separated peak LRs, the same grid for every size.")
@click.option("--points", type=int, help="LRs per size in the default grid (log-spaced around MM1's law).")
@click.option("--span", type=float, help="Half-width of the default grid, in decades.")
@click.option("--seeds", type=int, help="Seeds per (size, lr): 0..S-1.")
@click.option("--steps", type=int, help="Training steps per cell.")
@click.option("--tokens", type=int, help="Training tokens per cell (sets the steps).")
@click.option("--executor", type=click.Choice(["local", "slurm", "debug"]), default=None,
              help="local: subprocesses on this machine; slurm: a job array; debug: in-process.")
@click.option("--max-parallel", type=int, help="Most cells running at once.")
@click.option("--max-retries", type=int, help="Retries of a failed cell.")
@click.option("--parametrization", type=click.Choice(["sp", "mup", "completep"]), default=None,
              help="Model parametrization of every cell (default: the file's, else sp).")
@click.option("--base-size", help="Base size of muP / CompleteP (e.g. w32).")
@click.option("--alpha", type=float, help="CompleteP's depth exponent (1 CompleteP, 0.5 Depth-muP).")
@click.option("--out", type=click.Path(file_okay=False), help="Sweep directory (default runs/<name>).")
@click.option("--arms", help="For a sweep file with [arms.NAME] tables: the arms to run, comma-separated "
                             "(default: all, one after another, each in OUT/NAME).")
@click.option("--no-wait", is_flag=True, help="Start the sweep in the background and print its directory.")
@click.option("--dry-run", is_flag=True, help="List cells, LRs and resources per job; submit nothing.")
def sweep(sizes, config_path, lrs, points, span, seeds, steps, tokens, executor, max_parallel,
          max_retries, parametrization, base_size, alpha, out, arms, no_wait, dry_run) -> None:
    """Run (or resume) a learning-rate grid: one trainer run per (size, lr, seed). A sweep file
    with arms runs each arm as its own sweep, in OUT/ARM."""
    from scaling.runs import format_status
    from scaling.sweep import describe_plan, load_sweep_config, plan_sweep, run_sweep, sweep_arms

    available = sweep_arms(config_path) if config_path else ()
    chosen = tuple(a.strip() for a in arms.split(",") if a.strip()) if arms else available
    if arms and not available:
        raise ConfigError("--arms needs a sweep file with [arms.NAME] tables"
                          + (f"; {config_path} has none" if config_path else " (--config)"))
    if len(chosen) > 1 and no_wait:
        raise ConfigError("--no-wait starts one sweep; a file's arms run one after another: drop --no-wait "
                          "or pick one arm with --arms")
    flags = dict(sizes=tuple(s.strip() for s in sizes.split(",") if s.strip()) if sizes is not None else None,
                 lrs=_floats(lrs, "--lrs"), points=points, span=span, seeds=seeds, steps=steps, tokens=tokens,
                 executor=executor, max_parallel=max_parallel, max_retries=max_retries, out=out,
                 model={"parametrization": parametrization, "base_size": base_size, "alpha": alpha})
    # every arm is planned (and so checked) before the first one starts
    plans = [plan_sweep(load_sweep_config(config_path, arm=arm, **flags)) for arm in chosen or (None,)]
    failed = []
    for plan in plans:
        if dry_run:
            click.echo(describe_plan(plan))
            continue
        result = run_sweep(plan, wait=not no_wait, echo=click.echo)
        if not no_wait:
            click.echo(format_status(result.status))
        click.echo(str(result.dir))
        failed += result.gave_up
    if failed:
        raise click.ClickException(f"{len(failed)} cell(s) failed after all retries; "
                                   f"see attempts.json in each (first: {failed[0]})")


@main.command()
@click.argument("sweep_dir", type=click.Path())
def status(sweep_dir) -> None:
    """Per size: cells done / running / failed / diverged and the best LR so far; for a
    `scaling launch` directory, its job and training progress."""
    from pathlib import Path

    if (Path(sweep_dir) / "plan.json").exists():
        from scaling.launch import format_status as format_launch, launch_status

        click.echo(format_launch(launch_status(sweep_dir)))
        return
    from scaling.runs import format_status, sweep_status

    click.echo(format_status(sweep_status(sweep_dir)))


@main.command()
@click.argument("sweep_dir", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), help="runs.csv or runs.parquet (default: print CSV).")
def collect(sweep_dir, out) -> None:
    """The runs table of a sweep, the input of `scaling fit`."""
    from scaling.runs import collect_runs, write_runs

    frame = collect_runs(sweep_dir)
    if out is None:
        click.echo(frame.to_csv(index=False), nl=False)
    else:
        click.echo(f"{len(frame)} runs -> {write_runs(frame, out)}")
