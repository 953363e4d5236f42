# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup corpus demo check-demo figures transfer transfer-compare horizons test slurm-up slurm-down clean

DEMO := runs/demo
TRANSFER := runs/transfer
HORIZONS := runs/horizons

# The CPU build of torch 2.13.0 lies on this machine's disk; installing it first keeps pip
# from resolving `torch>=2.6` to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

setup: $(STAMP)

# Idempotent: a second run reads the manifest and returns at once.
corpus: setup
	$(BIN)/scaling data prepare

# The whole MM1 workflow on this machine: sweep the CPU sizes on the real corpus, fit the law,
# tabulate 3B/7B/30B beside MM1's, plan the 30B launch. A second run reuses every finished cell.
demo: corpus
	$(BIN)/scaling sizes --family all
	$(BIN)/scaling sweep --config sweeps/cpu.toml --out $(DEMO)
	$(BIN)/scaling collect $(DEMO) --out $(DEMO)/runs.csv
	$(BIN)/scaling fit $(DEMO) --reference mm1 --out $(DEMO)/fit
	$(BIN)/scaling launch --size 30B --fit $(DEMO)/fit/fit.json --dry-run
	$(BIN)/scaling summary $(DEMO) --fit $(DEMO)/fit

# The README's demo table against a fresh demo's fit: every row must be what the code gives now.
check-demo: demo
	$(BIN)/python scripts/check-demo-numbers.py $(DEMO)/fit/fit.json README.md

# The README's figures, redrawn from the demo's fit (run `make demo` first).
figures: setup
	$(BIN)/scaling fit $(DEMO) --reference mm1 --out $(DEMO)/fit
	cp $(DEMO)/fit/loss_vs_lr.png $(DEMO)/fit/loss_vs_lr.svg $(DEMO)/fit/lr_law.png $(DEMO)/fit/lr_law.svg figures/

# The two roads to a large model's LR side by side: the coordinate checks gate the
# parametrizations, then sweeps/transfer.toml's four arms (4 paired seeds per size), then
# `transfer-compare`. 224 cells and the edge extensions (232 measured): about 30 minutes on 2 quiet cores.
transfer: corpus
	$(BIN)/scaling coord-check --sizes w32,w64,w128,w256 --parametrization mup --out $(TRANSFER)/coord/mup-width
	$(BIN)/scaling coord-check --sizes d2,d4,d8 --parametrization completep --out $(TRANSFER)/coord/completep-depth
	$(BIN)/scaling sweep --config sweeps/transfer.toml --out $(TRANSFER)
	$(MAKE) transfer-compare

# The comparison twice, on the disjoint seed sets {0, 1} and {2, 3} of one sweep, on the overall
# and the text-only loss, and whether the two sets' verdicts agree; then on all 4 seeds pooled.
# Reads the finished cells only, so it can be rerun at any point of the sweep.
transfer-compare: setup
	$(BIN)/scaling compare $(TRANSFER)/*-width $(TRANSFER)/*-depth --seed-sets 0,1/2,3 --metric both \
		--out $(TRANSFER)/compare
	$(BIN)/scaling compare $(TRANSFER)/*-width $(TRANSFER)/*-depth --seed-sets 0,1,2,3 --metric both \
		--out $(TRANSFER)/compare/pooled

# The recipe at the target's horizon and batch (about 20 minutes on 2 cores): the width family at
# three horizons under WSD (one trunk and two branches per LR) and two batch sizes at two sizes;
# the (N, D) law and the batch law with their bootstrap; the held-out test of the (N, D) law
# against MM1's N-only practice; the 30B recipe from them.
horizons: corpus
	$(BIN)/scaling sweep --config sweeps/cpu-horizons.toml --out $(HORIZONS)
	$(BIN)/scaling fit $(HORIZONS) --features params,tokens --out $(HORIZONS)/fit
	$(BIN)/scaling holdout $(HORIZONS) --json $(HORIZONS)/holdout.json
	$(BIN)/scaling launch --size 30B --fit $(HORIZONS)/fit/fit.json --weight-decay-rule timescale --dry-run

# The SLURM tests need the single-node cluster; the script installs and starts it where it can
# (root and apt). Without it the SLURM tests skip, except with CI=true where they fail.
slurm-up:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  bash scripts/slurm-start.sh || echo "slurm-up: could not start the cluster (see above)"; \
	else echo "slurm-up: not root or no apt: SLURM tests will skip"; fi

slurm-down:
	bash scripts/slurm-stop.sh

test: corpus slurm-up
	source /tmp/mm1-slurm/env.sh 2>/dev/null; $(BIN)/python -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) *.egg-info
