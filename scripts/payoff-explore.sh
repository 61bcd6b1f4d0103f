#!/usr/bin/env bash
# Payoff study, step 0 (issue #12): is the fine-tuning recipe the bottleneck at 1 % labels?
# Resumable: every run is skipped when its result.json exists; the pretraining resumes from its checkpoint.
set -u
cd /work/main
R=runs/payoff-explore
mkdir -p $R
P=$R/pretrain-cpu-tiny-1ep
if [ ! -f $P/checkpoint-last.pt ] || ! python - <<PY
import sys, torch; c = torch.load("$P/checkpoint-last.pt", weights_only=False); sys.exit(0 if c["step"] >= c["steps_per_epoch"] else 1)
PY
then
  if [ -f $P/checkpoint-last.pt ]; then RES=--resume; else RES=--force; fi
  python -m semaim pretrain --out $P $RES --no-progress --set train.save_every_steps=50 > $R/pretrain.log 2>&1 || exit 1
fi
COMMON="--labels-per-class 60 --val-size 2000 --no-progress --set finetune.workers=1 --set eval_every=5"
run() {  # name, encoder flags, recipe flags
  local out=$R/ft-$1
  [ -f $out/result.json ] && return 0
  local resume=--force; [ -f $out/checkpoint-last.pt ] && resume=--resume
  python -m semaim finetune $2 $COMMON $3 --out $out $resume > $out.log 2>&1
}
# scratch and pretrained side by side, recipe by recipe (the comparison first)
for recipe in cpu b32-e40 b32-e40-nomix b32-e40-nomix-blr3e-3; do
  case $recipe in
    cpu) R_FLAGS="" ;;                                                                   # today's --recipe cpu: 3 epochs, batch 128
    b32-e40) R_FLAGS="--set batch_size=32 --set epochs=40 --set warmup_epochs=4" ;;       # more, smaller steps
    b32-e40-nomix) R_FLAGS="--set batch_size=32 --set epochs=40 --set warmup_epochs=4 --set mixup=0 --set cutmix=0" ;;
    b32-e40-nomix-blr3e-3) R_FLAGS="--set batch_size=32 --set epochs=40 --set warmup_epochs=4 --set mixup=0 --set cutmix=0 --set blr=3e-3" ;;
  esac
  run scratch-$recipe "--random" "$R_FLAGS"
  run pre-$recipe "--checkpoint $P/checkpoint-last.pt" "$R_FLAGS"
done
echo done > $R/DONE
