"""word2vec (``task: word2vec``): skip-gram or CBOW (``model.architecture``) with negative
sampling and frequent-word subsampling, on the one trainer; the vectors' export in the
word2vec text format, nearest neighbours, and a PCA / t-SNE plot.

Data: ``data.paths`` (or the embedded corpus), cut into sentences at blank lines (paragraphs;
``task.sentences: lines``: at each line; gensim's 10,000-word limit), words found by :func:`sentence_words` (lower-cased by
``data.tokenizer.lowercase``; Chinese through jieba with ``data.tokenizer.segmenter: jieba``).
The vocabulary keeps words seen ``task.min_count`` times, most frequent first, and is saved
as ``vocab.json`` in the run. Sentences of ``data.validation_fraction`` of the documents
(spread as for the causal LM) are held out; ``eval_loss`` is their negative-sampling loss.

Each training example is one centre position of the token stream, in an order shuffled per
epoch. Everything random is a pure function of ``(run.seed, epoch, ...)`` as gensim draws it
per word: the subsampling of epoch e keeps a word of count ``c`` with probability
``(sqrt(c / t) + 1) * t / c`` (``t = sample * total``), windows span the kept words of the
sentence, shrunk to ``b ~ U{1..window}`` per centre, and negatives come from the unigram
distribution raised to ``ns_exponent``. A checkpoint's data position therefore resumes exactly.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import Config
from jaxlm.data.corpus import load_documents, split_documents
from jaxlm.data.pipeline import BatchIterator
from jaxlm.data.tokenizer import segment_words
from jaxlm.errors import ConfigError, DataError, JaxlmError

log = logging.getLogger("jaxlm")

VOCAB_FILE = "vocab.json"
MAX_SENTENCE = 10000
WORD = re.compile(r"\w+(?:'\w+)?")


def sentence_words(text: str, lowercase: bool = True, segmenter: str | None = None) -> list[str]:
    """The words of a text: runs of letters / digits (an inner apostrophe kept), after jieba's
    segmentation when ``segmenter`` is set."""
    text = segment_words(text, segmenter)
    return WORD.findall(text.lower() if lowercase else text)


def sentences_of(docs: list[str], lowercase: bool, segmenter: str | None, unit: str = "paragraphs"
                 ) -> list[list[str]]:
    out = []
    for doc in docs:
        for paragraph in re.split(r"\n\s*\n" if unit == "paragraphs" else r"\n", doc):
            words = sentence_words(paragraph, lowercase, segmenter)
            out += [words[i:i + MAX_SENTENCE] for i in range(0, len(words), MAX_SENTENCE)]
    return [s for s in out if s]


def build_vocab(sentences: list[list[str]], min_count: int) -> tuple[list[str], np.ndarray]:
    """Words seen at least ``min_count`` times and their counts, most frequent first (ties in
    order of first appearance, as gensim sorts)."""
    counts = Counter(w for s in sentences for w in s)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: -counts[w])
    return words, np.asarray([counts[w] for w in words], np.int64)


class Corpus:
    """A token-id stream with each token's sentence, from sentences and a vocabulary (words
    outside it are dropped before windows are taken, as gensim does)."""

    def __init__(self, sentences: list[list[str]], index: dict[str, int]):
        ids = [[index[w] for w in s if w in index] for s in sentences]
        ids = [s for s in ids if len(s) > 1]
        self.tokens = np.fromiter((t for s in ids for t in s), np.int32)
        self.sentence = np.repeat(np.arange(len(ids)), [len(s) for s in ids]).astype(np.int32)
        self.longest = max((len(s) for s in ids), default=0)


class Word2VecTask:
    head = "word2vec"

    def __init__(self, config: Config, run_dir: Path):
        t, d = config.task, config.data
        self.config, self.seed = config, config.run.seed
        self.window, self.negative, self.cbow = t.window, t.negative, config.model.architecture == "cbow"
        train_docs, valid_docs = split_documents(load_documents(d.paths), d.validation_fraction)
        lower, seg = d.tokenizer.lowercase, d.tokenizer.segmenter
        train_sentences = sentences_of(train_docs, lower, seg, t.sentences)
        self.words, self.counts = vocabulary(run_dir, train_sentences, t.min_count)
        if len(self.words) > config.model.vocab_size:
            raise DataError(f"the vocabulary has {len(self.words)} words seen task.min_count={t.min_count} times but "
                            f"model.vocab_size={config.model.vocab_size}; set model.vocab_size={len(self.words)}")
        if len(self.words) < 2:
            raise DataError(f"fewer than 2 words occur task.min_count={t.min_count} times; lower it or add text")
        index = {w: i for i, w in enumerate(self.words)}
        self.train = Corpus(train_sentences, index)
        self.valid = Corpus(sentences_of(valid_docs, lower, seg, t.sentences), index)
        if t.window >= self.train.longest:
            raise ConfigError(f"task.window={t.window} is larger than the longest sentence ({self.train.longest} "
                              "words in the vocabulary); lower task.window, or give text with longer sentences "
                              "(paragraphs separated by blank lines)")
        total = self.counts.sum()
        threshold = t.sample * total
        keep = (np.sqrt(self.counts / threshold) + 1) * threshold / self.counts if t.sample else np.ones(len(self.words))
        self.keep_probability = np.minimum(keep, 1.0)
        weights = self.counts.astype(np.float64) ** t.ns_exponent
        self.noise_cdf = np.cumsum(weights / weights.sum())
        log.info("word2vec: %d words in the vocabulary, %d training and %d validation tokens", len(self.words),
                 len(self.train.tokens), len(self.valid.tokens))

    # -- batches ------------------------------------------------------------------------------
    def train_iterator(self, batch_size, process_index=0, process_count=1):
        positions = {"position": np.arange(len(self.train.tokens), dtype=np.int64)}
        return Examples(self, BatchIterator(positions, batch_size, self.seed, process_index=process_index,
                                            process_count=process_count))

    def eval_batches(self, batch_size, limit=None):
        corpus, n = self.valid, len(self.valid.tokens)
        if not n:
            return
        kept = kept_positions(corpus, np.ones(n, bool))
        count = -(-n // batch_size)
        for b in range(count if limit is None else min(count, limit)):
            centres = np.arange(b * batch_size, min((b + 1) * batch_size, n))
            rng = np.random.default_rng([self.seed, 0x5A1, b])
            batch = self.examples(corpus, kept, centres, rng)
            short = batch_size - len(centres)
            if short:
                batch = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
            yield batch

    def example_batch(self, batch_size):
        kept = kept_positions(self.train, np.ones(len(self.train.tokens), bool))
        batch = self.examples(self.train, kept, np.zeros(1, np.int64), np.random.default_rng(0))
        return {k: v.repeat(batch_size, 0) for k, v in batch.items()}

    def examples(self, corpus: Corpus, kept: tuple, centres: np.ndarray, rng) -> dict[str, np.ndarray]:
        """Inputs of the centres (positions in ``corpus``): their context words within a window
        shrunk to ``b ~ U{1..window}`` over the kept words of the same sentence, and negatives."""
        order, rank = kept
        w = self.window
        offsets = np.concatenate([np.arange(-w, 0), np.arange(1, w + 1)])
        reach = rng.integers(1, w + 1, len(centres))
        r = rank[centres]
        at = r[:, None] + offsets[None, :]
        inside = (r[:, None] >= 0) & (at >= 0) & (at < len(order)) & (np.abs(offsets)[None, :] <= reach[:, None])
        context_pos = order[np.clip(at, 0, max(len(order) - 1, 0))]
        inside &= corpus.sentence[context_pos] == corpus.sentence[centres][:, None]
        context = np.where(inside, corpus.tokens[context_pos], 0).astype(np.int32)
        centre = corpus.tokens[centres].astype(np.int32)
        shape = (len(centres), 2 * w, self.negative) if not self.cbow else (len(centres), self.negative)
        noise = np.searchsorted(self.noise_cdf, rng.random(shape), side="right").astype(np.int32)
        noise = np.minimum(noise, len(self.words) - 1)
        if self.cbow:
            targets = np.concatenate([centre[:, None], noise], 1)
            weight = inside.any(1).astype(np.float32)
        else:
            targets = np.concatenate([np.broadcast_to(centre[:, None, None], (*inside.shape, 1)), noise], 2)
            weight = inside.astype(np.float32)
        return {"input_ids": context, "attention_mask": inside.astype(np.int32), "target_ids": targets,
                "weight": weight}

    # -- loss ---------------------------------------------------------------------------------
    def model_inputs(self, batch):
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "target_ids": batch["target_ids"]}

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        scores = model.apply({"params": params}, **self.model_inputs(batch)).logits.astype(jnp.float32)
        nll = -(jax.nn.log_sigmoid(scores[..., 0]) + jax.nn.log_sigmoid(-scores[..., 1:]).sum(-1))
        weight = batch["weight"]
        return (nll * weight).sum(), weight.sum()

    def eval_sums(self, model, params, batch):
        loss, weight = self.loss(model, params, batch, None)
        return {"loss": loss, "pairs": weight}

    def summarize(self, sums, complete):
        return {"eval_loss": float(sums["loss"] / max(sums["pairs"], 1.0))}


def kept_positions(corpus: Corpus, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``order``: the kept positions in stream order; ``rank``: each position's index in it (-1: dropped)."""
    order = np.flatnonzero(keep)
    rank = np.full(len(keep), -1, np.int64)
    rank[order] = np.arange(len(order))
    return order, rank


class Examples:
    """Training batches over shuffled centre positions; the epoch's subsampling and the
    batch's windows and negatives are drawn from its position in the data order."""

    def __init__(self, task: Word2VecTask, batches: BatchIterator):
        self.task, self.batches = task, batches
        self._epoch, self._kept = None, None

    def __iter__(self):
        return self

    def __next__(self):
        centres = next(self.batches)["position"]
        b, task = self.batches, self.task
        if self._epoch != b.epoch:  # this epoch's subsampling, over the whole stream
            rng = np.random.default_rng([b.seed, b.epoch, 0x5AB])
            keep = rng.random(len(task.train.tokens)) < task.keep_probability[task.train.tokens]
            self._epoch, self._kept = b.epoch, kept_positions(task.train, keep)
        return task.examples(task.train, self._kept, centres, np.random.default_rng([b.seed, b.epoch, b.index, 0x2F]))

    def state(self):
        return self.batches.state()

    def restore(self, state):
        self.batches.restore(state)
        self._epoch = None


def vocabulary(run_dir: Path, sentences: list[list[str]], min_count: int) -> tuple[list[str], np.ndarray]:
    """The run's vocabulary: built from the training sentences once, then read from ``vocab.json``."""
    from jaxlm.parallel.distributed import main_process_first

    path = run_dir / VOCAB_FILE

    def build():
        if not path.is_file():
            words, counts = build_vocab(sentences, min_count)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"words": words, "counts": counts.tolist()}, ensure_ascii=False))
            tmp.replace(path)

    main_process_first(build)
    saved = json.loads(path.read_text())
    return saved["words"], np.asarray(saved["counts"], np.int64)


# -- using the trained vectors ------------------------------------------------------------------
def load_vectors(run: str, step=None, best=False) -> tuple[list[str], np.ndarray]:
    """The words and input vectors of a word2vec run."""
    from jaxlm.checkpoint import load_run
    from jaxlm.config import validate_config

    config_dict, params, _ = load_run(run, step, best)
    config = validate_config(config_dict)
    if config.task.type != "word2vec":
        raise JaxlmError(f"{run} is a run of task: {config.task.type}; give a word2vec run (task: word2vec)")
    return run_vectors(run, params)


def run_vectors(run: str, params) -> tuple[list[str], np.ndarray]:
    """The words of a word2vec run (its ``vocab.json``) and their input vectors in ``params``."""
    from jaxlm.checkpoint import resolve

    words = json.loads((resolve(run)[0] / VOCAB_FILE).read_text())["words"]
    return words, np.asarray(params["embeddings"], np.float32)[:len(words)]


def write_word2vec(words: list[str], vectors: np.ndarray, path: Path) -> None:
    """The word2vec text format: ``count dim``, then ``word v1 ... vdim`` per line (what gensim's
    ``KeyedVectors.load_word2vec_format`` and ``model.pretrained_embeddings`` read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(f"{len(words)} {vectors.shape[1]}\n")
        for word, v in zip(words, vectors):
            f.write(word + " " + " ".join(f"{x:.6g}" for x in v) + "\n")
    tmp.replace(path)


def neighbors(words: list[str], vectors: np.ndarray, word: str, top_k: int = 10) -> list[tuple[str, float]]:
    """The ``top_k`` words of highest cosine similarity to ``word``."""
    index = {w: i for i, w in enumerate(words)}
    if word not in index:
        close = difflib.get_close_matches(word, words, n=3)
        hint = f"; close ones: {', '.join(close)}" if close else ""
        raise JaxlmError(f"{word!r} is not in the run's vocabulary of {len(words)} words{hint}")
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit[index[word]]
    sims[index[word]] = -np.inf
    best = np.argsort(-sims)[:top_k]
    return [(words[i], float(sims[i])) for i in best]


# -- `jaxlm embed` on a word2vec run ------------------------------------------------------------
def embed_words(args, config, params) -> int:
    """``jaxlm embed`` for a word2vec run: ``neighbors WORD``, ``--out FILE.txt`` (every vector in
    the word2vec text format), ``--plot pca|tsne`` (chosen words, default the ``--top-n`` most
    frequent), or the chosen words' vectors as JSON lines."""
    from jaxlm.analysis.embed import plot

    if config is None or config.task.type != "word2vec":
        where = args.run or args.model
        raise JaxlmError(f"`embed neighbors` lists a word2vec run's nearest words, and {where} is not a word2vec "
                         "run (task: word2vec); give one")
    words, vectors = run_vectors(args.run, params)
    if args.neighbors:
        if len(args.inputs) != 1:
            raise JaxlmError("give one word: jaxlm embed neighbors --run RUN WORD")
        for word, sim in neighbors(words, vectors, args.inputs[0], args.top_k):
            print(f"{sim:.4f}  {word}")
        return 0
    if args.out and not args.plot:
        write_word2vec(words, vectors, Path(args.out))
        print(f"wrote {len(words)} vectors of {vectors.shape[1]} numbers to {args.out} (word2vec text format); use "
              f"it with model.pretrained_embeddings={args.out} model.embedding_dim={vectors.shape[1]}")
        return 0
    chosen = args.inputs or words[:args.top_n]
    index = {w: i for i, w in enumerate(words)}
    missing = [w for w in chosen if w not in index]
    if missing:
        raise JaxlmError(f"not in the run's vocabulary: {', '.join(missing)}; choose words it has")
    chosen_vectors = vectors[[index[w] for w in chosen]]
    if args.plot:
        if not args.out:
            raise JaxlmError("--plot writes a figure: add --out fig.png")
        plot(chosen_vectors, None, args.plot, Path(args.out), f"word2vec vectors, {args.plot.upper()}", args.seed,
             names=chosen)
        print(f"wrote {args.out}: {args.plot.upper()} of {len(chosen)} words")
        return 0
    for word, v in zip(chosen, chosen_vectors):
        print(json.dumps({"input": word, "embedding": [round(float(x), 6) for x in v]}))
    return 0
