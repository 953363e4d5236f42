"""`make check-demo`: the README's demo rows are rendered from fit.json and must all be present."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("check_demo_numbers", REPO / "scripts" / "check-demo-numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIT = {"coefficients": {"ln_params": -0.5564, "intercept": 1.0412}, "r2": 0.92912,
       "ci95": {"ln_params": [-1.0261, -0.0871], "intercept": [-4.761, 6.851]},
       "backtest": {"mean_abs_error_log_lr": 0.451, "max_ratio": 2.3128},
       "targets": [{"peak_lr": 1.52e-5}, {"peak_lr": 9.46e-6}, {"peak_lr": 4.21e-6}]}


def test_rows_are_rendered_as_the_readme_writes_them():
    rows = _script().demo_rows(FIT)
    assert rows[0] == "| slope of ln lr* on ln N | **-0.556**, 95% CI [-1.026, -0.087] | -0.4214 |"
    assert rows[1] == "| intercept | +1.04, 95% CI [-4.76, +6.85] | -0.5535 |"
    assert rows[3] == "| leave-one-size-out error in ln lr* | mean 0.45 (x1.57), worst x2.31 | - |"
    assert rows[4] == "| 3B / 7B / 30B peak LR | 1.5e-5 / 9.5e-6 / 4.2e-6 | 5.9e-5 / 4.1e-5 / 2.2e-5 |"


def test_a_drifted_readme_fails_and_says_which_row(tmp_path, capsys):
    script = _script()
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps(FIT))
    readme = tmp_path / "README.md"
    rows = script.demo_rows(FIT)
    readme.write_text("\n".join(rows) + "\n")
    assert script.main([str(fit), str(readme)]) == 0
    readme.write_text("\n".join(rows).replace("0.929", "0.921") + "\n")
    assert script.main([str(fit), str(readme)]) == 1
    out = capsys.readouterr()
    assert "MISMATCH | R^2 | 0.929 | - |" in out.out and "1 row(s)" in out.err
