"""`scaling launch`: the recipe it resolves, the plan it prints, the input it refuses.

Everything here is a dry run or a refusal (nothing trains); the SLURM launch that trains is in
test_launch_slurm.py and the memory check in test_launch_memory.py.
"""
from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from mm1model.config import ConfigError
from scaling.cli import main
from scaling.fit import FitResult
from scaling.launch import prepare_launch
from scaling.plan import PlanConfig, head_bytes, make_plan, memory_estimate, parse_time
from mm1model.sizes import get_size

N_30B = 29_962_762_752  # the 30B entry's N (non-embedding), from mm1model.sizes
ISSUE_KEYS = ("size", "params", "peak_lr", "min_lr", "warmup_steps", "steps", "weight_decay", "z_loss",
              "batch_size", "seq_len", "nodes", "gpus_per_node", "memory_per_gpu_gb", "gpu_hours")


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def dry_json(*args: str) -> dict:
    result = run("launch", *args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_30b_mm1_dry_run_prints_recipe_and_plan():
    result = run("launch", "--size", "30B", "--reference", "mm1", "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "peak LR 2.21e-05 [paper]" in out
    assert "z-loss 0.0001 [paper]" in out
    assert "200,000 steps" in out
    assert "2 node(s) x 8 H100 = 16" in out
    assert "memory/GPU 71.7 GB" in out
    assert "94,915 GPU-hours" in out
    assert "ntasks_per_node=8" in out and "gpus_per_node=8" in out
    # 8 CPUs per GPU task: 7 pack the data, one drives the GPU
    assert "loader     7 data loader worker(s) per rank (data.num_workers), batches pinned" in out


def test_30b_dry_run_json_has_the_issue_keys_with_pinned_values():
    plan = dry_json("--size", "30B", "--reference", "mm1")
    assert set(ISSUE_KEYS) <= set(plan)
    assert plan["params"] == N_30B
    assert plan["peak_lr"] == pytest.approx(math.exp(-0.4214 * math.log(N_30B) - 0.5535), rel=1e-12)
    assert plan["peak_lr"] == pytest.approx(2.212e-5, rel=1e-3)
    assert plan["min_lr"] == pytest.approx(0.1 * plan["peak_lr"])
    assert plan["weight_decay"] == pytest.approx(0.1 * plan["peak_lr"])
    assert (plan["warmup_steps"], plan["steps"], plan["batch_size"], plan["seq_len"]) == (2000, 200_000, 512, 4096)
    assert plan["z_loss"] == 1e-4
    assert (plan["nodes"], plan["gpus_per_node"], plan["micro_batch_size"]) == (2, 8, 4)
    assert plan["activation_checkpointing"] is True
    assert plan["memory_per_gpu_gb"] == pytest.approx(71.7, abs=0.05)
    assert plan["gpu_hours"] == pytest.approx(94_915, rel=1e-4)
    assert plan["origins"]["peak_lr"] == "paper"
    assert plan["plan"]["slurm"] == {"job_name": "mm1-30B", "nodes": 2, "ntasks_per_node": 8, "cpus_per_task": 8,
                                     "time": 1440, "signal_delay_s": 507, "gpus_per_node": 8}
    assert plan["plan"]["loader_workers"] == 7
    assert prepare_launch("30B", reference="mm1").train.data.num_workers == 7  # the trainer gets the plan's
    assert prepare_launch("85M", reference="mm1", executor="local").train.data.num_workers == 0  # CPU: none


def test_flags_override_with_user_origin():
    plan = dry_json("--size", "7B", "--reference", "mm1", "--steps", "1000", "--warmup-steps", "100",
                    "--peak-lr", "1e-4", "--gpu", "H200")
    assert (plan["steps"], plan["warmup_steps"], plan["peak_lr"]) == (1000, 100, 1e-4)
    assert plan["origins"]["steps"] == plan["origins"]["peak_lr"] == "user"
    assert plan["origins"]["z_loss"] == "paper" and plan["z_loss"] == 0.0
    assert plan["plan"]["gpu_mem_gb"] == 141.0


def test_fit_file_law_is_used(tmp_path):
    law = FitResult(coefficients={"intercept": -1.0, "ln_params": -0.3})
    law.save(tmp_path / "fit.json")
    plan = dry_json("--size", "30B", "--fit", str(tmp_path / "fit.json"))
    assert plan["peak_lr"] == pytest.approx(math.exp(-1.0 - 0.3 * math.log(N_30B)), rel=1e-12)
    assert plan["origins"]["peak_lr"] == "fit"


def test_fit_file_with_another_n_convention_is_refused(tmp_path):
    FitResult(coefficients={"intercept": -1.0, "ln_params": -0.3}, n_convention="total").save(tmp_path / "fit.json")
    result = run("launch", "--size", "30B", "--fit", str(tmp_path / "fit.json"), "--dry-run")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "'total'" in result.stderr and "--n-convention total" in result.stderr
    ok = dry_json("--size", "30B", "--fit", str(tmp_path / "fit.json"), "--n-convention", "total")
    total = N_30B + 2 * 32000 * 6656  # N plus untied embedding and head
    assert ok["params"] == total
    assert ok["peak_lr"] == pytest.approx(math.exp(-1.0 - 0.3 * math.log(total)), rel=1e-12)


def test_size_with_no_fit_is_refused(tmp_path):
    result = run("launch", "--size", "30B", "--out", str(tmp_path / "l"))
    assert result.exit_code == 2
    assert result.stderr == "error: no fit for size 30B: give --fit FIT.json (from `scaling fit`) or --reference mm1\n"
    assert not (tmp_path / "l").exists()
    unknown = run("launch", "--size", "31B", "--reference", "mm1", "--dry-run")
    assert unknown.exit_code == 2 and "unknown size '31B'" in unknown.stderr


def test_slurm_executor_without_slurm_suggests_dry_run_or_local(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run("launch", "--size", "100K", "--reference", "mm1", "--out", str(tmp_path / "l"),
                 env={"PATH": str(empty)})
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "no SLURM" in result.stderr and "--dry-run" in result.stderr and "--executor local" in result.stderr
    assert not (tmp_path / "l").exists()


def test_plan_that_cannot_fit_is_refused_with_the_smallest_that_fits(tmp_path):
    result = run("launch", "--size", "30B", "--reference", "mm1", "--nodes", "1", "--gpus-per-node", "1",
                 "--out", str(tmp_path / "l"))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "30B does not fit on 1 node(s) x 1 H100" in result.stderr
    assert "the smallest that fits is --nodes 16 --gpus-per-node 1" in result.stderr
    assert not (tmp_path / "l").exists()
    dry = run("launch", "--size", "30B", "--reference", "mm1", "--nodes", "1", "--gpus-per-node", "1", "--dry-run")
    assert dry.exit_code == 2 and "REFUSED" in dry.stdout
    local = run("launch", "--size", "30B", "--reference", "mm1", "--executor", "local", "--out", str(tmp_path / "l"))
    assert local.exit_code == 2 and local.stderr.count("\n") == 1
    assert "more than this machine's memory" in local.stderr and not (tmp_path / "l").exists()


def test_bad_plan_flags_are_one_line_errors():
    for args, needle in ((["--gpu", "A40"], "unknown GPU 'A40'"), (["--time", "soon"], "HH:MM:SS"),
                         (["--nodes", "3"], "not divisible by the 24 GPUs")):
        result = run("launch", "--size", "7B", "--reference", "mm1", "--dry-run", *args)
        assert result.exit_code == 2, result.output
        assert needle in result.stderr and result.stderr.count("\n") == 1


def test_parse_time_minutes():
    assert parse_time("24:00:00") == 1440
    assert parse_time("1-02:30:00") == 26 * 60 + 30
    assert parse_time("00:10:01") == 11
    assert parse_time("90") == 90
    with pytest.raises(ConfigError):
        parse_time("0")


def test_plans_pinned():
    seven = make_plan(PlanConfig(size="7B"))
    assert (seven.nodes, seven.world_size, seven.micro_batch_size, seven.grad_accum_steps) == (1, 8, 8, 8)
    assert seven.activation_checkpointing and seven.memory_per_gpu_gb == pytest.approx(62.525, abs=1e-3)
    assert seven.flops_per_step == pytest.approx(1.2819e17, rel=1e-4)
    h200 = make_plan(PlanConfig(size="30B", gpu="H200"))
    assert (h200.nodes, h200.gpus_per_node, h200.micro_batch_size) == (1, 8, 4)
    small = make_plan(PlanConfig(size="1.2B", gpus_per_node=1))
    assert (small.world_size, small.micro_batch_size, small.activation_checkpointing) == (1, 1, False)
    assert small.memory["gathered"] == pytest.approx(2 * small.params_total / 1e9, abs=1e-3)  # autocast's bf16 copies


def test_memory_components_scale_as_documented():
    cfg = get_size("7B")
    one = memory_estimate(cfg, micro_batch_size=1, seq_len=4096, images_per_sequence=16, world_size=8)
    two = memory_estimate(cfg, micro_batch_size=2, seq_len=4096, images_per_sequence=16, world_size=8)
    wide = memory_estimate(cfg, micro_batch_size=1, seq_len=4096, images_per_sequence=16, world_size=16)
    # everything but the head's fixed buffers (its gradient accumulator, one chunk of logits) is per position
    fixed = head_bytes(cfg, True)[1]
    assert two.activations - fixed == pytest.approx(2 * (one.activations - fixed))
    assert wide.optimizer == pytest.approx(one.optimizer / 2) and wide.activations == one.activations
    ac = memory_estimate(cfg, micro_batch_size=1, seq_len=4096, images_per_sequence=16, world_size=8,
                         activation_checkpointing=True)
    assert ac.activations < one.activations / 3


def test_launch_directory_of_another_launch_is_refused(tmp_path):
    from mm1model import records
    from mm1model.config import to_dict
    from scaling.launch import launch, launch_status, prepare_launch

    def prepared(steps: int):
        return prepare_launch("100K", reference="mm1", executor="local", out=tmp_path / "l",
                              recipe={"steps": steps, "batch_size": 4, "seq_len": 128, "warmup_steps": 2})

    records.write_json(tmp_path / "l" / "config.json", to_dict(prepared(10).train))
    with pytest.raises(ConfigError, match="holds another launch"):
        launch(prepared(20))
    assert sorted(p.name for p in (tmp_path / "l").iterdir()) == ["config.json"]
    with pytest.raises(ConfigError, match="not a launch directory"):
        launch_status(tmp_path / "l")
