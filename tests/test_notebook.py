"""The reproduction notebook runs top to bottom against a small real sweep, so it cannot rot."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from scaling.sweep import load_sweep_config, run_sweep

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "mm1_lr_scaling.ipynb"


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory, corpus) -> Path:
    """Three CPU sizes x three LRs, a dozen real training steps each (about 30 s on 2 cores)."""
    tmp = tmp_path_factory.mktemp("nb")
    toml = tmp / "small.toml"
    toml.write_text("\n".join([
        'sizes = ["100K", "300K", "1M"]', "points = 3", "span = 0.5", "steps = 12", "max_extend = 0",
        "[train]", "batch_size = 2", "eval_interval = 0", "eval_sequences = 4",
        "checkpoint_interval = 100", "log_interval = 1000",
        "[train.data]", "seq_len = 64", f"corpus = {json.dumps(corpus)}"]) + "\n")
    result = run_sweep(load_sweep_config(toml, out=str(tmp / "sweep")), progress=False, echo=lambda _: None)
    assert len(result.runs) == 9 and set(result.runs["status"]) == {"ok"}, result
    return tmp / "sweep"


def test_notebook_executes_against_a_small_sweep(small_sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("MM1_SWEEP_DIR", str(small_sweep))
    monkeypatch.setenv("MM1_NOTEBOOK_OUT", str(tmp_path / "out"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "ours: lr* = exp(" in outputs and "MM1:  lr* = exp(-0.4214 ln N -0.5535)" in outputs
    assert "mean |error| in ln lr:" in outputs
    for name in ("loss_vs_lr.png", "lr_law.png", "fit.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2
    # The notebook's plan is the 30B launch under the fit it just made.
    fit = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert fit["n_groups"] == 3 and fit["targets"][-1]["name"] == "30B"
