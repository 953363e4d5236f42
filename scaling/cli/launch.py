"""`scaling launch`: the fitted recipe and its resource plan, then the trainer through submitit."""
from __future__ import annotations

import click

from mm1model import records
from mm1model.config import ConfigError
from scaling.cli import main


def _given(**values) -> dict:
    """The flags the user set (click gives None for the others)."""
    return {k: v for k, v in values.items() if v is not None}


@main.command()
@click.option("--size", required=True, help="Size to train (see `scaling sizes`).")
@click.option("--fit", "fit_path", type=click.Path(dir_okay=False), help="fit.json from `scaling fit`: its law gives the peak LR.")
@click.option("--reference", type=click.Choice(["mm1"]), help="Use MM1's published law instead of a fit.")
@click.option("--n-convention", type=click.Choice(["non_embedding", "total"]), default="non_embedding",
              show_default=True, help="How N is counted; a fit made with the other convention is refused.")
@click.option("--executor", type=click.Choice(["slurm", "local"]), default="slurm", show_default=True)
@click.option("--nodes", type=int, help="Nodes (default: the fewest that fit).")
@click.option("--gpus-per-node", type=int, help="GPUs (tasks) per node [8; 1 with --executor local].")
@click.option("--gpu", default="H100", show_default=True, help="GPU model: H100 or H200 (or give --gpu-mem).")
@click.option("--gpu-mem", type=float, help="Memory per GPU in GB (for GPUs not in the table).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), help="Train on GPUs or CPUs [cuda; cpu with --executor local].")
@click.option("--cpus-per-task", type=int, help="CPUs per task [8 on GPUs, 1 on CPUs].")
@click.option("--partition", help="SLURM partition.")
@click.option("--mem-per-node", type=float, help="SLURM memory per node in GB (default: the cluster's).")
@click.option("--time", "time_limit", default="24:00:00", show_default=True,
              help="SLURM time limit per job; a job that reaches it is requeued and resumes.")
@click.option("--mfu", type=float, default=0.35, show_default=True, help="Model FLOPs utilisation assumed for time and cost.")
@click.option("--micro-batch-size", type=int, help="Sequences per rank per forward (default: the largest that fits).")
@click.option("--activation-checkpointing/--no-activation-checkpointing", default=None,
              help="Force activation checkpointing on or off (default: only when needed).")
@click.option("--steps", type=int, help="Optimizer steps [200000].")
@click.option("--peak-lr", type=float, help="Override the law's peak LR.")
@click.option("--warmup-steps", type=int, help="Linear warmup steps [2000].")
@click.option("--decay-steps", type=int, help="Cosine decay length in steps [= --steps].")
@click.option("--min-lr-ratio", type=float, help="Final LR / peak LR [0.1].")
@click.option("--weight-decay", type=float, help="Decoupled weight decay lambda [0.1 x peak LR].")
@click.option("--batch-size", type=int, help="Global batch in sequences [512].")
@click.option("--seq-len", type=int, help="Tokens per sequence [4096].")
@click.option("--max-images", type=int, help="Images per sequence at most [16].")
@click.option("--grad-clip", type=float, help="Gradient clipping max norm [1.0].")
@click.option("--z-loss", type=float, help="z-loss coefficient [1e-4 at 30B, else 0].")
@click.option("--eval-interval", type=int, help="Steps between validation evaluations.")
@click.option("--checkpoint-interval", type=int, help="Steps between checkpoints.")
@click.option("--corpus", type=click.Path(file_okay=False), help="Prepared corpus directory (default: $MM1_CORPUS or the cache).")
@click.option("--out", type=click.Path(file_okay=False), help="Launch directory [launches/SIZE].")
@click.option("--dry-run", is_flag=True, help="Print the recipe and plan; submit nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
@click.option("--resubmit", is_flag=True, help="Submit again to a launch directory whose job died.")
@click.option("--wait", is_flag=True, help="Wait for the job and print its result.")
def launch(size, fit_path, reference, n_convention, executor, nodes, gpus_per_node, gpu, gpu_mem, device,
           cpus_per_task, partition, mem_per_node, time_limit, mfu, micro_batch_size, activation_checkpointing, steps, peak_lr,
           warmup_steps, decay_steps, min_lr_ratio, weight_decay, batch_size, seq_len, max_images, grad_clip,
           z_loss, eval_interval, checkpoint_interval, corpus, out, dry_run, as_json, resubmit, wait) -> None:
    """Train SIZE with the LR the law predicts: print the plan, then submit (SLURM or local)."""
    from scaling.launch import format_status, launch_status, prepare_launch
    from scaling.launch import launch as submit
    from scaling.plan import format_plan

    if as_json and not dry_run:
        raise click.UsageError("--json goes with --dry-run")
    recipe = _given(steps=steps, peak_lr=peak_lr, warmup_steps=warmup_steps, decay_steps=decay_steps,
                               min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, batch_size=batch_size,
                               seq_len=seq_len, max_images=max_images, grad_clip=grad_clip, z_loss=z_loss)
    plan = _given(nodes=nodes, gpus_per_node=gpus_per_node, gpu=gpu, gpu_mem_gb=gpu_mem, device=device,
                             cpus_per_task=cpus_per_task, partition=partition, mem_per_node_gb=mem_per_node,
                             time=time_limit, mfu=mfu,
                             micro_batch_size=micro_batch_size, activation_checkpointing=activation_checkpointing)
    train = _given(eval_interval=eval_interval, checkpoint_interval=checkpoint_interval)
    if corpus:
        train["data"] = {"corpus": corpus}
    prepared = prepare_launch(size, fit=fit_path, reference=reference, n_convention=n_convention, recipe=recipe,
                              plan=plan, train=train, executor=executor, out=out)
    if as_json:
        click.echo(records.dumps(prepared.summary()))
    else:
        click.echo(_describe(prepared))
        click.echo(format_plan(prepared.plan))
    if dry_run:
        if not prepared.plan.fits:
            raise ConfigError(prepared.plan.refusal)
        return
    job = submit(prepared, resubmit=resubmit)
    click.echo(f"submitted job {job.job_id} ({executor}); records in {prepared.out}; "
               f"follow with `scaling status {prepared.out}`")
    if wait:
        job.results()
        click.echo(format_status(launch_status(prepared.out)))


def _describe(prepared) -> str:
    r = prepared.recipe
    o = r.origins
    pi = f" (95% PI {r.peak_lr_pi95[0]:.2e}-{r.peak_lr_pi95[1]:.2e})" if r.peak_lr_pi95 else ""
    rows = [
        f"recipe     {r.size}: peak LR {r.peak_lr:.3g} [{o['peak_lr']}]{pi} at N = {r.params:,.0f} ({r.n_convention})",
        f"schedule   warmup {r.warmup_steps:,} [{o['warmup_steps']}], cosine to min LR {r.min_lr:.3g} "
        f"[{o['min_lr']}] over {r.decay_steps:,} steps [{o['decay_steps']}], {r.steps:,} steps [{o['steps']}]",
        f"optimizer  AdamW, decoupled weight decay {r.weight_decay:.3g} [{o['weight_decay']}], grad clip "
        f"{r.grad_clip:g} [{o['grad_clip']}], z-loss {r.z_loss:g} [{o['z_loss']}]",
        f"data       batch {r.batch_size} [{o['batch_size']}] x {r.seq_len} tokens [{o['seq_len']}], "
        f"up to {r.max_images} images [{o['max_images']}] per sequence",
    ]
    return "\n".join(rows)

