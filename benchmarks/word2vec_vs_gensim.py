"""jaxlm's word2vec against gensim's Word2Vec trained on the same sentences with the same
settings: Spearman rank correlation of the cosine similarities of all pairs of the most
frequent words. Two gensim runs that differ only in their seed give the ceiling to compare with.

    python benchmarks/word2vec_vs_gensim.py --run runs/word2vec-skipgram [--top 200]

The jaxlm run must be trained first (``jaxlm train configs/word2vec-skipgram.yaml``); gensim
gets its training sentences (the same split, words and vocabulary), window, negatives,
subsampling, min_count, vector size and about as many epochs as the run's steps cover.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml


def pair_similarities(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = unit @ unit.T
    return sims[np.triu_indices(len(vectors), 1)]


def main() -> None:
    from gensim.models import Word2Vec
    from scipy.stats import spearmanr

    from jaxlm.config import validate_config
    from jaxlm.data.corpus import load_documents, split_documents
    from jaxlm.tasks.word2vec import load_vectors, sentences_of

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--top", type=int, default=200, help="the most frequent words whose pairs are compared")
    parser.add_argument("--skip", type=int, default=0, help="leave out this many most frequent words first")
    args = parser.parse_args()

    config = validate_config(yaml.safe_load((Path(args.run) / "config.yaml").read_text()))
    t, d, m = config.task, config.data, config.model
    train_docs, _ = split_documents(load_documents(d.paths), d.validation_fraction)
    sentences = sentences_of(train_docs, d.tokenizer.lowercase, d.tokenizer.segmenter, t.sentences)
    words, ours = load_vectors(args.run)
    tokens = sum(len([w for w in s if w in set(words)]) for s in sentences)
    epochs = max(1, round(config.trainer.max_steps * config.trainer.batch_size / tokens))

    def gensim(seed):
        start = time.perf_counter()
        model = Word2Vec(sentences, vector_size=m.embedding_dim, window=t.window, negative=t.negative, sample=t.sample,
                         min_count=t.min_count, ns_exponent=t.ns_exponent, sg=int(m.architecture == "skipgram"),
                         epochs=epochs, workers=1, seed=seed)
        return model.wv, time.perf_counter() - start

    first, seconds = gensim(1)
    second, _ = gensim(2)
    chosen = [w for w in words if w in first.key_to_index][args.skip:args.skip + args.top]
    index = {w: i for i, w in enumerate(words)}
    ours_s = pair_similarities(ours[[index[w] for w in chosen]])
    g1 = pair_similarities(np.stack([first[w] for w in chosen]))
    g2 = pair_similarities(np.stack([second[w] for w in chosen]))
    print(f"{m.architecture}, {len(sentences)} sentences, {tokens} tokens in the vocabulary, gensim epochs={epochs} "
          f"({seconds:.1f} s); pairs of the {len(chosen)} most frequent words (after skipping {args.skip}): "
          f"{len(ours_s)}")
    print(f"Spearman(jaxlm, gensim seed 1) = {spearmanr(ours_s, g1).statistic:.3f}")
    print(f"Spearman(jaxlm, gensim seed 2) = {spearmanr(ours_s, g2).statistic:.3f}")
    print(f"Spearman(gensim seed 1, gensim seed 2) = {spearmanr(g1, g2).statistic:.3f}  (the ceiling)")


if __name__ == "__main__":
    main()
