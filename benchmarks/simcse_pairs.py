"""SimCSE against the untuned encoder, scored on held-out positive pairs: alignment (mean squared
distance of a pair's normalised embeddings, lower is better), uniformity (log mean Gaussian
potential over distinct texts, lower is better) and top-1 (a text's nearest neighbour among the
batch's second texts is its own pair). Two sets of pairs:

  python   adjacent sentences of held-out documents of the embedded corpus (weak positives: the
           next sentence, not a restatement). Encoders: configs/bert-tiny-mlm.yaml (700 steps),
           then unsupervised SimCSE on the training sentences, and supervised SimCSE on the
           adjacent-sentence pairs of the training documents (300 and 600 steps).
  reviews  near-duplicate reviews of reviews_zh (character-bigram Jaccard 0.5 to 0.9: one review
           rewording or extending the other), with every review like them (MinHash LSH at 0.5)
           kept out of training. Encoders: configs/bert-reviews-zh-mlm.yaml on the other reviews,
           then unsupervised SimCSE on them.

"untuned" is the pretrained encoder after one update at learning rate 1e-12 (a run `jaxlm eval`
can read; the weights move by ~1e-12). Each row is `jaxlm eval` of that run on the same pairs.

    python benchmarks/simcse_pairs.py python --out runs/simcse-pairs     # ~25 min on 2 cores
    python benchmarks/simcse_pairs.py reviews --out runs/simcse-pairs    # ~25 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from activation_memory import cpu_model
from text_results import jaxlm

QUIET = ["trainer.progress_bar=false"]
UNTUNED = ["trainer.max_steps=1", "trainer.eval_every=1", "optimizer.learning_rate=1e-12"]
# configs/simcse-bert.yaml at the sizes of configs/bert-reviews-zh-mlm.yaml
REVIEW_SIZES = ["model.vocab_size=5000", "data.tokenizer.vocab_size=5000", "model.max_position_embeddings=128",
                "data.seq_len=128", "task.truncation=truncate"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def python_pairs(out: Path) -> Path:
    """Adjacent-sentence pairs of the training documents (the held-out documents' are the eval's)."""
    from jaxlm.data.bert_inputs import split_sentences
    from jaxlm.data.corpus import load_documents, split_documents

    train, _ = split_documents(load_documents(None), 0.1)  # configs/simcse-bert.yaml's data.validation_fraction
    pairs = [{"text": a, "text_pair": b} for d in train for p in d.split("\n\n")
             for a, b in zip(split_sentences(p), split_sentences(p)[1:])]
    return write_jsonl(out / "train-pairs.jsonl", pairs)


def review_pairs(out: Path) -> tuple[Path, Path, Path, int]:
    """Held-out near-duplicate pairs, and the other reviews (a text file for the masked LM, JSONL rows for SimCSE)."""
    from datasketch import MinHash, MinHashLSH

    from jaxlm.data.dedup import shingles
    from jaxlm.data.reviews import read_reviews

    texts, _, _ = read_reviews("reviews_zh")
    grams = [shingles(t, 2) for t in texts]
    index, signatures = MinHashLSH(threshold=0.5, num_perm=64), []
    for i, g in enumerate(grams):
        m = MinHash(num_perm=64, seed=1)
        m.update_batch([s.encode("utf-8") for s in g])
        signatures.append(m)
        index.insert(i, m)
    pairs, held = [], set()
    for i in range(len(texts)):
        for j in sorted(index.query(signatures[i])):
            if j > i and not {i, j} & held and 0.5 <= len(grams[i] & grams[j]) / len(grams[i] | grams[j]) < 0.9:
                pairs.append({"text": texts[i], "text_pair": texts[j]})
                held |= {i, j}
    held |= {k for i in set(held) for k in index.query(signatures[i])}  # nothing like a held-out review trains
    rest = [" ".join(t.split()) for k, t in enumerate(texts) if k not in held]
    (out / "train.txt").write_text("\n\n".join(rest) + "\n", encoding="utf-8")
    return (write_jsonl(out / "pairs.jsonl", pairs), out / "train.txt",
            write_jsonl(out / "train.jsonl", [{"text": t} for t in rest]), len(pairs))


def row(name: str, m: dict) -> str:
    return f"| {name} | {m['eval_alignment']:.3f} | {m['eval_uniformity']:.3f} | {m['eval_top1']:.3f} |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pairs", choices=["python", "reviews"])
    p.add_argument("--out", default="runs/simcse-pairs")
    args = p.parse_args()
    out = Path(args.out).absolute() / args.pairs  # the commands run in the repository root
    out.mkdir(parents=True, exist_ok=True)
    simcse = ["train", "configs/simcse-bert.yaml", *QUIET]
    rows = []
    if args.pairs == "python":
        jaxlm("train", "configs/bert-tiny-mlm.yaml", f"run.out_dir={out / 'mlm'}", *QUIET)
        held_out = ["eval", "configs/simcse-bert.yaml", *QUIET]  # its held-out documents' adjacent sentences
        base = [f"model.init_from={out / 'mlm'}"]
        supervised = [f"data.paths=[{python_pairs(out)}]", "task.truncation=truncate"]
        for name, extra in [("MLM-pretrained, untuned", UNTUNED), ("+ unsupervised SimCSE, 300 steps", []),
                            ("+ supervised SimCSE, 300 steps", supervised),
                            ("+ supervised SimCSE, 600 steps", [*supervised, "trainer.max_steps=600"])]:
            run = out / f"run{len(rows)}"
            jaxlm(*simcse, f"run.out_dir={run}", *base, *extra)
            rows.append(row(name, jaxlm(*held_out, f"run.out_dir={run}")))
            if extra is UNTUNED:  # the untuned encoder's mean-pooled tokens too (SimCSE trains the [CLS] pooling)
                rows.append(row("MLM-pretrained, untuned, mean pooling",
                                jaxlm(*held_out, f"run.out_dir={run}", "task.pooling=mean")))
        what = "adjacent sentences of held-out documents"
    else:
        pairs, text, table, n = review_pairs(out)
        jaxlm("train", "configs/bert-reviews-zh-mlm.yaml", f"run.out_dir={out / 'mlm'}", f"data.paths=[{text}]",
              *QUIET)
        held_out = ["eval", "configs/simcse-bert.yaml", *QUIET, *REVIEW_SIZES, f"data.paths=[{pairs}]",
                    "task.split=[0.01,0.99,0.0]"]  # all pairs but one are scored (train must not be empty)
        base = [f"model.init_from={out / 'mlm'}", f"data.paths=[{table}]", *REVIEW_SIZES]
        for name, extra in [("MLM-pretrained, untuned", UNTUNED), ("+ unsupervised SimCSE, 300 steps", [])]:
            run = out / f"run{len(rows)}"
            jaxlm(*simcse, f"run.out_dir={run}", *base, *extra)
            rows.append(row(name, jaxlm(*held_out, f"run.out_dir={run}")))
            if extra is UNTUNED:
                rows.append(row("MLM-pretrained, untuned, mean pooling",
                                jaxlm(*held_out, f"run.out_dir={run}", "task.pooling=mean")))
        what = f"near-duplicate reviews ({n} pairs, all but one scored)"
    print(f"SimCSE on {what}; {cpu_model()}")
    print("| encoder | alignment | uniformity | top-1 |\n|---|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
