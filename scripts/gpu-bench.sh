#!/usr/bin/env bash
# The GPU benchmark in one call: tokens/s and MFU of 85M, 302M and 1.2B in bf16, eager and
# torch.compile'd, under FSDP2 on one GPU (a process group of one rank). Sized for one H200 in
# under 8 minutes: each size runs in a fresh process under a 150 s limit, so a hang or an
# out-of-memory error costs that size only (its line says so) and the others still report.
#
#   bash scripts/gpu-bench.sh            # records to stdout; also to $OUT/gpu-bench.jsonl if $OUT is set
#   SIZES="85M" PER_SIZE_S=120 bash scripts/gpu-bench.sh --steps 5
#
# Extra arguments go to `python -m mm1model.bench --gpu` (see its --help). PYTHON picks the
# interpreter (default: .venv/bin/python when its torch sees a GPU, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    PYTHON=.venv/bin/python
  fi
fi
SIZES=${SIZES:-"85M 302M 1.2B"}
PER_SIZE_S=${PER_SIZE_S:-150}
RECORDS=/dev/null
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  RECORDS="$OUT/gpu-bench.jsonl"
  : > "$RECORDS"
  {
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1
  } > "$OUT/gpu-bench-env.txt"
fi
start=$SECONDS
for size in $SIZES; do
  timeout --kill-after=10 "$PER_SIZE_S" "$PYTHON" -m mm1model.bench --gpu --sizes "$size" --json "$@" \
    | tee -a "$RECORDS"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "{\"size\": \"$size\", \"error\": \"exit status $rc (124: over ${PER_SIZE_S} s)\"}" | tee -a "$RECORDS"
  fi
done
echo "gpu-bench: $((SECONDS - start)) s for sizes: $SIZES" >&2
