"""Sweep axes beyond the LR: batch sizes and horizons per size, WSD trunks and branches.

Planning is pinned without training (names, steps, warmups, branch points, the dry run's FLOPs,
bad input, collinear designs, old sweep directories); one real WSD sweep (w32, 4 x 32 tokens,
1 thread) checks that a branch started from its trunk's checkpoint ends exactly where a straight
run to its horizon does, that it waited for its trunk, and that a trunk diverged before a branch
point settles that branch without training.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from mm1model import records
from mm1model.checkpoint import step_dir
from mm1model.config import ConfigError
from scaling import cells
from scaling.cli import main
from scaling.runs import RUN_COLUMNS, collect_runs, format_status, size_status
from scaling.sweep import _settle_branch, _size_extensions, meta_cells, prepare_sweep_dir, run_sweep
from scaling.sweep_plan import (CurvePlan, SweepConfig, collinearity_warnings, describe_plan, load_sweep_config,
                                plan_sweep, size_cells)

ROOT = Path(__file__).resolve().parents[1]
WSD = {"schedule": "wsd"}


def tiny(corpus: str | None = None, **extra) -> dict:
    data = {"seq_len": 32, **({"corpus": corpus} if corpus else {})}
    return {"batch_size": 4, "data": data, "eval_interval": 0, "eval_sequences": 4, "checkpoint_interval": 0,
            "log_interval": 1000, **extra}


# ------------------------------------------------------------------------------------ names
@pytest.mark.parametrize("args, name", [
    ((3.16e-4, 0), "lr=3.16e-04_seed=0"),
    ((3.16e-4, 1, 16), "lr=3.16e-04_bs=16_seed=1"),
    ((3.16e-4, 0, None, 600), "lr=3.16e-04_steps=600_seed=0"),
    ((3.16e-4, 2, 16, 600), "lr=3.16e-04_bs=16_steps=600_seed=2"),
])
def test_cell_names_carry_the_axes_a_sweep_varies_and_parse_back(args, name):
    assert cells.cell_name(*args) == name
    parsed = cells.parse_cell_name(name)
    assert (parsed.lr, parsed.seed, parsed.batch_size, parsed.steps) == (args + (None, None))[:4]
    assert cells.parse_cell_name("lr=3.16e-04_steps=600_bs=16_seed=0") is None  # one order only
    keys = sorted(cells.parse_cell_name(n).sort_key for n in
                  ["lr=1.00e-03_bs=16_steps=75_seed=0", "lr=1.00e-03_bs=8_steps=600_seed=0",
                   "lr=1.00e-03_bs=8_steps=150_seed=0"])
    assert keys == [(1e-3, 8, 150, 0), (1e-3, 8, 600, 0), (1e-3, 16, 75, 0)]


# ------------------------------------------------------------------------------------ planning
def test_a_plain_sweep_keeps_its_names_and_one_curve_per_size():
    plan = plan_sweep(load_sweep_config(ROOT / "sweeps" / "cpu.toml"))
    assert plan.axes == () and plan.warnings == ()
    assert [c.name for c in plan.cells()[:2]] == ["lr=1.97e-03_seed=0", "lr=1.97e-03_seed=1"]
    assert plan.sizes[0].curves == (CurvePlan(batch_size=8, horizons=(150,), warmup_steps=15, branch_steps=(None,)),)
    assert "total: 40 cells, 6000 steps, 6.14e+06 tokens, 4.12e+13 FLOPs" in describe_plan(plan)


def test_batches_and_horizons_make_cells_with_their_own_steps_and_a_shared_warmup():
    plan = plan_sweep(load_sweep_config(None, sizes=("w32", "w64"), lrs=(1e-3, 2e-3), horizons=(600, 150, 300),
                                        batch_sizes_by_size={"w32": [16, 8]}, train=tiny(optimizer=WSD)))
    assert plan.axes == ("bs", "steps") and plan.n_cells == 2 * 6 + 2 * 3
    w32 = [c for c in plan.cells() if c.size == "w32" and c.lr == 1e-3]
    assert [(c.name, c.role, c.branch_step, c.save_steps) for c in w32] == [
        ("lr=1.00e-03_bs=8_steps=150_seed=0", "branch", 120, ()),
        ("lr=1.00e-03_bs=8_steps=300_seed=0", "branch", 240, ()),
        ("lr=1.00e-03_bs=8_steps=600_seed=0", "trunk", None, (120, 240)),
        ("lr=1.00e-03_bs=16_steps=150_seed=0", "branch", 120, ()),
        ("lr=1.00e-03_bs=16_steps=300_seed=0", "branch", 240, ()),
        ("lr=1.00e-03_bs=16_steps=600_seed=0", "trunk", None, (120, 240))]
    assert {c.trunk for c in w32 if c.trunk} == {"lr=1.00e-03_bs=8_steps=600_seed=0", "lr=1.00e-03_bs=16_steps=600_seed=0"}
    trains = [plan.cell_train(c) for c in w32[:3]]
    # warmup: 10% of the shortest horizon, the same on every horizon of the (size, batch); each decays to its own end
    assert [(t["batch_size"], t["steps"], t["optimizer"]["warmup_steps"], t["optimizer"]["decay_steps"]) for t in trains] \
        == [(8, 150, 15, 150), (8, 300, 15, 300), (8, 600, 15, 600)]
    assert trains[2]["save_steps"] == [120, 240] and "save_steps" not in trains[0] and "init_from" not in trains[0]
    assert w32[0].record() == {"trunk": "lr=1.00e-03_bs=8_steps=600_seed=0", "branch_step": 120}
    text = describe_plan(plan)
    # a branch is priced at its cooldown: 30 of its 150 steps, 30 x 8 x 32 tokens
    assert ("        batch    8 x    150 steps (D 3.84e+04 tokens, warmup 15, branch from step 120): 2 cells x 30 "
            "steps = 7.68e+03 tokens, 7.46e+09 FLOPs each") in text
    assert ("        batch   16 x    600 steps (D 3.07e+05 tokens, warmup 15, trunk): 2 cells x 600 steps = "
            "3.07e+05 tokens, 2.98e+11 FLOPs each") in text
    # per LR and batch 30 + 60 + 600 steps, not 150 + 300 + 600
    assert "        w32 in all: 12 cells, 2760 steps, 1.06e+06 tokens, 1.03e+12 FLOPs" in text
    assert "total: 18 cells, 4140 steps, 1.24e+06 tokens, 1.43e+12 FLOPs (WSD branches counted at their cooldown)" in text
    assert "  cell w32/lr=1.00e-03_bs=8_steps=150_seed=0  (branch of lr=1.00e-03_bs=8_steps=600_seed=0 from step 120)" in text
    assert "  cell w64/lr=2.00e-03_steps=600_seed=0" not in text  # every name carries every axis the sweep varies
    assert "  cell w64/lr=2.00e-03_bs=4_steps=600_seed=0  (trunk, saves steps 120, 240)" in text


def test_token_horizons_become_steps_per_batch_and_cosine_has_no_branches():
    plan = plan_sweep(load_sweep_config(None, sizes=("w32",), lrs=(1e-3,), horizons=(10_000, 40_000),
                                        horizon_unit="tokens", batch_sizes=(4, 8), train=tiny()))
    assert [(c.batch_size, c.horizons, c.warmup_steps) for c in plan.sizes[0].curves] == [(4, (79, 313), 8),
                                                                                          (8, (40, 157), 4)]
    assert {c.role for c in plan.cells()} == {"straight"}  # ceil(10000 / (4 x 32)) = 79, ...


def test_flags_replace_the_files_axes(tmp_path):
    toml = tmp_path / "h.toml"
    toml.write_text('sizes = ["w32"]\nlrs = [1e-3]\nhorizons = [20, 40]\nbatch_sizes = [4, 8]\n'
                    '[horizons_by_size]\n"w32" = [10, 20, 40]\n[train]\nbatch_size = 4\n[train.data]\nseq_len = 32\n')
    assert plan_sweep(load_sweep_config(toml)).sizes[0].curves[0].horizons == (10, 20, 40)
    assert plan_sweep(load_sweep_config(toml, steps=30)).axes == ("bs",)  # --steps: one horizon
    assert plan_sweep(load_sweep_config(toml, horizons=(5, 30))).sizes[0].curves[0].horizons == (5, 30)
    assert plan_sweep(load_sweep_config(toml, shape={"batch_size": 8})).axes == ("steps",)  # --batch-size: one batch
    res = CliRunner().invoke(main, ["sweep", "--config", str(toml), "--batch-sizes", "2,4", "--horizons", "30,60",
                                    "--dry-run"])
    assert res.exit_code == 0 and res.output.count("  cell ") == 4 and "lr=1.00e-03_bs=2_steps=60_seed=0" in res.output


BAD_FILES = {"WSD": 'sizes = ["w32"]\n[train.optimizer]\nschedule = "wsd"\nwarmup_steps = 10\n',
             "BOTH": 'sizes = ["w32"]\nsteps = 20\nhorizons = [20, 40]\n',
             "DECAY": 'sizes = ["w32"]\nhorizons = [20, 40]\n[train.optimizer]\ndecay_steps = 40\n',
             "UNKNOWN_SIZE": 'sizes = ["w32"]\n[horizons_by_size]\n"w64" = [20]\n'}


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "4,6", "--micro-batch-size", "4"],
     "w32: batch size 6 cannot be split into micro-batches of 4; use batch sizes that are multiples of 4"),
    (["--horizons", "20,40", "--horizon-unit", "seconds"], "'seconds' is not one of 'steps', 'tokens'"),
    (["--config", "WSD", "--horizons", "8,40"],
     "w32 batch 8: the 8-step horizon cools down from step 6, before its warmup of 10 steps ends"),
    (["--horizons", "100,200", "--horizon-unit", "tokens"],
     "horizons: 100 and 200 tokens both give 1 steps at batch 8 x 128 tokens; drop one"),
    (["--horizons", "20,x"], "--horizons takes comma-separated integers, got '20,x'"),
    (["--config", "BOTH"], "give horizons (or horizons_by_size) or steps/tokens, not both"),
    (["--config", "DECAY"], "[train.optimizer] decay_steps cannot be set in a sweep of several horizons"),
    (["--config", "UNKNOWN_SIZE"], "horizons_by_size names sizes not in the sweep: w64"),
])
def test_bad_axes_are_one_line_and_write_nothing(tmp_path, args, message):
    for key, text in BAD_FILES.items():
        (tmp_path / f"{key}.toml").write_text(text)
    args = [str(tmp_path / f"{a}.toml") if a in BAD_FILES else a for a in args]
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["sweep", "--sizes", "w32", "--lrs", "1e-3", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert message in lines[-1], res.output
    if "is not one of" not in message:  # click's own usage error for a --horizon-unit it does not offer
        assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert not out.exists()


def test_an_unknown_horizon_unit_in_a_file_is_one_config_error():
    with pytest.raises(ConfigError, match=r"^unknown horizon_unit 'seconds'; valid: steps, tokens$"):
        plan_sweep(load_sweep_config(None, sizes=("w32",), horizons=(20,), horizon_unit="seconds"))


def test_designs_whose_ln_n_and_ln_d_are_collinear_are_flagged():
    ladder = plan_sweep(load_sweep_config(None, sizes=("w32", "w64", "w128"), lrs=(1e-3,), train=tiny(),
                                          horizons_by_size={"w32": [100], "w64": [200], "w128": [400]}))
    [line] = ladder.warnings
    assert line.startswith("each size trains at one horizon and the horizons differ across sizes")
    assert f"warning: {line}" in describe_plan(ladder)
    # horizons that grow with N except for one extra point: still |corr| > 0.95
    tilted = [("a", 1e4, 1e5), ("a", 1e4, 1.5e5), ("b", 1e5, 1e6), ("c", 1e6, 1e7)]
    [corr] = collinearity_warnings(tilted)
    assert corr.startswith("ln N and ln D are nearly collinear over the cells (corr +0.997, |corr| > 0.95)")
    # every size at every horizon, one size, or one horizon: nothing to flag
    crossed = plan_sweep(load_sweep_config(None, sizes=("w32", "w64"), lrs=(1e-3,), horizons=(100, 200), train=tiny()))
    assert crossed.warnings == () and collinearity_warnings([("a", 1e4, 1e5), ("a", 1e4, 2e5)]) == ()
    assert plan_sweep(load_sweep_config(None, sizes=("w32", "w64"), lrs=(1e-3,), steps=50, train=tiny())).warnings == ()


def test_the_shipped_horizon_sweeps_plan():
    cpu = plan_sweep(load_sweep_config(ROOT / "sweeps" / "cpu-horizons.toml"))
    assert cpu.axes == ("bs", "steps") and cpu.warnings == ()
    assert {c.role for c in cpu.cells()} == {"trunk", "branch"} and cpu.n_cells == 96
    # by hand: 65,536 tokens / (4 x 128) = 128 steps, warmup 10% of that = 13, cooldown starts
    # 128 - round(0.2 x 128) = 102 and 256 - round(51.2) = 205
    assert [(c.batch_size, c.horizons, c.warmup_steps, c.branch_steps) for c in cpu.sizes[0].curves] == [
        (4, (128, 256, 512), 13, (102, 205, None)), (8, (64, 128, 256), 6, (51, 102, None)),
        (16, (32, 64, 128), 3, (26, 51, None))]
    assert [len(sp.curves) for sp in cpu.sizes] == [3, 3, 1, 1]
    assert "total: 96 cells, 10608 steps, 9.65e+06 tokens, 4.08e+13 FLOPs" in describe_plan(cpu)
    mm1 = plan_sweep(load_sweep_config(ROOT / "sweeps" / "mm1-horizons.toml"))
    assert mm1.axes == ("bs", "steps") and mm1.warnings == ()
    assert {(c.batch_size, c.horizons) for sp in mm1.sizes for c in sp.curves} == {(512, (2500, 5000, 10000)),
                                                                           (256, (5000, 10000, 20000))}
    assert mm1.n_cells == 126 and "total: 126 cells, 644000 steps, 1.01e+12 tokens, 3.1e+21 FLOPs" in describe_plan(mm1)


# ------------------------------------------------------------------------------------ the sweep dir
def test_an_old_sweep_directory_resumes_with_its_names(tmp_path, corpus):
    config = SweepConfig(sizes=("100K",), lrs=(1e-3, 2e-3), steps=6, executor="debug", max_extend=0,
                         out=str(tmp_path / "old"), train=tiny(corpus))
    plan = plan_sweep(config)
    meta = prepare_sweep_dir(plan)
    # what a sweep.json written before the axes holds: no axes, no curves, no batch_sizes
    for entry in meta["sizes"].values():
        entry.pop("curves"), entry.pop("batch_sizes")
    meta.pop("axes")
    records.write_json(plan.out / "sweep.json", meta)
    assert [c.name for c in meta_cells(meta)] == ["lr=1.00e-03_seed=0", "lr=2.00e-03_seed=0"]
    assert meta_cells(meta)[0].warmup_steps == 1 and meta_cells(meta)[0].steps == 6
    prepare_sweep_dir(plan)  # accepted: the same cells
    decayed = SweepConfig(**{**config.__dict__, "train": tiny(corpus, optimizer={"decay_steps": 6})})
    prepare_sweep_dir(plan_sweep(decayed))  # a decay set to the one horizon is the default, as before
    assert sorted(p.name for p in (plan.out / "100K").iterdir()) == ["lr=1.00e-03_seed=0", "lr=2.00e-03_seed=0"]
    for changed, message in [(dict(steps=None, horizons=(6, 12)), "whose cell names carry lr and seed only, this "
                                                                  "one's steps"),
                             (dict(steps=8), r"holds 100K at other batches or horizons \(batch 4 x 6 steps, warmup 1; "
                                             r"this plan batch 4 x 8 steps, warmup 1\)")]:
        with pytest.raises(ConfigError, match=message):
            prepare_sweep_dir(plan_sweep(SweepConfig(**{**config.__dict__, **changed})))
    # a rerun of an axes sweep may not move the horizons under its cells (the warmup would change)
    axes = SweepConfig(**{**config.__dict__, "steps": None, "horizons": (6, 12), "out": str(tmp_path / "new")})
    prepare_sweep_dir(plan_sweep(axes))
    with pytest.raises(ConfigError, match="holds 100K at other batches or horizons"):
        prepare_sweep_dir(plan_sweep(SweepConfig(**{**axes.__dict__, "horizons": (4, 12)})))


def fake_state(path: Path, status: str, loss: float | None = None) -> cells.CellState:
    named = cells.parse_cell_name(path.name)
    return cells.CellState(path=path, size=path.parent.name, lr=named.lr, seed=named.seed, status=status, attempts=1,
                           failures=0, loss=loss, error=None, batch_size=named.batch_size, steps=named.steps)


def test_edge_extension_judges_each_curve_and_adds_to_the_sizes_grid(tmp_path):
    curves = (CurvePlan(batch_size=8, horizons=(100, 200), warmup_steps=10, branch_steps=(None, None)),)
    specs = {tmp_path / "w32" / c.name: c for c in size_cells("w32", (1e-3, 2e-3, 4e-3), 1, curves, ("steps",))}
    meta = {"sizes": {"w32": {"lrs": [1e-3, 2e-3, 4e-3], "extended": []}}}
    # the short horizon prefers the largest LR (upper edge), the long one an inner LR
    losses = {(100, 1e-3): 5.0, (100, 2e-3): 4.0, (100, 4e-3): 3.0, (200, 1e-3): 4.0, (200, 2e-3): 2.0, (200, 4e-3): 3.0}
    states = {p: fake_state(p, "ok", losses[(c.steps, c.lr)]) for p, c in specs.items()}
    new, why = _size_extensions(meta, "w32", specs, states, max_extend=2)
    assert new == [8e-3] and why == ["w32 batch 8 x 100 steps: best lr 4.00e-03 is at the upper edge of its grid; "
                                     "adding lr 8.00e-03 (1/2)"]
    # the longer horizon turns to the lower edge: both edges grow at once
    losses[(200, 1e-3)] = 1.0
    states = {p: fake_state(p, "ok", losses[(c.steps, c.lr)]) for p, c in specs.items()}
    assert _size_extensions(meta, "w32", specs, states, max_extend=2)[0] == [8e-3, 5e-4]


def test_a_branch_waits_for_its_trunk_and_settles_from_it(tmp_path):
    curves = (CurvePlan(batch_size=4, horizons=(20, 40), warmup_steps=2, branch_steps=(16, None)),)
    branch, trunk = size_cells("w32", (1e-3,), 1, curves, ("steps",))
    cell_dir, trunk_dir = tmp_path / "w32" / branch.name, tmp_path / "w32" / trunk.name
    train = {"batch_size": 4, "steps": 20, "data": {"seq_len": 32}}
    cells.write_cell(cell_dir, "w32", 1e-3, 0, train, **branch.record())
    cells.write_cell(trunk_dir, "w32", 1e-3, 0, {**train, "steps": 40})
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "job_id": None}
    # diverged after the branch point: the branch runs from the checkpoint at step 16, once it exists
    records.write_json(trunk_dir / "result.json", {"status": "diverged", "diverged_at_step": 17, "seq_len": 32})
    assert "checkpoint" in _settle_branch(cell_dir, branch, owner) and "is missing" in _settle_branch(cell_dir, branch, owner)
    step_dir(trunk_dir, 16).mkdir(parents=True)
    assert _settle_branch(cell_dir, branch, owner) is None and not (cell_dir / "result.json").exists()
    # diverged at the branch point: final as diverged, never trained
    records.write_json(trunk_dir / "result.json", {"status": "diverged", "diverged_at_step": 16, "seq_len": 32,
                                                   "params": 26784})
    assert _settle_branch(cell_dir, branch, owner) is None
    result = records.read_json(cell_dir / "result.json")
    assert (result["status"], result["diverged_at_step"], result["steps"], result["tokens"]) == ("diverged", 16, 16, 2048)
    assert records.read_json(cell_dir / "config.json")["init_from"] == str(step_dir(trunk_dir, 16))
    assert cells.cell_state(cell_dir).status == "diverged" and not cells.lock_owner(cell_dir)


# ------------------------------------------------------------------------------------ a real WSD sweep
def test_a_wsd_branch_equals_a_straight_run_and_runs_after_its_trunk(tmp_path, corpus):
    train = tiny(corpus, optimizer=WSD)
    said: list[str] = []
    wsd = run_sweep(SweepConfig(sizes=("w32",), lrs=(3e-3, 30.0), horizons=(40, 20), executor="local", max_extend=0,
                                out=str(tmp_path / "wsd"), train=train), progress=False, echo=said.append)
    straight = run_sweep(SweepConfig(sizes=("w32",), lrs=(3e-3, 30.0), steps=20, executor="debug", max_extend=0,
                                     out=str(tmp_path / "straight"), train=train), progress=False, echo=lambda _: None)
    runs, ref = collect_runs(wsd.dir).set_index("path"), collect_runs(straight.dir)
    assert list(collect_runs(wsd.dir).columns) == list(RUN_COLUMNS)
    sw = wsd.dir / "w32"
    branch, trunk = sw / "lr=3.00e-03_steps=20_seed=0", sw / "lr=3.00e-03_steps=40_seed=0"
    row = runs.loc[str(branch.resolve())]
    # the branch trained steps 16-20 from its trunk's checkpoint and ends bit for bit where the straight run does
    assert row.loss == ref.set_index("lr").loc[3e-3].loss
    assert (row.steps, row.tokens, row.batch_size, row.seq_len, row.schedule) == (20, 20 * 4 * 32, 4, 32, "wsd")
    assert records.read_json(branch / "config.json")["init_from"] == str(step_dir(trunk, 16))
    [start] = [e for e in records.read_jsonl(branch / "events.jsonl") if e["event"] == "start"]
    assert start["step"] == 16
    # the branch starts once the trunk is final (its result.json is on disk); the trunk's job
    # records its own finished_at a moment after that, so that is not the bound
    assert cells.read_attempts(branch)[0]["started_at"] >= (trunk / "result.json").stat().st_mtime
    # every branch final: the trunk's checkpoints, its save_steps' included, are gone
    assert not (trunk / "checkpoints").exists()
    # the diverging LR: its trunk diverged before step 16, so its branch is diverged without training
    lost = sw / "lr=3.00e+01_steps=20_seed=0"
    result = records.read_json(lost / "result.json")
    assert result["status"] == "diverged" and result["diverged_at_step"] == \
        records.read_json(sw / "lr=3.00e+01_steps=40_seed=0" / "result.json")["diverged_at_step"] <= 16
    assert not (lost / "events.jsonl").exists() and not (lost / "attempts.json").exists()
    assert runs.loc[str(lost.resolve())].steps == 20 and ref.set_index("lr").loc[30.0].status == "diverged"
    assert "[4/4] w32 lr=3.00e-03 steps=20 seed=0: ok loss" in "\n".join(said)
    # per curve in `scaling status`
    table = format_status(size_status([cells.cell_state(p) for p in sorted(sw.iterdir())]))
    assert table.splitlines()[0].startswith("  size batch  steps  done")
    assert table.splitlines()[1].startswith("   w32     -     20     1    0    0    1    0     2   3.00e-03")
    # a rerun starts nothing
    run_sweep(SweepConfig(sizes=("w32",), lrs=(3e-3, 30.0), horizons=(40, 20), executor="debug", max_extend=0,
                          out=str(tmp_path / "wsd"), train=train), progress=False, echo=lambda _: None)
    assert len(cells.read_attempts(branch)) == 1 and json.loads((branch / "result.json").read_text())["status"] == "ok"


@pytest.mark.slurm
def test_on_slurm_a_branch_is_submitted_after_its_trunk_and_equals_a_straight_run(slurm_cluster, corpus, tmp_path):
    train = tiny(corpus, optimizer=WSD)
    wsd = run_sweep(SweepConfig(sizes=("w32",), lrs=(3e-3,), horizons=(40, 20), executor="slurm", max_parallel=2,
                                max_extend=0, out=str(tmp_path / "slurm"), train=train), progress=False,
                    echo=lambda _: None)
    straight = run_sweep(SweepConfig(sizes=("w32",), lrs=(3e-3,), steps=20, executor="debug", max_extend=0,
                                     out=str(tmp_path / "straight"), train=train), progress=False, echo=lambda _: None)
    branch, trunk = wsd.dir / "w32" / "lr=3.00e-03_steps=20_seed=0", wsd.dir / "w32" / "lr=3.00e-03_steps=40_seed=0"
    [b], [t] = cells.read_attempts(branch), cells.read_attempts(trunk)
    # two SLURM jobs, the branch's submitted once the trunk's had ended
    assert b["job_id"] != t["job_id"] and b["started_at"] >= t["finished_at"]
    runs = collect_runs(wsd.dir).set_index("steps")
    assert runs.loc[20].loss == collect_runs(straight.dir).loss.iloc[0] and runs.loc[40].status == "ok"
