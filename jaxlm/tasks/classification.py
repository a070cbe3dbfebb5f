"""Sequence classification of single texts or text pairs (BERT's pooled ``[CLS]``, any
number of labels), evaluated with accuracy, precision, recall, F1 and a confusion matrix.

BERT-style models read ``[CLS] A [SEP] (B [SEP])`` rows of a WordPiece vocabulary; the
classic text models (TextCNN, RNN / GRU / LSTM; their config says ``tokenizer_kind = "word"``)
read single texts as plain word ids of a word-level vocabulary built from the training split.

The labelled rows are split per class into train / validation / test (``task.split``,
seeded by ``task.split_seed``, so runs with different ``run.seed`` share one split);
evaluation scores ``task.eval_split``. With ``task.packing`` several short examples share a row
(:mod:`jaxlm.data.packing`); the logits, and so every metric, are those of the unpacked rows.

Rows of ``data.paths`` / ``task.dataset`` are encoded once by ``jaxlm data prepare`` (or the
first ``train``) into memory-mapped ``.npy`` files (:mod:`jaxlm.tasks.classification_prepare`);
the sets shipped with jaxlm and ``task.augment`` runs are encoded in memory at every start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import Config
from jaxlm.data.bert_inputs import frame_texts
from jaxlm.data.labeled import Table, label_ids, read_dataset, read_files, stratified_split
from jaxlm.data.packing import pack_rows
from jaxlm.data.tokenizer import Tokenizer, get_tokenizer
from jaxlm.data.windows import flatten_windows, pool_logits, windowed
from jaxlm.errors import ConfigError, DataError, JaxlmError
from jaxlm.layers.attention import segment_mask
from jaxlm.models import head_of
from jaxlm.tasks.encoder import EncoderTask, encoder_tokenizer, framer
from jaxlm.train.losses import cross_entropy_sum
from jaxlm.train.metrics import classification_metrics

log = logging.getLogger("jaxlm")


def label_names(model_config) -> list[str] | None:
    """Class names in id order (``model.id2label``), or ``None`` when the classes are bare ids."""
    labels = model_config.id2label
    return [labels[i] for i in range(model_config.num_labels)] if labels else None


def texts_of(table: Table, column: str, key: str) -> list[str]:
    values = table.column(column, key)
    for row, v in enumerate(values):
        if not isinstance(v, str) or not v.strip():
            raise DataError(f"{table.where} row {row + 1}: {column!r} holds {v!r}, not a text; fix or drop the row")
    return values


def check_classes(labels: np.ndarray, names: list[str] | None, where: str) -> None:
    """Refuse data a classifier cannot learn from: no rows, or one class only."""
    if not len(labels):
        raise DataError(f"{where} holds no labelled rows; add examples (a header line, then one row per example)")
    present = np.unique(labels)
    if len(present) < 2:
        name = names[present[0]] if names else str(present[0])
        raise DataError(f"{where} has examples of one class only ({name!r}); a classifier needs examples of at "
                        "least two classes: add rows of the others")


def check_source(config: Config) -> None:
    if bool(config.task.dataset) == bool(config.data.paths):
        raise ConfigError("task: classification reads either data.paths (CSV / JSONL files) or task.dataset "
                          "(sentiment_en, sentiment_zh, reviews_zh, a Hugging Face datasets name or tfds:NAME): "
                          "set one")


def named_pair_column(t) -> bool:
    """Whether ``task.text_pair_column`` was set to a name other than the default: such a column must
    exist; the default name (which every saved config.yaml spells out) is used only when the data has it."""
    return "text_pair_column" in t.model_fields_set and \
        t.text_pair_column != type(t).model_fields["text_pair_column"].default


@dataclass
class LabelledRows:
    """A classification config's labelled rows, encoded: the ``splits`` (train, validation, test:
    dicts of row arrays, ``label`` included) and what built them."""

    tok: Tokenizer
    splits: list[dict[str, np.ndarray]]
    texts: list[str]
    parts: list[np.ndarray]
    where: str
    truncated: int


def encode_labelled(config: Config, run_dir: Path) -> LabelledRows:
    """Read the labelled rows, split them per class (``task.split``, ``task.split_seed``), get the
    tokenizer (``data.tokenizer.path``, or one trained on the training split; either kept in
    ``run_dir/tokenizer``) and encode every split: what training reads, whether in memory or
    prepared (:mod:`jaxlm.tasks.classification_prepare` passes its directory as ``run_dir``)."""
    check_source(config)
    t, model = config.task, config.model
    table = read_dataset(t.dataset, t.dataset_config, t.dataset_split) if t.dataset else read_files(config.data.paths)
    texts = texts_of(table, t.text_column, "task.text_column")
    pair_column = t.text_pair_column
    with_pairs = pair_column is not None and (pair_column in table.columns or named_pair_column(t))
    pairs = texts_of(table, pair_column, "task.text_pair_column") if with_pairs else None
    labels = label_ids(table.column(t.label_column, "task.label_column"), label_names(model), model.num_labels,
                       table.where)
    check_classes(labels, label_names(model), table.where)
    parts = stratified_split(labels, t.split, t.split_seed)
    if pairs and (uses_words(model) or reads_token_rows(model)):
        raise ConfigError(f"model.type={model.type} classifies single texts; {table.where} has a "
                          f"{pair_column!r} column: set task.text_pair_column=null or use a BERT model")
    if pairs and t.augment:
        raise ConfigError(f"task.augment augments single texts; {table.where} has a {pair_column!r} column: "
                          "set task.text_pair_column=null or drop task.augment")
    if pairs and t.long_text == "windows":
        raise ConfigError(f"task.long_text=windows reads single texts; {table.where} has a {pair_column!r} column: "
                          "set task.text_pair_column=null or task.long_text=truncate")
    if t.packing and uses_words(model):
        raise ConfigError(f"task.packing needs a Transformer encoder (bert, distilbert), not model.type="
                          f"{model.type}; set task.packing=false")
    if t.packing and (t.long_text == "windows" or t.augment):
        raise ConfigError("task.packing packs fixed rows of short texts; it does not combine with "
                          "task.long_text=windows or task.augment: drop one of them")
    train_texts = [texts[i] for i in parts[0]] + ([pairs[i] for i in parts[0]] if pairs else [])
    tok = classifier_tokenizer(config, train_texts, run_dir)
    rows, cut = TextEncoder(tok, config)(texts, pairs)
    if cut.any():
        held = f" (the model holds {model.max_positions})" if model.max_positions else ""
        limit = f"data.seq_len={config.data.seq_len} tokens{held}"
        if t.long_text == "windows":
            limit = f"task.max_windows={t.max_windows} windows of {limit}"
        if t.truncation == "error":
            raise DataError(f"{table.where} row {cut.argmax() + 1} and {cut.sum() - 1} more are longer than "
                            f"{limit}; raise data.seq_len or set task.truncation=truncate")
        log.info("truncated %d of %d texts of %s to %s; task.truncation=error refuses them instead",
                 cut.sum(), len(cut), table.where, limit)
    if t.packing:
        splits = [pack_rows({k: v[part] for k, v in rows.items()}, labels[part]) for part in parts]
    else:
        rows["label"] = labels
        splits = [{k: v[part] for k, v in rows.items()} for part in parts]
    return LabelledRows(tok, splits, texts, parts, table.where, int(cut.sum()))


class ClassificationTask(EncoderTask):
    """Rows of ``data.paths`` / ``task.dataset`` are prepared once into memory-mapped ``.npy`` files
    (:mod:`jaxlm.tasks.classification_prepare`) and read from there; the sets shipped with jaxlm and
    ``task.augment`` runs are encoded in memory at every start (see :func:`in_memory_reason`)."""

    windows = False
    """task.long_text=windows: rows are [texts, windows, length] and logits are pooled."""
    augment = None
    packing = False
    """task.packing: several examples per row, attention within each (segment ids)."""

    def __init__(self, config: Config, run_dir: Path):
        from jaxlm.tasks.classification_prepare import in_memory_reason, load_rows

        super().__init__(config)
        t, model = config.task, config.model
        self.head, self.num_labels = t.head, model.num_labels
        self.windows, self.pooling, self.packing = t.long_text == "windows", t.window_pooling, t.packing
        reason = in_memory_reason(config)
        if reason is None:
            tok, (self.train, valid, test) = load_rows(config, run_dir)
        else:
            (log.info if t.augment else log.debug)("classification rows encoded in memory: %s", reason)
            data = encode_labelled(config, run_dir)
            tok, (self.train, valid, test) = data.tok, data.splits
        self.encode = TextEncoder(tok, config)
        if uses_words(model):
            self.model_kwargs = word_model_kwargs(model, tok)
        self.valid = valid if t.eval_split == "validation" else test
        if not len(self.valid["label"]):
            raise ConfigError(f"task.eval_split={t.eval_split} but task.split={t.split} leaves it no rows")
        if t.augment:
            from jaxlm.data.text_augment import build_augmenter

            self.augment = build_augmenter(t.augment)
            self.train_texts = [data.texts[i] for i in data.parts[0]]
            self.train = {**self.train, "row": np.arange(len(data.parts[0]))}  # which text each batch row holds

    def train_iterator(self, batch_size, process_index=0, process_count=1):
        batches = super().train_iterator(batch_size, process_index, process_count)
        if self.augment is None:
            return batches
        return AugmentedBatches(batches, self.train_texts, self.augment, self.encode)

    def model_inputs(self, batch):
        if self.packing:
            inputs = {"input_ids": batch["input_ids"], "attention_mask": segment_mask(batch["segment_ids"]),
                      "position_ids": batch["position_ids"], "pooled_positions": batch["pooled_positions"]}
            if self.token_types:
                inputs["token_type_ids"] = batch["token_type_ids"]
            return inputs
        inputs = super().model_inputs(batch)
        return flatten_windows(inputs) if self.windows else inputs

    def logits(self, model, params, batch, dropout_rng):
        logits = self.apply(model, params, self.model_inputs(batch), dropout_rng).logits
        return pool_logits(logits, batch["window_mask"], self.pooling) if self.windows else logits

    def weights(self, batch):
        """Each example's weight: 0 for the zero rows that pad the last eval batch (and unused packed slots)."""
        if self.packing:
            return batch["label_weight"]
        return batch["window_mask"][:, 0] if self.windows else batch["attention_mask"][:, 0]

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        logits = self.logits(model, params, batch, dropout_rng)
        return cross_entropy_sum(logits, batch["label"], self.weights(batch), label_smoothing)

    def eval_sums(self, model, params, batch):
        logits = self.logits(model, params, batch, None)  # packed: [rows, examples per row, labels]
        return classification_sums(logits.reshape(-1, logits.shape[-1]), batch["label"].reshape(-1),
                                   self.weights(batch).reshape(-1), self.num_labels)

    def summarize(self, sums, complete):
        return classification_summary(sums)


class TextEncoder:
    """Texts (and pairs) -> the model's row arrays and which texts were cut: word ids for the
    classic text models, subword ids as the tokenizer frames a text for the decoders (padded with
    ``pad_token_id``), ``[CLS] A [SEP] (B [SEP])`` for BERT-style ones; with
    ``task.long_text=windows``, ``[texts, windows, length]`` arrays and a ``window_mask``."""

    def __init__(self, tok: Tokenizer, config: Config):
        t, self.length = config.task, config.data.seq_len
        self.plain = reads_token_rows(config.model)  # decoders: subword rows as the tokenizer frames them
        self.tok, self.words = tok, uses_words(config.model) or self.plain
        self.pad = getattr(config.model, "pad_token_id", None) or 0
        self.windows = t.long_text == "windows"
        self.max_windows = t.max_windows
        size = self.length if self.words else self.length - 2
        self.size, self.stride = size, t.window_stride or max(1, size // 2)
        self.framer = None if self.words else framer(tok, self.length)

    def frame(self, ids, pair_ids=None):
        if self.words:
            return word_rows(ids, self.length, self.pad)
        return frame_texts(ids, pair_ids, self.framer)

    def __call__(self, texts: list[str], pairs: list[str] | None = None):
        ids = self.tok.encode_batch(texts, add_special_tokens=self.plain)
        pair_ids = self.tok.encode_batch(pairs) if pairs else None
        if self.windows:
            return windowed(ids, self.size, self.stride, self.max_windows, self.frame)
        return self.frame(ids, pair_ids)


class AugmentedBatches:
    """Training batches whose texts are augmented afresh: row ``r`` of epoch ``e`` goes through
    the augmenter with a generator seeded by ``(run.seed, e, r)`` and is tokenized again, so
    ``state()`` / ``restore()`` (the wrapped iterator's) reproduce the augmentation exactly."""

    def __init__(self, batches, texts: list[str], augment, encode: TextEncoder):
        self.batches, self.texts, self.augment, self.encode = batches, texts, augment, encode

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.batches)
        b = self.batches
        rows = batch.pop("row")
        texts = [self.augment(self.texts[r], np.random.default_rng([b.seed, b.epoch, int(r), 0x7E47])) or self.texts[r]
                 for r in rows]
        encoded, _ = self.encode(texts)
        return {**batch, **encoded}

    def state(self):
        return self.batches.state()

    def restore(self, state):
        self.batches.restore(state)


def classification_sums(logits, labels, weights, num_labels: int) -> dict[str, jax.Array]:
    """An eval batch's summed loss, weight and ``[true, predicted]`` confusion matrix
    (rows of weight 0, the padding of the last batch, count nowhere)."""
    nll, count = cross_entropy_sum(logits, labels, weights)
    confusion = jnp.zeros((num_labels, num_labels)).at[labels, logits.argmax(-1)].add(weights)
    return {"nll": nll, "examples": count, "confusion": confusion}


def classification_summary(sums: dict) -> dict[str, float]:
    """``eval_loss`` and the ``eval_*`` metrics of :func:`classification_metrics` from summed statistics."""
    metrics = classification_metrics(sums["confusion"])
    return {"eval_loss": float(sums["nll"] / max(sums["examples"], 1.0)),
            **{f"eval_{k}": v for k, v in metrics.items()}}


def uses_words(model_config) -> bool:
    """Whether the model reads word ids of a word-level vocabulary (the classic text models)."""
    return getattr(model_config, "tokenizer_kind", None) == "word"


def reads_token_rows(model_config) -> bool:
    """Whether the model reads plain subword rows, framed as its tokenizer frames a text (Llama's BOS),
    and classifies from the last real token (the decoder families)."""
    return getattr(model_config, "tokenizer_kind", None) == "bpe"


def classifier_tokenizer(config: Config, train_texts: list[str] | Tokenizer, run_dir: Path) -> Tokenizer:
    """The model's tokenizer (:func:`word_tokenizer`, :func:`decoder_tokenizer` or the BERT-style
    ``encoder_tokenizer``), trained on ``train_texts``, or ``train_texts`` itself when it is a
    tokenizer already (prepared rows'), checked against the model either way."""
    if uses_words(config.model):
        return word_tokenizer(config, train_texts, run_dir)
    if reads_token_rows(config.model):
        return decoder_tokenizer(config, train_texts, run_dir)
    return encoder_tokenizer(config, train_texts, run_dir, needs=("[PAD]", "[CLS]", "[SEP]"))


def tokenizer_kind(model_config) -> str:
    """The kind of tokenizer :func:`classifier_tokenizer` trains for the model."""
    if uses_words(model_config):
        return "word"
    if reads_token_rows(model_config):
        return "bpe"
    return "roberta_bpe" if model_config.type == "roberta" else "wordpiece"


def decoder_tokenizer(config: Config, train_texts: list[str] | Tokenizer, run_dir: Path) -> Tokenizer:
    """The configured tokenizer (an imported decoder's own), or a byte-level BPE trained on ``train_texts``."""
    t = config.data.tokenizer
    tok = train_texts if isinstance(train_texts, Tokenizer) else \
        get_tokenizer(t.path, t.vocab_size, train_texts, run_dir / "tokenizer")
    if tok.vocab_size > config.model.vocab_size:
        raise DataError(f"the tokenizer in {t.path or run_dir / 'tokenizer'} has {tok.vocab_size} tokens but "
                        f"model.vocab_size={config.model.vocab_size}; set model.vocab_size={tok.vocab_size}")
    return tok


def word_tokenizer(config: Config, train_texts: list[str] | Tokenizer, run_dir: Path) -> Tokenizer:
    """The configured word vocabulary, or one built from ``train_texts`` (saved with the run,
    so a resumed, evaluated or served run reads the same ids)."""
    t = config.data.tokenizer
    where = t.path or run_dir / "tokenizer"
    tok = train_texts if isinstance(train_texts, Tokenizer) else \
        get_tokenizer(t.path, t.vocab_size, train_texts, run_dir / "tokenizer", kind="word",
                      min_frequency=t.min_frequency, lowercase=t.lowercase, segmenter=t.segmenter)
    if tok.token_id("<PAD>") != 0 or tok.token_id("<UNK>") is None:
        raise DataError(f"the tokenizer in {where} is not a word vocabulary with <PAD> = 0 and <UNK>; leave "
                        "data.tokenizer.path unset to build one from the training split")
    if tok.vocab_size > config.model.vocab_size:
        raise DataError(f"the word vocabulary in {where} has {tok.vocab_size} words but model.vocab_size="
                        f"{config.model.vocab_size}; set model.vocab_size={tok.vocab_size} (or lower "
                        "data.tokenizer.vocab_size)")
    return tok


def word_rows(ids: list[list[int]], length: int, pad: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``input_ids`` padded with ``pad`` (a word vocabulary's ``<PAD>``, 0) to ``length`` and their
    ``attention_mask``; longer texts are cut (the second value marks them)."""
    rows = np.full((len(ids), length), pad, np.int32)
    mask = np.zeros((len(ids), length), np.int32)
    for i, row in enumerate(ids):
        rows[i, :len(row[:length])] = row[:length]
        mask[i, :len(row[:length])] = 1
    return {"input_ids": rows, "attention_mask": mask}, np.asarray([len(r) > length for r in ids], bool)


def word_model_kwargs(model_config, tok: Tokenizer) -> dict:
    """Module arguments of a word model: the pretrained embeddings' initialiser, if any."""
    if not model_config.pretrained_embeddings:
        return {}
    from jaxlm.models.word_embeddings import pretrained_embedding_init

    return {"embedding_init": pretrained_embedding_init(model_config.pretrained_embeddings, tok.tok.get_vocab(),
                                                        model_config.vocab_size, model_config.embedding_dim)}


def classify(model, params, tokenizer: Tokenizer, text: str, text_pair: str | None = None,
             config: Config | None = None) -> list[tuple[str, float]]:
    """Every label of a sequence classifier with its probability for ``text`` (and
    ``text_pair``), most likely first; text beyond the model's positions is cut (logged),
    unless the run (``config``) reads long texts as windows."""
    if head_of(model) != "classification":
        raise JaxlmError(f"this is a {type(model).__name__}; predict needs a sequence classifier (a run of "
                         "task: classification, or a converted *ForSequenceClassification)")
    c = model.config
    if config is not None and getattr(config.task, "long_text", None) == "windows":
        if text_pair is not None:
            raise JaxlmError("this run reads single texts as windows (task.long_text=windows); give one TEXT")
        rows, cut = TextEncoder(tokenizer, config)([text])
        if cut.any():
            log.warning("the text is longer than task.max_windows=%d windows; its end was cut", config.task.max_windows)
        inputs = {k: jnp.asarray(v) for k, v in rows.items() if k in ("input_ids", "attention_mask")
                  or (k == "token_type_ids" and hasattr(c, "type_vocab_size"))}
        logits = model.apply({"params": params}, **flatten_windows(inputs)).logits
        return _ranked_logits(c, pool_logits(logits, jnp.asarray(rows["window_mask"]), config.task.window_pooling)[0])
    if uses_words(c) or reads_token_rows(c):
        if text_pair is not None:
            raise JaxlmError(f"a {c.type} model classifies single texts; give one TEXT")
        ids = tokenizer.encode(text, add_special_tokens=reads_token_rows(c)) or [tokenizer.token_id("<UNK>")]
        ids = ids[:c.max_positions] if c.max_positions else ids
        inputs = {"input_ids": jnp.asarray([ids], jnp.int32), "attention_mask": jnp.ones((1, len(ids)), jnp.int32)}
        return _ranked(model, params, inputs)
    first = [tokenizer.encode(text)]
    second = [tokenizer.encode(text_pair)] if text_pair is not None else None
    frame = framer(tokenizer, c.max_positions)
    frame.length = min(c.max_positions, len(first[0]) + len(second[0] if second else []) +
                       frame.overhead(pair=second is not None))
    rows, cut = frame_texts(first, second, frame)
    if cut.any():
        log.warning("the text is longer than the model's %d positions; its end was cut", c.max_positions)
    inputs = {k: jnp.asarray(v) for k, v in rows.items() if k != "token_type_ids" or hasattr(c, "type_vocab_size")}
    return _ranked(model, params, inputs)


def _ranked(model, params, inputs) -> list[tuple[str, float]]:
    return _ranked_logits(model.config, model.apply({"params": params}, **inputs).logits[0])


def _ranked_logits(c, logits) -> list[tuple[str, float]]:
    probs = np.asarray(jax.nn.softmax(logits.astype(jnp.float32)))
    names = label_names(c) or [str(i) for i in range(c.num_labels)]
    return [(names[i], float(probs[i])) for i in np.argsort(-probs)]
