"""Tasks: what to learn. Each supplies a data source and a loss for the one trainer.

A task knows which model head it needs, yields numpy batches (a resumable iterator for
training, a finite pass for evaluation), computes a summed loss with its weight, and turns
summed eval statistics into the reported ``eval_*`` metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Protocol

import jax
import numpy as np

from jaxlm.config import Config
from jaxlm.data.pipeline import BatchIterator

Batch = dict[str, Any]


class Task(Protocol):
    head: str
    """The model head to build (``causal_lm``, ``masked_lm``, ``classification``, ...)."""

    def train_iterator(self, batch_size: int, process_index: int, process_count: int) -> BatchIterator:
        """Batches forever, with ``state()`` / ``restore()`` of the position (a BatchIterator or a wrapper)."""

    def eval_batches(self, batch_size: int, limit: int | None) -> Iterator[dict[str, np.ndarray]]: ...

    def example_batch(self, batch_size: int) -> dict[str, np.ndarray]: ...

    def model_inputs(self, batch: Batch) -> dict[str, jax.Array]:
        """Keyword arguments for ``model.apply`` (used to initialise the model too)."""

    def loss(self, model, params, batch: Batch, dropout_rng, label_smoothing: float
             ) -> tuple[jax.Array, jax.Array]:
        """``(sum of per-example losses, sum of weights)`` for one (micro-)batch."""

    def eval_sums(self, model, params, batch: Batch) -> dict[str, jax.Array]:
        """Statistics summed over the batch: scalars, or arrays such as a confusion matrix."""

    def summarize(self, sums: dict[str, np.ndarray], complete: bool) -> dict[str, float]:
        """``complete``: the sums cover the whole validation split."""

    # Optional: ``param_groups() -> list[GroupSpec]`` (several players, each with its own optimizer:
    # jaxlm/train/groups.py) and ``held_fixed() -> {name: (config key, source, params)}`` (models the
    # task uses but never trains; the checkpoint keeps their fingerprints and a resume checks them).


def build_task(config: Config, run_dir: Path) -> Task:
    from jaxlm.tasks.causal_lm import CausalLMTask
    from jaxlm.tasks.classification import ClassificationTask
    from jaxlm.tasks.contrastive import ContrastiveTask
    from jaxlm.tasks.gan import GANTask
    from jaxlm.tasks.image_classification import ImageClassificationTask
    from jaxlm.tasks.mlm import MaskedLMTask
    from jaxlm.tasks.regression import RegressionTask
    from jaxlm.tasks.seq2seq import Seq2SeqTask
    from jaxlm.tasks.word2vec import Word2VecTask

    tasks = {"causal_lm": CausalLMTask, "mlm": MaskedLMTask, "classification": ClassificationTask,
             "seq2seq": Seq2SeqTask, "image_classification": ImageClassificationTask, "word2vec": Word2VecTask,
             "regression": RegressionTask, "contrastive": ContrastiveTask, "gan": GANTask}
    return tasks[config.task.type](config, run_dir)
