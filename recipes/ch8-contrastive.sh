#!/usr/bin/env bash
# Chapter 8: contrastive pretraining, then a linear probe. A small ResNet encoder learns from
# scikit-learn's 8x8 digits without their labels, under each of the chapter's losses — NT-Xent at
# temperature 0.5 on two augmented views (SimCLR), a triplet loss with batch-hard mining and the
# margin contrastive loss of Hadsell et al. (both with the other view as the positive) — and a
# linear classifier is then trained on each frozen encoder (only `classifier` trains). The table
# compares their test accuracy with a probe on a randomly initialised encoder, and a t-SNE of the
# SimCLR features is drawn.
#
# Usage: recipes/ch8-contrastive.sh [--full | --tiny] [--out DIR]
#   default  200 contrastive steps and 150 probe steps per loss: a few minutes on 2 CPU cores
#   --full   the configs' own 400 and 300 steps
#   --tiny   a smoke test of every command (what CI runs)
# Everything goes under one directory (default runs/ch8); results.md holds the table.
set -euo pipefail
OUT=runs/ch8
source "$(dirname "$0")/lib.sh"

case "$SIZE" in
  full) PRETRAIN=() PROBE=() ;;
  default) PRETRAIN=(trainer.max_steps=200 trainer.eval_every=100) PROBE=(trainer.max_steps=150 trainer.eval_every=150) ;;
  tiny) PRETRAIN=(trainer.max_steps=3 trainer.batch_size=16 trainer.eval_every=3 checkpoint.every=3 trainer.log_every=1)
        PROBE=(trainer.max_steps=3 trainer.batch_size=16 trainer.eval_every=3 checkpoint.every=3 trainer.log_every=1) ;;
esac
COMMON=(trainer.progress_bar=false)
table_header "encoder of the linear probe" "contrastive loss" "test accuracy" "test loss" "pretraining wall time (s)"

probe() {  # probe NAME INIT_FROM: a linear classifier on a frozen encoder, scored on the test split
  jaxlm train configs/linear-probe-digits.yaml "run.out_dir=$OUT/probe-$1" "model.init_from=$2" "${COMMON[@]}" \
    "${PROBE[@]}"
  last_json "$OUT/probe-$1.json" jaxlm eval configs/linear-probe-digits.yaml "run.out_dir=$OUT/probe-$1" \
    "model.init_from=$2" "${COMMON[@]}" "${PROBE[@]}"
}

for loss in ntxent triplet margin; do
  echo "== contrastive pretraining: $loss"
  start=$SECONDS
  jaxlm train configs/simclr-digits.yaml "run.out_dir=$OUT/$loss" "task.loss=$loss" "${COMMON[@]}" "${PRETRAIN[@]}"
  seconds=$((SECONDS - start))
  echo "== linear probe on the $loss encoder"
  probe "$loss" "$OUT/$loss"
  table_row "pretrained ($OUT/$loss)" "$loss" "$(metric "$OUT/probe-$loss.json" eval_accuracy)" \
    "$(metric "$OUT/probe-$loss.json" eval_loss)" "$seconds"
done

echo "== linear probe on a randomly initialised encoder"
probe random null
table_row "random initialisation" "—" "$(metric "$OUT/probe-random.json" eval_accuracy)" \
  "$(metric "$OUT/probe-random.json" eval_loss)" "—"

echo "== figures: t-SNE of the SimCLR features, the pretraining curves"
jaxlm embed --run "$OUT/ntxent" digits:0-299 --plot tsne --out "$OUT/tsne-ntxent.png"
jaxlm plot "$OUT/ntxent" "$OUT/triplet" "$OUT/margin" --metrics loss --out "$OUT/pretraining-loss.png"
cat "$RESULTS"
echo "done: $OUT (results.md, tsne-ntxent.png, pretraining-loss.png, one directory per run)"
