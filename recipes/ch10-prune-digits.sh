#!/usr/bin/env bash
# Chapter 10: compression, the chapter's table. A LeNet-5-style CNN (configs/cnn-digits.yaml) learns
# scikit-learn's 8x8 digits (split 70 / 15 / 15 per class), and is then made smaller three ways:
#
#   unstructured pruning: half of every kernel's weights by L1 magnitude (jaxlm prune --method
#   magnitude --sparsity 0.5); structured pruning: 20 % of each conv layer's filters by L2 norm
#   (--method structured --sparsity 0.2 --targets 'conv_\d+/kernel'); each pruned model is then
#   fine-tuned with its masks held (model.init_from the pruned run: the zeros stay zero);
#   int8 quantization of the trained model (jaxlm quantize --method int8, per-channel weights)
#
# `jaxlm compare` then scores every model on the test split (its best checkpoint where it has one)
# and times its forward pass: compare.md holds that full size / speed / accuracy table, results.md
# a summary of it (non-zero parameters, test accuracy, training wall time).
#
# Usage: recipes/ch10-prune-digits.sh [--full | --tiny] [--out DIR]
#   default  the config's own 400 training steps, 100 fine-tuning steps a pruned model: a few
#            minutes on 2 CPU cores
#   --full   1,500 training steps, 300 fine-tuning steps
#   --tiny   a smoke test of every command with a tiny CNN (what CI runs)
# Everything goes under one directory (default runs/ch10); results.md holds the table.
# JAXLM="python -m jaxlm.cli" runs another jaxlm.
set -euo pipefail
OUT=runs/ch10
source "$(dirname "$0")/lib.sh"

case "$SIZE" in
  full) TRAIN=(trainer.max_steps=1500 checkpoint.every=250) TUNE=(trainer.max_steps=300 checkpoint.every=100) ;;
  default) TRAIN=() TUNE=(trainer.max_steps=100) ;;
  tiny) TRAIN=("model.conv_channels=[4,8]" "model.hidden_sizes=[16]" trainer.max_steps=4 trainer.batch_size=16
               trainer.log_every=1 trainer.eval_every=2 trainer.eval_batches=2 checkpoint.every=2 schedule.warmup_steps=1)
        TUNE=(trainer.max_steps=2) ;;
esac
COMMON=(trainer.progress_bar=false)

echo "== 1. train the CNN"
start=$SECONDS
jaxlm train configs/cnn-digits.yaml "run.out_dir=$OUT/cnn" "${COMMON[@]}" "${TRAIN[@]}"
TRAINED=$((SECONDS - start))

# tune NAME: fine-tune the pruned run NAME with its masks held (its config is the trained run's)
declare -A SECONDS_OF=([cnn]=$TRAINED)
tune() {
  local start=$SECONDS
  jaxlm train "$OUT/$1/config.yaml" "run.out_dir=$OUT/$1-tuned" "model.init_from=$OUT/$1" "${COMMON[@]}" "${TUNE[@]}"
  SECONDS_OF[$1-tuned]=$((SECONDS - start))
}

echo "== 2. prune it: half the weights by magnitude; 20 % of the conv filters; fine-tune each"
jaxlm prune "$OUT/cnn" --best --method magnitude --sparsity 0.5 --out "$OUT/magnitude"
jaxlm prune "$OUT/cnn" --best --method structured --sparsity 0.2 --targets 'conv_\d+/kernel' --out "$OUT/structured"
tune magnitude
tune structured

echo "== 3. quantize it: int8 weights, one scale per output channel"
jaxlm quantize "$OUT/cnn" --best --method int8 --out "$OUT/int8"

echo "== 4. the table: size, speed and test accuracy of every model"
RUNS=(cnn magnitude magnitude-tuned structured structured-tuned int8)
jaxlm compare "${RUNS[@]/#/$OUT/}" --split test --out "$OUT/compare.md" --json "$OUT/compare.json"

# field FILE KEY N: the Nth row's number under KEY in compare's JSON (rows in the order compared)
field() { grep -o "\"$2\": [-0-9.e]*" "$1" | sed -n "${3}p" | awk '{print $2}'; }
declare -A WHAT=([cnn]="trained" [magnitude]="50 % of the weights pruned by magnitude"
                 [magnitude-tuned]="the same, fine-tuned with the masks held"
                 [structured]="20 % of the conv filters pruned by L2 norm"
                 [structured-tuned]="the same, fine-tuned with the masks held" [int8]="int8 weights (per channel)")
table_header "model" "what" "non-zero params (share)" "test accuracy" "training wall time (s)"
for i in "${!RUNS[@]}"; do
  name=${RUNS[$i]}
  params=$(field "$OUT/compare.json" params $((i + 1))) nonzero=$(field "$OUT/compare.json" nonzero $((i + 1)))
  table_row "$name" "${WHAT[$name]}" "$nonzero of $params ($(awk "BEGIN {printf \"%.1f\", 100 * $nonzero / $params}") %)" \
    "$(awk "BEGIN {printf \"%.4f\", $(field "$OUT/compare.json" value $((i + 1)))}")" "${SECONDS_OF[$name]:-—}"
done

echo "== 5. figure: the curves of the training and of the two fine-tunings"
jaxlm plot "$OUT/cnn" "$OUT/magnitude-tuned" "$OUT/structured-tuned" --metrics loss,eval_accuracy \
  --out "$OUT/curves.png"
cat "$OUT/compare.md" "$RESULTS"
echo "done: $OUT (results.md, compare.md / compare.json, curves.png, one directory per model)"
