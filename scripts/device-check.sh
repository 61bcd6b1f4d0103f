#!/usr/bin/env bash
# The CUDA readiness check in one go: at most 8 minutes on one H100/H200-class GPU with 16 CPU cores,
# or, with --dry-run, the same steps on the CPU at tiny sizes (to check the script itself).
#
#   bash scripts/device-check.sh [--reference-dir /path/to/SemAIM]     # on the GPU machine
#   OUT=/tmp/dc bash scripts/device-check.sh --dry-run                 # anywhere, on the CPU
#
# Steps, each under its own time limit and never past the whole budget; a step that fails or times
# out is recorded and the next one runs:
#   env         versions, GPU (nvidia-smi), CUDA availability; runs scripts/install.sh if modules are missing
#   tests       pytest tests/cuda: every device test, cpu and cuda cases (dry run: the cuda ones, skipped)
#   bench-b16   semaim bench, ViT-B/16@224 in bf16 at the largest batch that fits: images/s, MFU, step
#               memory, attention kernels (and the explicit-mask path beside it)
#   bench-l16   the same for ViT-L/16@224, fast path only
#   reference   benchmarks/reference.py on CUDA: the reference in fp16 as shipped against semaim in fp16
#               and bf16 (needs a clone of skyoux/SemAIM: --reference-dir DIR or REFERENCE_DIR=DIR)
#   loader      benchmarks/loader.py: 16 workers decoding JPEGs with PIL, and decoding on the GPU, against
#               the images/s the B/16 step consumes
#   pretrain    ViT-S/16@224 on cluttered Fashion-MNIST at batch 512, stopped after 2 minutes
#   knn         k-NN of its checkpoint; knn-random: of the random initialisation (the floor)
# Output in $OUT (default runs/device-check/): every step's log and JSON, steps.jsonl, summary.json and
# summary.md. Bulky files (JPEGs, checkpoints) go to a scratch folder that is removed at the end.
# Exit status: 0 when every step passed or was skipped, 1 otherwise, 2 for a bad argument.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=0
REF="${REFERENCE_DIR:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --reference-dir) REF="${2:?--reference-dir needs a folder}"; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "device-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

OUT="${OUT:-runs/device-check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# A previous check's files would pass for this one's in the summary: remove them (only them).
for step in install env tests bench-b16 bench-l16 reference loader pretrain knn knn-random; do
  rm -f "$OUT/$step.log" "$OUT/$step.json"
done
rm -f "$OUT"/{steps.jsonl,device-check.log,mode,tests.xml,pretrain-preset.yaml,pretrain-metrics.jsonl,summary.json,summary.md}
WORK="$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
# This tree's code whether or not it is installed; unbuffered, so a killed step's log is complete.
export PYTHONPATH="$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python || command -v python3)}"
if [ "$DRY" -eq 1 ]; then MODE=dry-run BUDGET=170; else MODE=gpu BUDGET=450; fi
echo "$MODE" > "$OUT/mode"
DEADLINE=$((SECONDS + BUDGET))

# record NAME STATUS EXIT SECONDS DETAIL: one line of steps.jsonl (DETAIL: printable, no quotes).
record() {
  local detail
  detail="$(printf '%s' "$5" | tr -cd '[:print:]' | tr -d '"\\')"
  printf '{"name": "%s", "status": "%s", "rc": %d, "seconds": %d, "detail": "%s"}\n' \
    "$1" "$2" "$3" "$4" "$detail" >> "$OUT/steps.jsonl"
  echo "[$(date +%T)] $1: $2 ($4 s) $detail" | tee -a "$OUT/device-check.log"
}

# run_step NAME LIMIT_S OK_EXITS SIGNAL DETAIL CMD...: CMD with output in $OUT/NAME.log, sent SIGNAL after
# LIMIT_S seconds (or when the budget ends) and killed 20 s later; exits in OK_EXITS count as passed.
run_step() {
  local name=$1 limit=$2 ok=$3 signal=$4 detail=$5
  shift 5
  local left=$((DEADLINE - SECONDS)) start=$SECONDS rc=0 status=failed
  if [ "$left" -lt 15 ]; then
    record "$name" skipped 0 0 "no time left in the ${BUDGET} s budget"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "[$(date +%T)] $name (limit $limit s): $*" | tee -a "$OUT/device-check.log"
  timeout -s "$signal" -k 20 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  case " $ok " in *" $rc "*) status=ok ;; esac
  if [ "$status" = ok ] && [ "$rc" -eq 124 ]; then
    detail="$detail; stopped at its $limit s time limit, as planned"
  elif [ "$status" = failed ]; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then status=timeout; fi
    detail="exit $rc after $((SECONDS - start)) s; last line: $(tail -n 1 "$OUT/$name.log" | cut -c1-200)"
  fi
  record "$name" "$status" "$rc" "$((SECONDS - start))" "$detail"
}

step_env() {
  local missing probe=()
  if ! missing="$("$PY" scripts/device-check.py deps)"; then
    if [ "$DRY" -eq 1 ]; then
      record env failed 1 0 "missing Python modules: $missing (bash scripts/install.sh installs them)"
      return 0
    fi
    run_step install 240 0 TERM "missing: $missing" bash scripts/install.sh
  fi
  [ "$DRY" -eq 0 ] && probe=(--probe)
  run_step env 60 0 TERM "versions and device" "$PY" scripts/device-check.py env "$OUT/env.json" ${probe[@]+"${probe[@]}"}
}

step_tests() {
  local select="not device_check"
  [ "$DRY" -eq 1 ] && select="cuda and not device_check"
  run_step tests 150 0 TERM "pytest tests/cuda -m '$select'" \
    "$PY" -m pytest tests/cuda -m "$select" -rs -q -p no:cacheprovider --junitxml="$OUT/tests.xml"
}

step_bench() {
  if [ "$DRY" -eq 1 ]; then
    run_step bench-b16 90 0 TERM "tiny-32 on the CPU stands in for ViT-B/16" \
      "$PY" -m semaim bench --device cpu --precision fp32 --model tiny-32 --batch-size max --max-batch 8 \
      --steps 2 --warmup 1 --matmul-size 256 --no-memory --out "$OUT/bench-b16.json"
    record bench-l16 skipped 0 0 "dry run: one bench config"
    return 0
  fi
  run_step bench-b16 120 0 TERM "ViT-B/16@224 bf16, largest batch" \
    "$PY" -m semaim bench --device cuda --precision bf16 --model vit-b16-224 --batch-size max \
    --steps 8 --warmup 2 --out "$OUT/bench-b16.json"
  run_step bench-l16 100 0 TERM "ViT-L/16@224 bf16, largest batch, fast path" \
    "$PY" -m semaim bench --device cuda --precision bf16 --model vit-l16-224 --batch-size max --fast-only \
    --steps 5 --warmup 2 --out "$OUT/bench-l16.json"
}

step_reference() {
  if [ -z "$REF" ] || [ ! -f "$REF/models/models_semaim.py" ]; then
    record reference skipped 0 0 "no reference clone given: pass --reference-dir DIR or REFERENCE_DIR=DIR \
(a clone of github.com/skyoux/SemAIM)${REF:+; $REF has no models/models_semaim.py}"
    return 0
  fi
  if [ "$DRY" -eq 1 ]; then
    run_step reference 150 0 TERM "ViT-T/16, batch 2, CPU fp32" \
      "$PY" benchmarks/reference.py --reference-dir "$REF" --device cpu --config vit-t16-224 --batch-size 2 \
      --paths semaim-fp32 ref-fp32 --steps 1 --warmup 1 --out "$OUT/reference.json"
    return 0
  fi
  run_step reference 150 0 TERM "ViT-B/16, batch 256: reference fp16 as shipped vs semaim fp16 and bf16" \
    "$PY" benchmarks/reference.py --reference-dir "$REF" --device cuda --config vit-b16-224 --batch-size 256 \
    --steps 6 --warmup 2 --out "$OUT/reference.json"
}

step_loader() {
  if [ "$DRY" -eq 1 ]; then
    run_step loader 90 0 TERM "32 small JPEGs, 1 worker, CPU" \
      "$PY" benchmarks/loader.py --images 32 --size 64x48 --img-size 32 --batch-size 8 --workers 1 \
      --decode pil gpu --device cpu --seconds 1 --step-json "$OUT/bench-b16.json" --step-config tiny-32 \
      --out "$OUT/loader.json"
    return 0
  fi
  run_step loader 90 0 TERM "4000 JPEGs of 500x375, 16 workers vs GPU decoding" \
    "$PY" benchmarks/loader.py --images 4000 --size 500x375 --img-size 224 --batch-size 256 --workers 16 \
    --decode pil gpu --device cuda --seconds 10 --step-json "$OUT/bench-b16.json" --step-config vit-b16-224 \
    --out "$OUT/loader.json"
}

# The pretraining run's model and recipe; the k-NN floor builds its random encoder from the same file.
write_preset() {
  local img=$1 patch=$2 dim=$3 depth=$4 heads=$5 batch=$6 epochs=$7 workers=$8 save=$9
  cat > "$OUT/pretrain-preset.yaml" <<EOF
model: {img_size: $img, patch_size: $patch, embed_dim: $dim, depth: $depth, num_heads: $heads, decoder_depth: $depth,
        order: semantic, target: pixels, norm_pix: true, blur_sigma: null}
data: {data: $DATA, workers: $workers, crop_scale: [0.2, 1.0], hflip: true}
train: {epochs: $epochs, batch_size: $batch, blr: 2.0e-4, warmup_epochs: 0.5, weight_decay: 0.05, betas: [0.9, 0.95],
        clip_grad: 3.0, save_every_steps: $save}
EOF
}

step_pretrain() {
  local device=cuda precision=bf16 limit=120
  if [ "$DRY" -eq 1 ]; then
    DATA="cluttered-fashion-mnist:$WORK/fmnist"
    "$PY" scripts/device-check.py tiny-data "$WORK/fmnist" > /dev/null
    write_preset 32 8 32 2 2 32 2 1 2
    device=cpu precision=fp32 limit=90
  elif [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    DATA=cluttered-fashion-mnist
    write_preset 224 16 384 12 6 512 20 16 100
  else
    record pretrain skipped 0 0 "no Fashion-MNIST in /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist)"
    return 0
  fi
  # SIGINT at the limit: the run stops like a Ctrl-C (exit 130, timeout says 124), keeping its last checkpoint.
  run_step pretrain "$limit" "0 124" INT "ViT-S/16 on cluttered Fashion-MNIST, 2 minutes (dry run: a tiny ViT, 16 steps)" \
    "$PY" -m semaim pretrain --config "$OUT/pretrain-preset.yaml" --device "$device" --precision "$precision" \
    --out "$WORK/pretrain" --no-progress
  cp "$WORK/pretrain/metrics.jsonl" "$OUT/pretrain-metrics.jsonl" 2> /dev/null || true
}

step_knn() {
  local ckpt="$WORK/pretrain/checkpoint-last.pt"
  if [ ! -f "$ckpt" ]; then
    record knn skipped 0 0 "no pretraining checkpoint to evaluate"
    record knn-random skipped 0 0 "no pretraining checkpoint to evaluate"
    return 0
  fi
  if [ "$DRY" -eq 1 ]; then
    run_step knn 60 0 TERM "k-NN of the tiny checkpoint" \
      "$PY" -m semaim knn --checkpoint "$ckpt" --data "$DATA" --device cpu --workers 1 --extract-batch-size 64 \
      --ks 3 10 --no-progress --out "$OUT/knn.json"
    record knn-random skipped 0 0 "dry run"
    return 0
  fi
  local common=(--data "$DATA" --device cuda --precision bf16 --workers 16 --extract-batch-size 1024 --no-progress)
  run_step knn 90 0 TERM "k-NN (cls) of the 2-minute checkpoint" \
    "$PY" -m semaim knn --checkpoint "$ckpt" "${common[@]}" --out "$OUT/knn.json"
  run_step knn-random 90 0 TERM "k-NN of the random initialisation (floor)" \
    "$PY" -m semaim knn --random --model-config "$OUT/pretrain-preset.yaml" "${common[@]}" --out "$OUT/knn-random.json"
}

echo "[$(date +%T)] device check ($MODE) into $OUT, budget $BUDGET s" | tee -a "$OUT/device-check.log"
step_env
if [ "$DRY" -eq 1 ]; then
  # Two cores and ~10 s of imports per Python process: the independent chains run side by side.
  step_tests &
  (step_bench && step_loader) &
  (step_pretrain && step_knn) &
  wait
else
  step_tests
  step_bench
fi
step_reference
if [ "$DRY" -eq 0 ]; then
  step_loader
  step_pretrain
  step_knn
fi
"$PY" scripts/device-check.py summary "$OUT" > /dev/null || echo "device-check: the summary failed" >&2
echo "[$(date +%T)] done in $SECONDS s: $OUT/summary.md" | tee -a "$OUT/device-check.log"
if grep -q '"status": "\(failed\|timeout\)"' "$OUT/steps.jsonl"; then
  exit 1
fi
