#!/usr/bin/env bash
# Chapter 5: parameter-efficient fine-tuning, the chapter's table. One small BERT is pretrained by
# masked-token prediction (configs/bert-tiny-mlm.yaml, on the embedded corpus), then adapted from
# that same base to the shipped English reviews (sentiment_en, split 70 / 15 / 15 per class; the
# base's tokenizer) six ways:
#
#   full fine-tuning (every weight; configs/bert-classify.yaml), a linear probe (only the classifier
#   trains: trainer.trainable=[classifier]), LoRA r=8 (configs/bert-classify-lora.yaml), QLoRA (the
#   same LoRA over an NF4-stored base: bert-classify-qlora.yaml), Houlsby adapters
#   (bert-classify-adapter.yaml) and prompt tuning (10 virtual tokens: bert-classify-prompt.yaml)
#
# Each run's best checkpoint (by validation accuracy) is scored on the test split. The table gives
# the share of parameters that train, test accuracy and wall time; learning curves are drawn.
# docs/results.md ("Parameter-efficient fine-tuning from one base") has the longer comparison
# (benchmarks/peft_methods.py: also Pfeiffer adapters, P-tuning, prefix tuning, peak memory).
#
# Usage: recipes/ch5-peft-table.sh [--full | --tiny] [--out DIR]
#   default  300 pretraining steps, at most 150 fine-tuning steps a method: a few minutes a run on
#            2 CPU cores
#   --full   the configs' own sizes (700 pretraining steps, 300-400 fine-tuning steps, early stopping)
#   --tiny   a smoke test of every command with a tiny BERT (what CI runs)
# Everything goes under one directory (default runs/ch5); results.md holds the table.
# JAXLM="python -m jaxlm.cli" runs another jaxlm.
set -euo pipefail
OUT=runs/ch5
source "$(dirname "$0")/lib.sh"

case "$SIZE" in
  full) MLM_SIZES=() FT_SIZES=() ;;
  default) MLM_SIZES=(trainer.max_steps=300 checkpoint.every=100)
           FT_SIZES=(trainer.max_steps=150 schedule.warmup_steps=15) ;;
  tiny) BERT=(model.hidden_size=16 model.intermediate_size=32 model.num_attention_heads=2 trainer.batch_size=8
              trainer.log_every=1 trainer.eval_every=2 trainer.eval_batches=2 checkpoint.every=2)
        MLM_SIZES=("${BERT[@]}" trainer.max_steps=2)
        FT_SIZES=("${BERT[@]}" trainer.max_steps=4 schedule.warmup_steps=1) ;;
esac
COMMON=(trainer.progress_bar=false)
table_header "method" "config" "trains (share of params)" "test accuracy" "training wall time (s)"

echo "== 1. the base: masked-LM pretraining of a small BERT"
jaxlm train configs/bert-tiny-mlm.yaml "run.out_dir=$OUT/base" "${COMMON[@]}" "${MLM_SIZES[@]}"
BASE=("model.init_from=$OUT/base" "data.tokenizer.path=$OUT/base/tokenizer" model.vocab_size=4096)

# run NAME CONFIG KEY=VALUE...: fine-tune from the base, score the best checkpoint on the test split,
# add a table row
run() {
  local name="$1" config="$2"; shift 2
  local start=$SECONDS
  jaxlm train "$config" "run.out_dir=$OUT/$name" "${BASE[@]}" "${COMMON[@]}" "$@" "${FT_SIZES[@]}" 2>&1 \
    | tee "$OUT/$name.log"
  local seconds=$((SECONDS - start))
  last_json "$OUT/$name-test.json" jaxlm eval "$config" "run.out_dir=$OUT/$name" "${BASE[@]}" "${COMMON[@]}" "$@" \
    "${FT_SIZES[@]}" task.eval_split=test --best
  # the trainer logs "trains 0.26M of 0.93M params (27.82 %)" when not every param trains
  local share; share=$(grep -o 'trains [^(]*([0-9.]* %)' "$OUT/$name.log" | tail -n 1 | sed 's/^trains //' || true)
  table_row "$name" "$(basename "$config")" "${share:-all (100 %)}" "$(metric "$OUT/$name-test.json" eval_accuracy)" \
    "$seconds"
}

echo "== 2. six ways to adapt it to the reviews"
run full-fine-tuning configs/bert-classify.yaml
run linear-probe configs/bert-classify.yaml "trainer.trainable=[classifier]" optimizer.learning_rate=1e-2
run lora configs/bert-classify-lora.yaml
run qlora configs/bert-classify-qlora.yaml
run houlsby-adapter configs/bert-classify-adapter.yaml
run prompt-tuning configs/bert-classify-prompt.yaml

echo "== 3. figure: the validation accuracy of the six"
jaxlm plot "$OUT/full-fine-tuning" "$OUT/linear-probe" "$OUT/lora" "$OUT/qlora" "$OUT/houlsby-adapter" \
  "$OUT/prompt-tuning" --metrics loss,eval_accuracy --out "$OUT/curves.png"
cat "$RESULTS"
echo "done: $OUT (results.md, curves.png, one directory and one log per run)"
