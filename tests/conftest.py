"""Shared fixtures.

``slurm_cluster``: the single-node SLURM cluster started by ``scripts/slurm-start.sh``. Tests
marked ``slurm`` take it; they skip (saying why) when no cluster answers, except under
``CI=true``, where a missing cluster is a failure: CI must exercise the real scheduler.

``corpus``: the bundled corpus (`make test` prepares it), or a synthetic one where it is missing.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """A live cluster: its config file, default partition and CPUs on its one node."""

    conf: Path
    partition: str
    cpus: int


def _load_env_sh(prefix: Path) -> None:
    """Apply ``$SLURM_PREFIX/env.sh`` (what ``make test`` sources) when pytest runs bare."""
    env_sh = prefix / "env.sh"
    if os.environ.get("SLURM_CONF") or not env_sh.is_file():
        return
    for line in env_sh.read_text().splitlines():
        match = re.fullmatch(r"export (\w+)=(.*)", line.strip())
        if match:
            key, value = match.groups()
            os.environ[key] = value.replace("$PATH", os.environ.get("PATH", ""))


def _probe() -> SlurmCluster | str:
    """The cluster, or the reason there is none."""
    _load_env_sh(Path(os.environ.get("SLURM_PREFIX", "/tmp/mm1-slurm")))
    for tool in ("sinfo", "sbatch", "sacct"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH (run `make slurm-up` or scripts/slurm-start.sh as root)"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T|%c|%P"], capture_output=True,
                             text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld is not answering"
    if out.returncode != 0:
        said = (out.stderr.strip() or out.stdout.strip()).splitlines() or ["no output"]
        return f"sinfo failed: {said[-1]}"
    for line in out.stdout.split():
        state, cpus, partition = line.split("|")
        if state.rstrip("*") in ("idle", "mixed", "allocated"):
            return SlurmCluster(conf=Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")),
                                partition=partition.rstrip("*"), cpus=int(cpus))
    return f"no usable node (sinfo says: {out.stdout.strip() or 'nothing'})"


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    found = _probe()
    if isinstance(found, SlurmCluster):
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but the SLURM cluster is not up: {found}", pytrace=False)
    pytest.skip(f"SLURM cluster not up: {found}")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> str:
    """The prepared default corpus when there is one (make test builds it), else a synthetic one."""
    from mm1model.data import default_corpus_dir, prepare_corpus, read_manifest

    if read_manifest(default_corpus_dir()) is not None:
        return str(default_corpus_dir())
    out = tmp_path_factory.mktemp("corpus")
    prepare_corpus(out, synthetic=True, echo=lambda _: None)
    return str(out)
