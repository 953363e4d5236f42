"""`scaling launch`: a thin shell over :func:`scaling.launch.run_launch` (the fitted recipe and
its resource plan, then the trainer through submitit)."""
from __future__ import annotations

import click

from mm1model import paper
from scaling.launch import EXECUTORS, run_launch


def _given(**values) -> dict:
    """The flags the user set (click gives None for the others)."""
    return {k: v for k, v in values.items() if v is not None}


@click.command("launch")
@click.option("--size", required=True, help="Size to train (see `scaling sizes`).")
@click.option("--fit", "fit_path", type=click.Path(dir_okay=False), help="fit.json from `scaling fit`: its law gives the peak LR.")
@click.option("--reference", type=click.Choice(["mm1"]), help="Use MM1's published law instead of a fit.")
@click.option("--n-convention", type=click.Choice(["non_embedding", "total"]), default="non_embedding",
              show_default=True, help="How N is counted; a fit made with the other convention is refused.")
@click.option("--executor", type=click.Choice(EXECUTORS), default="slurm", show_default=True)
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
@click.option("--mfu", type=float, default=paper.TORCHTITAN_MFU, show_default=True, help="Model FLOPs utilisation assumed for time and cost.")
@click.option("--micro-batch-size", type=int, help="Sequences per rank per forward (default: the largest that fits).")
@click.option("--activation-checkpointing/--no-activation-checkpointing", default=None,
              help="Force activation checkpointing on or off (default: only when needed).")
@click.option("--steps", type=int, help=f"Optimizer steps [{paper.STEPS}; from --tokens and the batch law's batch].")
@click.option("--tokens", type=float, help="Token budget D of the run (e.g. 4.2e11); the steps follow from the batch.")
@click.option("--weight-decay-rule", type=click.Choice(["mm1", "timescale"]), default="mm1", show_default=True,
              help="mm1: lambda = 0.1 x peak LR; timescale: 1/lambda the same fraction of the run as in the sweep.")
@click.option("--peak-lr", type=float, help="Override the law's peak LR.")
@click.option("--warmup-steps", type=int, help=f"Linear warmup steps [{paper.WARMUP_STEPS}].")
@click.option("--decay-steps", type=int, help="Cosine decay length in steps [= --steps].")
@click.option("--min-lr-ratio", type=float, help=f"Final LR / peak LR [{paper.MIN_LR_RATIO:g}].")
@click.option("--weight-decay", type=float, help=f"Decoupled weight decay lambda [{paper.WEIGHT_DECAY_RATIO:g} x peak LR].")
@click.option("--batch-size", type=int, help=f"Global batch in sequences [the fit's batch law, else {paper.BATCH_SIZE}].")
@click.option("--seq-len", type=int, help=f"Tokens per sequence [{paper.SEQ_LEN}].")
@click.option("--max-images", type=int, help=f"Images per sequence at most [{paper.MAX_IMAGES}].")
@click.option("--grad-clip", type=float, help=f"Gradient clipping max norm [{paper.GRAD_CLIP:g}].")
@click.option("--z-loss", type=float, help=f"z-loss coefficient [{paper.Z_LOSS:g} at {', '.join(paper.Z_LOSS_SIZES)}, else 0].")
@click.option("--eval-interval", type=int, help="Steps between validation evaluations.")
@click.option("--checkpoint-interval", type=int, help="Steps between checkpoints.")
@click.option("--corpus", type=click.Path(file_okay=False), help="Prepared corpus directory (default: $MM1_CORPUS or the cache).")
@click.option("--init-lm", type=click.Path(file_okay=False), help="Start the LM from this Hugging Face Llama-format "
              "directory (config.json, safetensors, tokenizer.json); its tokenizer tokenizes the data.")
@click.option("--init-vit", type=click.Path(file_okay=False), help="Start the image encoder from this Hugging Face "
              "CLIPVisionModel / CLIPModel directory.")
@click.option("--freeze-lm", is_flag=True, default=None, help="Keep the LM's weights fixed (MM1 trains it).")
@click.option("--freeze-vit", is_flag=True, default=None, help="Keep the image encoder's weights fixed (MM1 trains it).")
@click.option("--out", type=click.Path(file_okay=False), help="Launch directory [launches/SIZE].")
@click.option("--dry-run", is_flag=True, help="Print the recipe and plan; submit nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
@click.option("--resubmit", is_flag=True, help="Submit again to a launch directory whose job died.")
@click.option("--wait", is_flag=True, help="Wait for the job and print its result.")
def launch_command(size, fit_path, reference, n_convention, executor, nodes, gpus_per_node, gpu, gpu_mem, device,
           cpus_per_task, partition, mem_per_node, time_limit, mfu, micro_batch_size, activation_checkpointing, steps, tokens,
           weight_decay_rule, peak_lr,
           warmup_steps, decay_steps, min_lr_ratio, weight_decay, batch_size, seq_len, max_images, grad_clip,
           z_loss, eval_interval, checkpoint_interval, corpus, init_lm, init_vit, freeze_lm, freeze_vit, out, dry_run,
           as_json, resubmit, wait) -> None:
    """Train SIZE with the LR the law predicts: print the plan, then submit (SLURM or local)."""
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
    result = run_launch(size, fit=fit_path, reference=reference, n_convention=n_convention, recipe=recipe,
                        plan=plan, train=train, executor=executor, out=out, dry_run=dry_run, as_json=as_json,
                        resubmit=resubmit, wait=wait, echo=click.echo, tokens=tokens,
                        weight_decay_rule=weight_decay_rule,
                        init=_given(lm=init_lm, vit=init_vit, freeze_lm=freeze_lm, freeze_vit=freeze_vit))
    summary = result.summary()
    if summary:
        click.echo(summary)
