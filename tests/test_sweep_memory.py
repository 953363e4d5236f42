"""Sweeps ask the planner before anything starts: every cell's memory per process, against what
the executor offers; a cell that cannot fit is refused in one line with the largest setting that
does; sizes train at the shape of where they run."""
from __future__ import annotations

from pathlib import Path

import pytest

from mm1model.config import ConfigError
from scaling.sweep_plan import describe_plan, load_sweep_config, plan_sweep

REPO = Path(__file__).resolve().parent.parent


def test_cpu_sizes_default_to_the_demo_shape_and_paper_sizes_to_mm1s():
    cpu = plan_sweep(load_sweep_config(sizes=("100K", "300K"), points=3, steps=30, executor="debug"))
    assert (cpu.train["batch_size"], cpu.train["data"]["seq_len"]) == (8, 128)
    paper = plan_sweep(load_sweep_config(sizes=("9M",), points=3, steps=30, executor="slurm",
                                         slurm={"gpus_per_node": 8, "tasks_per_node": 8}, shape={"micro_batch_size": 2}))
    assert (paper.train["batch_size"], paper.train["data"]["seq_len"]) == (512, 4096)


def test_the_natural_first_command_at_mm1s_shape_runs_one_cell_at_a_time_or_is_refused():
    """The issue's first command at MM1's 512 x 4096 (the trainer's defaults): one 100K cell passed
    19 GB here and two at once swapped the 24 GB machine. The planner refuses it on 24 GB, names
    the micro-batch that fits, and on a larger machine caps the cells that run at once."""
    shape = {"batch_size": 512, "seq_len": 4096}
    with pytest.raises(ConfigError, match=r"^100K: a cell needs 36.6 GB per process \(batch 512 x 4096 tokens, "
                                          r"micro-batch 512\), 24.0 GB of memory here; the largest that fits is "
                                          r"--micro-batch-size 256 \(18.5 GB\)$"):
        plan_sweep(load_sweep_config(sizes=("100K", "300K"), points=3, steps=30, memory_gb=24.0, shape=shape))
    plan = plan_sweep(load_sweep_config(sizes=("100K", "300K"), points=3, steps=30, memory_gb=70.0, shape=shape))
    assert plan.max_parallel == 1 and [round(s.memory_gb, 1) for s in plan.sizes] == [36.6, 63.8]
    halves = plan_sweep(load_sweep_config(sizes=("100K", "300K"), points=3, steps=30, memory_gb=40.0,
                                          shape={**shape, "micro_batch_size": 128}))
    assert halves.max_parallel == 2 and max(s.memory_gb for s in halves.sizes) < 20


def test_mm1_sweep_file_fits_by_the_planner_and_its_old_micro_batch_is_refused():
    plan = plan_sweep(load_sweep_config(REPO / "sweeps" / "mm1.toml"))
    assert [round(s.memory_gb, 1) for s in plan.sizes] == [21.9, 25.5, 34.4, 49.2]
    assert all(s.memory_limit_gb == 72.0 for s in plan.sizes)
    assert "49.19 GB per process (of 72.0)" in describe_plan(plan)
    with pytest.raises(ConfigError, match=r"^9M: a cell needs 81.2 GB per process .* 72 GB usable per GPU; "
                                          r"the largest that fits is --micro-batch-size 4 \(41.7 GB\)$"):
        plan_sweep(load_sweep_config(REPO / "sweeps" / "mm1.toml", shape={"micro_batch_size": 8}))


def test_max_parallel_below_one_is_refused():
    for value in (0, -1):
        with pytest.raises(ConfigError, match=rf"^--max-parallel must be >= 1, got {value}$"):
            plan_sweep(load_sweep_config(sizes=("100K",), points=1, steps=2, max_parallel=value))
