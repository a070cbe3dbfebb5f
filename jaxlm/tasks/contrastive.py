"""Contrastive learning of an encoder's embedding output: SimCLR on images, SimCSE on text.

Each training example gives two views, embedded in one forward pass of the encoder plus its
projection head (:class:`~jaxlm.models.contrastive.ContrastiveModel`):
  images     two augmented views (jaxlm/data/views.py, dm-pix), seeded per example;
  text pairs the text and its pair (supervised SimCSE, ``task.text_pair_column``);
  text       the same text twice through different dropout masks (unsupervised SimCSE).
The loss (``task.loss``: NT-Xent, InfoNCE, triplet, margin; jaxlm/train/contrastive_losses.py)
compares the projections of the whole global batch: the embeddings are gathered from all
data-parallel devices first, so every example is every other's negative and an 8-device mesh
computes the loss one device would. Hence no gradient accumulation: micro-batches would shrink
the negatives.

Evaluation embeds fixed views of the held-out split (images: seeded by row; text: each pair,
or adjacent sentences of the held-out documents for unsupervised text) and reports
``eval_loss`` and, on the pooled embeddings, Wang & Isola's ``eval_alignment`` and
``eval_uniformity`` (lower is better for both) and ``eval_top1`` (how often a view's nearest
neighbour among the other views is its own pair).
"""

from __future__ import annotations

import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.config import Config
from jaxlm.data.augment import SEED_KEY, AugmentSeeds
from jaxlm.data.bert_inputs import frame_texts, split_sentences
from jaxlm.data.corpus import load_documents, split_documents
from jaxlm.data.images import load_images, normalize
from jaxlm.data.labeled import read_dataset, read_files, stratified_split
from jaxlm.data.views import two_views
from jaxlm.errors import ConfigError, DataError
from jaxlm.models import contrastive_trunk
from jaxlm.tasks.base import ArrayTask
from jaxlm.tasks.classification import texts_of
from jaxlm.tasks.encoder import encoder_tokenizer, framer
from jaxlm.tasks.image_classification import check_fits
from jaxlm.train import contrastive_losses as losses

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def is_image_model(model_config) -> bool:
    return "pixel_values" in model_config.dummy_inputs()


def gathered(x: jax.Array) -> jax.Array:
    """``x`` replicated on every device of the mesh (an all-gather of the batch axis), so the loss
    sees every device's embeddings as negatives; a no-op outside a mesh."""
    return nn.with_logical_constraint(x, (None,) * x.ndim)


class ContrastiveTask(ArrayTask):
    def __init__(self, config: Config, run_dir: Path):
        t, model = config.task, config.model
        self.config, self.t, self.head, self.seed = config, t, t.head, config.run.seed
        self.images = is_image_model(model)
        self.model_kwargs = projection_settings(t)
        check_settings(config)
        if self.images:
            self._read_images()
        else:
            self._read_text(run_dir)

    # -- data ----------------------------------------------------------------------------------

    def _read_images(self):
        t, model = self.t, self.config.model
        images = load_images(t.dataset or "digits", t.dataset_config, t.dataset_split, t.image_column,
                             t.label_column)
        check_fits(images, model)
        if len(t.mean) not in (1, images.shape[2]):
            raise ConfigError(f"task.mean / task.std have {len(t.mean)} values but the images have "
                              f"{images.shape[2]} channels; give one value or one per channel")
        _, labels = np.unique(np.asarray([str(v) for v in images.labels]), return_inverse=True)
        rows = {"pixel_values": images.pixels, "label": labels.astype(np.int32),
                "weight": np.ones(len(labels), np.float32)}
        self._split(rows, stratified_split(labels, self.t.split, self.t.split_seed))
        self.valid["view_seed"] = np.arange(len(self.valid["label"]), dtype=np.uint32)

    def _read_text(self, run_dir: Path):
        t, config = self.t, self.config
        paths = config.data.paths or []
        if t.dataset or (paths and all(Path(p).suffix in TABLE_SUFFIXES for p in paths)):
            table = read_dataset(t.dataset, t.dataset_config, t.dataset_split) if t.dataset else read_files(paths)
            texts = texts_of(table, t.text_column, "task.text_column")
            pair = t.text_pair_column
            pairs = texts_of(table, pair, "task.text_pair_column") if pair and pair in table.columns else None
            labels = self._labels(table.column(t.label_column, "task.label_column")) \
                if t.positives == "labels" else np.arange(len(texts))
            parts = np.split(np.random.default_rng(t.split_seed).permutation(len(texts)),
                             np.round(np.cumsum(t.split)[:-1] * len(texts)).astype(int))
            parts = [np.sort(p) for p in parts]
            train_texts = [texts[i] for i in parts[0]] + ([pairs[i] for i in parts[0]] if pairs else [])
            self.paired = pairs is not None
        else:
            if t.positives == "labels":
                raise ConfigError("task.positives=labels needs labelled rows: give CSV / JSONL data.paths or "
                                  "task.dataset with task.label_column")
            train_docs, valid_docs = split_documents(load_documents(paths or None), config.data.validation_fraction)
            train_sentences = [s for d in train_docs for s in split_sentences(d)]
            valid_pairs = [(a, b) for d in valid_docs for p in d.split("\n\n")
                           for a, b in zip(split_sentences(p), split_sentences(p)[1:])]
            texts = train_sentences + [a for a, _ in valid_pairs]
            pairs = train_sentences + [b for _, b in valid_pairs]  # training rows are their own pair
            labels = np.arange(len(texts))
            n = len(train_sentences)
            parts = [np.arange(n), np.arange(n, len(texts)), np.arange(n, len(texts))]
            train_texts, self.paired = train_sentences, False
        if not self.paired and not self.config.model.uses_dropout:
            raise ConfigError("unsupervised SimCSE makes its two views with dropout, but the model's dropout rates "
                              "are 0; raise them (e.g. model.hidden_dropout_prob=0.1) or give text pairs")
        tok = encoder_tokenizer(config, train_texts, run_dir, needs=("[PAD]", "[CLS]", "[SEP]"))
        frame = framer(tok, config.data.seq_len)
        first, cut = frame_texts(tok.encode_batch(texts), None, frame)
        rows = {**first, "label": labels.astype(np.int32)}
        if pairs is not None:
            second, cut2 = frame_texts(tok.encode_batch(pairs), None, frame)
            rows.update({f"pair_{k}": v for k, v in second.items()})
            cut |= cut2
        if cut.any() and t.truncation == "error":
            raise DataError(f"{cut.sum()} texts are longer than data.seq_len={config.data.seq_len} tokens; raise "
                            "data.seq_len or set task.truncation=truncate")
        self._split(rows, parts)
        if not self.paired:
            self.train = {k: v for k, v in self.train.items() if not k.startswith("pair_")}

    def _labels(self, values) -> np.ndarray:
        if any(v is None or (isinstance(v, str) and not v.strip()) for v in values):
            raise DataError(f"task.label_column={self.t.label_column!r} has empty values; task.positives=labels "
                            "needs a label on every row")
        return np.unique(np.asarray([str(v).strip() for v in values]), return_inverse=True)[1]

    def _split(self, rows, parts):
        self.train, valid, test = ({k: v[p] for k, v in rows.items()} for p in parts)
        self.valid = valid if self.t.eval_split == "validation" else test
        if not len(self.valid["label"]):
            raise ConfigError(f"task.eval_split={self.t.eval_split} but task.split={self.t.split} leaves it no rows")

    def train_iterator(self, batch_size, process_index=0, process_count=1):
        return AugmentSeeds(super().train_iterator(batch_size, process_index, process_count))

    # -- model -------------------------------------------------------------------------------

    def model_inputs(self, batch):
        if self.images:
            return {"pixel_values": normalize(batch["pixel_values"], self.t.mean, self.t.std)}
        keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if hasattr(self.config.model, "type_vocab_size")
                                                  else [])
        return {k: batch[k] for k in keys}

    def _valid(self, batch):
        return batch["weight"] > 0 if self.images else batch["attention_mask"][:, 0] > 0

    def embed_views(self, model, params, batch, dropout_rng, train: bool):
        """Projections and pooled embeddings of both views: ``(z1, z2, h1, h2)``, one forward pass."""
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else None
        if self.images:
            seeds = batch[SEED_KEY] if train else batch["view_seed"]
            v1, v2 = two_views(jnp.asarray(batch["pixel_values"], jnp.float32) / 255, seeds, self.t.views)
            x = normalize(jnp.concatenate([v1, v2]) * 255, self.t.mean, self.t.std)
            out = model.apply({"params": params}, pixel_values=x, rngs=rngs)
        else:
            first = self.model_inputs(batch)
            second = {k: batch[f"pair_{k}"] for k in first} if "pair_input_ids" in batch else first
            both = {k: jnp.concatenate([first[k], second[k]]) for k in first}
            out = model.apply({"params": params}, **both, rngs=rngs)
        z1, z2 = jnp.split(gathered(out.logits.astype(jnp.float32)), 2)
        h1, h2 = jnp.split(gathered(out.last_hidden_state.astype(jnp.float32)), 2)
        return z1, z2, h1, h2

    def _objective(self, z1, z2, batch, key):
        t = self.t
        valid = gathered(self._valid(batch))
        labels = gathered(batch["label"]) if t.positives == "labels" else jnp.arange(len(valid))
        if t.loss == "infonce":
            return losses.info_nce(z1, z2, valid, t.temperature, t.num_negatives, key)
        z, labels, valid = jnp.concatenate([z1, z2]), jnp.concatenate([labels, labels]), jnp.concatenate([valid, valid])
        if t.loss == "ntxent":
            return losses.ntxent(z, labels, valid, t.temperature, t.num_negatives, key)
        z = losses.l2_normalize(z)
        if t.loss == "triplet":
            return losses.triplet(z, labels, valid, t.margin, t.mining)
        return losses.margin_contrastive(z, labels, valid, t.margin)

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0):
        z1, z2, _, _ = self.embed_views(model, params, batch, dropout_rng, train=True)
        key = jax.random.key(gathered(batch[SEED_KEY])[0]) if SEED_KEY in batch else jax.random.key(0)
        return self._objective(z1, z2, batch, key)

    def eval_sums(self, model, params, batch):
        z1, z2, h1, h2 = self.embed_views(model, params, batch, None, train=False)
        loss, weight = self._objective(z1, z2, batch, jax.random.key(0))
        return {"loss": loss, "weight": weight, **losses.alignment_uniformity(h1, h2, gathered(self._valid(batch)))}

    def summarize(self, sums, complete):
        pairs = max(sums["pairs"], 1.0)
        uniformity = sums["uniformity_exp"] / max(sums["batches"], 1.0)
        return {"eval_loss": float(sums["loss"] / max(sums["weight"], 1.0)),
                "eval_alignment": float(sums["alignment"] / pairs),
                "eval_uniformity": math.log(uniformity) if uniformity > 0 else float("-inf"),
                "eval_top1": float(sums["top1"] / pairs)}


def projection_settings(task_config) -> dict:
    """The :class:`~jaxlm.models.contrastive.ContrastiveModel` arguments a contrastive task's settings give."""
    t = task_config
    return {"projection_dims": tuple(t.projection_dims), "projection_activation": t.projection_activation,
            "pooling": t.pooling}


def check_settings(config: Config) -> None:
    """Settings the contrastive loss cannot honour: one line each, before any data is read."""
    t, trainer = config.task, config.trainer
    contrastive_trunk(config.model)  # the model has an embedding output
    if trainer.grad_accum_steps > 1:
        raise ConfigError("task: contrastive scores each example against the whole batch; gradient accumulation "
                          "would shrink the negatives to a micro-batch: set trainer.grad_accum_steps=1")
    if t.loss == "infonce" and t.positives == "labels":
        raise ConfigError("task.loss=infonce pairs each first view with its own second view; for "
                          "task.positives=labels use task.loss=ntxent, triplet or margin")
    smallest = min(trainer.batch_size, trainer.eval_batch_size or trainer.batch_size)
    available = smallest - 1 if t.loss == "infonce" else 2 * smallest - 2
    if available < 1 or (t.num_negatives or 0) > available:
        wanted = t.num_negatives or 1
        need = wanted + 1 if t.loss == "infonce" else (wanted + 3) // 2
        what = f"task.num_negatives={t.num_negatives}" if t.num_negatives else "at least one negative"
        raise ConfigError(f"{what} needs a batch of {need} or more (a batch of {smallest} gives each anchor "
                          f"{max(available, 0)} with task.loss={t.loss}); raise trainer.batch_size (and "
                          "trainer.eval_batch_size) or lower task.num_negatives")
