#!/usr/bin/env bash
# The CUDA readiness check in one go: at most 6 minutes on one H100/H200-class GPU, imports included, or,
# with --dry-run, the same steps on the CPU at tiny sizes in under 3 minutes (to check the check).
#
#   bash scripts/device-check.sh [--reference-dir DIR]        # on the GPU machine, with OUT set there
#   OUT=/tmp/dc bash scripts/device-check.sh --dry-run        # anywhere, on the CPU
#
# Through the device tool: command "bash scripts/device-check.sh", carry ["wheels"] (and the reference
# clone's folder), timeout_s 420: the tool's OUT brings the two files back.
#
# Steps in order, each under its own time limit (scripts/device-check.py holds the plan: names, limits,
# commands, sizes; `python scripts/device-check.py plan` prints it). A step that fails or runs out of time
# is recorded and the next one runs; only the version gate stops the check.
#   gate             torch >= 2.4, timm >= 1.0.26, semaim's other modules; prints torch, timm, CUDA, cuDNN and
#                    the GPU. An older timm is replaced by a wheel carried in wheels/ (see below)
#   bench-b16        ViT-B/16@224 bf16 training step at the largest batch that fits: images/s, MFU against
#                    the 989 TFLOP/s dense bf16 peak, step memory, the SDPA kernels that ran
#   reference        semaim against the reference (skyoux/SemAIM) at the same precision, ViT-B/16, batch 256
#   bench-l16        the same as bench-b16 for ViT-L/16@224
#   pretrain-resume  a tiny pretraining run on generated data, SIGKILLed mid-run and resumed: its losses
#                    must equal an uninterrupted run's
#   torchrun         semaim pretrain under torchrun --nproc_per_node 1, then a DDP step on NCCL
#   tests            pytest -m cuda tests/cuda
# The first five share one Python process (one torch start-up); a process that dies is replaced for the
# steps after the one it died in.
#
# Output: exactly $OUT/device-check.json (versions, every step's status, seconds and key numbers, the GPU
# performance targets met / missed / not measured) and $OUT/device-check.log (everything the steps
# printed). OUT defaults to runs/device-check. Scratch (generated data, runs, checkpoints) goes to a
# temporary folder that is removed at the end.
#
# Nothing is fetched: semaim runs from this tree (PYTHONPATH=src), the data is generated. Carried along:
#   wheels/timm-*.whl  a timm wheel, installed with pip --no-index --no-deps into the scratch folder (first on
#                      PYTHONPATH) when the machine's timm is older than 1.0.26. Fetch it here with
#                        pip download --no-deps timm==1.0.31 -d wheels/
#                      and, if git ignores wheels/, name it in the device tool's carry argument.
#   the reference      a clone of github.com/skyoux/SemAIM inside the tree, e.g. ref/SemAIM, named by
#                      --reference-dir DIR or SEMAIM_REFERENCE_DIR=DIR; name it in carry too (a nested git
#                      repository travels without its files otherwise).
# PYTHON picks the interpreter (default: python3). Exit status: 0 when every step passed or was skipped,
# 1 otherwise, 2 for a bad argument.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=gpu
REF="${SEMAIM_REFERENCE_DIR:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) MODE=dry-run ;;
    --reference-dir) REF="${2:?--reference-dir needs a folder}"; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "device-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

OUT="${OUT:-runs/device-check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
PY="${PYTHON:-$(command -v python3 || command -v python)}"
REF_ARGS=()
if [ -n "$REF" ]; then REF_ARGS=(--reference-dir "$REF"); fi

"$PY" scripts/device-check.py run --mode "$MODE" --out "$OUT" --work "$WORK" --python "$PY" \
  ${REF_ARGS[@]+"${REF_ARGS[@]}"}
