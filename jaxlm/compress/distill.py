"""Knowledge distillation (the ``distill:`` config section): a student trains on a frozen teacher's
soft targets, wrapping any task.

The loss of a (micro-)batch is

    alpha_kd * T^2 * KL(softmax(teacher / T) || softmax(student / T))   (Hinton et al. 2015)
  + alpha_ce * the task's own loss
  + alpha_hidden * (1 - cos(student hidden, teacher hidden))           (DistilBERT's cosine term)

summed over what the task scores (examples; masked-LM: the scored positions only, as DistilBERT
does; causal LM / seq2seq: the target tokens) and divided by its weight, so gradient accumulation
stays exact. The cosine term averages over real tokens, scaled to the same weight; with a
``layer_map`` it compares several student layers with teacher layers, and a learned projection
(``distill_projection`` params, trained with the student) maps the student's width to the
teacher's when they differ.

The student's own task supplies data and its loss: :class:`DistillTask` applies it through a
recorder that keeps the student's outputs and the inputs it was given, then runs the teacher on
the same inputs (or on the teacher's own tokenization of the same rows, ``teacher_*`` columns, for
a student of another family), frozen: its params are a constant input of the jitted step, never
differentiated, not in the optimizer state or the checkpoint (only their fingerprint is).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import ConfigError

log = logging.getLogger("jaxlm")
PROJECTION = "distill_projection"
TEACHER_PREFIX = "teacher_"


def soft_target_sum(student_logits, teacher_logits, weights, temperature: float) -> jax.Array:
    """``sum(weights * T^2 * KL(softmax(teacher / T) || softmax(student / T)))`` over the rows."""
    t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    kl = jnp.sum(jnp.exp(t) * (t - s), axis=-1)
    return jnp.sum(kl * weights.astype(jnp.float32)) * temperature**2


def cosine_mean(student_hidden, teacher_hidden, mask) -> jax.Array:
    """Mean over the positions where ``mask`` is 1 of ``1 - cos(student, teacher)`` (the last axis)."""
    s = student_hidden.astype(jnp.float32)
    t = teacher_hidden.astype(jnp.float32)
    cos = jnp.sum(s * t, -1) / jnp.maximum(jnp.linalg.norm(s, axis=-1) * jnp.linalg.norm(t, axis=-1), 1e-8)
    mask = jnp.broadcast_to(mask, cos.shape).astype(jnp.float32)
    return jnp.sum((1 - cos) * mask) / jnp.maximum(mask.sum(), 1.0)


class Recorder:
    """Stands in for the student model inside a task's loss: applies it (asking for hidden states
    when needed) and keeps its output and the keyword inputs it was called with."""

    def __init__(self, model, hidden: bool):
        self.model, self.hidden = model, hidden
        self.output, self.inputs = None, None

    def apply(self, variables, *args, **kwargs):
        if args:
            raise TypeError("distillation needs the task to call the model with keyword inputs")
        self.inputs = {k: v for k, v in kwargs.items() if k != "rngs"}
        if self.hidden:
            kwargs["output_hidden_states"] = True
        self.output = self.model.apply(variables, **kwargs)
        return self.output

    def __getattr__(self, name):
        return getattr(self.model, name)


def scored_weights(task, batch, student_logits) -> jax.Array:
    """The weight of each row of ``student_logits`` in the task's loss (which logits it scores)."""
    kind = type(task).__name__
    if kind == "ClassificationTask":
        return batch["attention_mask"][:, 0]
    if kind == "ImageClassificationTask":
        return batch["weight"]
    if kind == "CausalLMTask":
        return batch["loss_mask"]
    if kind == "MaskedLMTask":
        from jaxlm.tasks.mlm import ScoredPositions

        return ScoredPositions.of(batch["labels"], batch["attention_mask"],
                                  task.masker.most_selected(batch["labels"].shape[1])).weights
    if kind == "Seq2SeqTask":
        return batch["decoder_attention_mask"]
    raise ConfigError(f"distillation does not know how {kind} scores its logits")


class DistillTask:
    """``task`` trained against ``teacher`` (a model and its frozen params) per a ``distill:`` config."""

    def __init__(self, task, teacher_model, cfg, student_config, teacher_config):
        self.inner, self.teacher, self.cfg = task, teacher_model, cfg
        self.head = task.head
        self.student_layers, self.teacher_layers = _layer_map(cfg, student_config, teacher_config)
        self.widths = (_width(student_config), _width(teacher_config))

    def __getattr__(self, name):  # data, model inputs, eval and summaries are the inner task's
        return getattr(self.inner, name)

    def wrap_model(self, model):
        """The student, whose ``init`` also creates the learned projection from its hidden width to the
        teacher's (``distill_projection``) when the cosine term compares widths that differ."""
        s, t = self.widths
        if not self.cfg.alpha_hidden or s == t:
            return model
        from jaxlm.compress.quantize import model_subclass

        return model_subclass(model, _ProjectedInit, f"{s}x{t}", projection_shape=(s, t))

    needs_constants = True
    """The step hands :meth:`loss` its constants, where the teacher's params are (docs/constants.md)."""

    def eval_sums(self, model, params, batch, constants=None):
        """The student's own metrics (the teacher plays no part in evaluation)."""
        return self.inner.eval_sums(model, {k: v for k, v in params.items() if k != PROJECTION}, batch)

    def loss(self, model, params, batch, dropout_rng, label_smoothing=0.0, *, constants):
        c, teacher_params = self.cfg, constants["teacher"]
        student_params = {k: v for k, v in params.items() if k != PROJECTION}
        recorder = Recorder(model, hidden=bool(c.alpha_hidden))
        task_sum, weight = self.inner.loss(recorder, student_params, batch, dropout_rng, label_smoothing)
        out, inputs = recorder.output, dict(recorder.inputs)
        for k in list(inputs):
            if TEACHER_PREFIX + k in batch:  # the teacher's own tokenization of the same rows
                inputs[k] = batch[TEACHER_PREFIX + k]
        if "token_type_ids" in inputs and not hasattr(self.teacher.config, "type_vocab_size"):
            inputs.pop("token_type_ids")  # a DistilBERT teacher has no token types
        teacher_out = self.teacher.apply({"params": jax.lax.stop_gradient(teacher_params)}, **inputs,
                                         **({"output_hidden_states": True} if c.alpha_hidden else {}))
        teacher_out = jax.lax.stop_gradient(teacher_out)
        weights = scored_weights(self.inner, batch, out.logits)
        total = c.alpha_ce * task_sum
        if c.alpha_kd:
            total = total + c.alpha_kd * soft_target_sum(out.logits, teacher_out.logits, weights, c.temperature)
        if c.alpha_hidden:
            mask = batch.get("attention_mask")
            mask = jnp.ones(out.hidden_states[-1].shape[:-1]) if mask is None else mask
            cos = 0.0
            for i, j in zip(self.student_layers, self.teacher_layers):
                s_hidden = out.hidden_states[i]
                if PROJECTION in params:
                    s_hidden = s_hidden @ params[PROJECTION]["kernel"].astype(s_hidden.dtype)
                cos = cos + cosine_mean(s_hidden, teacher_out.hidden_states[j], mask)
            total = total + c.alpha_hidden * cos / len(self.student_layers) * weight
        return total, weight


class _ProjectedInit:
    """Mixed into the student's class by :meth:`DistillTask.wrap_model`: ``init`` adds the projection
    (``apply`` ignores params no module reads, so the model itself is unchanged)."""

    projection_shape = (0, 0)

    def init(self, rngs, *args, **kwargs):
        variables = super().init(rngs, *args, **kwargs)
        key = rngs if isinstance(rngs, jax.Array) else rngs["params"]
        s, t = self.projection_shape
        kernel = jax.random.normal(jax.random.fold_in(key, 1), (s, t)) / np.sqrt(s)
        return {**variables, "params": {**variables["params"], PROJECTION: {"kernel": kernel}}}


def _width(model_config) -> int | None:
    for name in ("hidden_size", "dim", "n_embd", "d_model"):
        if hasattr(model_config, name):
            return getattr(model_config, name)
    return None


def _depth(model_config) -> int | None:
    for name in ("num_hidden_layers", "n_layers", "n_layer"):
        if hasattr(model_config, name):
            return getattr(model_config, name)
    return None


def _layer_map(cfg, student, teacher) -> tuple[list[int], list[int]]:
    """Pairs of hidden-state indices (0 = embeddings, i = after layer i) the cosine compares:
    ``distill.layer_map`` (student layer -> teacher layer), else the last of each."""
    if not cfg.alpha_hidden:
        return [], []
    s_depth, t_depth = _depth(student), _depth(teacher)
    if s_depth is None or t_depth is None:
        raise ConfigError("distill.alpha_hidden compares Transformer hidden states; the student or the teacher has "
                          "none: set distill.alpha_hidden=0 (only logits are compared)")
    pairs = cfg.layer_map or {s_depth: t_depth}
    for s, t in pairs.items():
        if not (0 <= s <= s_depth and 0 <= t <= t_depth):
            raise ConfigError(f"distill.layer_map {s}: {t} is outside the student's 0..{s_depth} or the teacher's "
                              f"0..{t_depth} hidden states")
    return list(pairs), list(pairs.values())


def load_teacher(source: str):
    """``(model, params, run config or None, tokenizer or None, tokenizer directory or None)`` of a
    jaxlm run or a Hugging Face directory; a quantized teacher is dequantized."""
    from jaxlm.checkpoint import checkpoint_dir, resolve
    from jaxlm.cli import load_model, tokenizer_of
    from jaxlm.compress.quantize import dequantize_params, is_quantized
    from jaxlm.data.tokenizer import load_tokenizer

    path = Path(source)
    if checkpoint_dir(resolve(path)[0]).is_dir():
        model, params, config = load_model(str(path), None)
        run_dir = resolve(path)[0]
        tokenizer_path = run_dir / "tokenizer" if (run_dir / "tokenizer").is_dir() else config.data.tokenizer.path
        tokenizer = tokenizer_of(str(path), None, config) if tokenizer_path else None
    elif (path / "config.json").is_file():
        model, params, config = load_model(None, str(path))
        tokenizer_path = path if any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "vocab.json")) \
            else None
        tokenizer = load_tokenizer(path) if tokenizer_path else None
    else:
        raise ConfigError(f"distill.teacher={source} is neither a jaxlm run (checkpoints/) nor a Hugging Face "
                          "directory (config.json)")
    if is_quantized(params):
        params = dequantize_params(params)
    return model, params, config, tokenizer, tokenizer_path


# ---------------------------------------------------------------------------------------------
# Building the distillation of a run: the teacher, its checks, its inputs


HEADS = {"classification": {"classification"}, "image_classification": {"image_classification"},
         "masked_lm": {"masked_lm", "pretraining"}, "causal_lm": {"causal_lm"}, "seq2seq": {"seq2seq"}}


def build_distillation(config, task, run_dir: Path):
    """``(DistillTask, teacher params)`` for a config with a ``distill:`` section; the teacher must
    score what the student scores: the same labels (classification), the same vocabulary (token
    predictions)."""
    from jaxlm.models import head_of

    cfg = config.distill
    if getattr(config.task, "sentence_pairs", None):
        raise ConfigError("distillation of masked-LM pretraining compares token predictions only: set "
                          "task.sentence_pairs=null (DistilBERT dropped next-sentence prediction too)")
    model, params, teacher_config, tokenizer, tokenizer_path = load_teacher(cfg.teacher)
    teacher_head = head_of(model)
    if teacher_head not in HEADS.get(task.head, {task.head}):
        raise ConfigError(f"distill.teacher={cfg.teacher} is a {type(getattr(model, 'module', model)).__name__}; "
                          f"this {config.task.type} student needs a teacher with a {task.head} head")
    tm, sm = model.config, config.model
    if task.head in ("classification", "image_classification"):
        if tm.num_labels != sm.num_labels or (tm.id2label and sm.id2label and tm.id2label != sm.id2label):
            raise ConfigError(f"distill.teacher={cfg.teacher} predicts {tm.num_labels} labels {_names(tm)} but the "
                              f"student {sm.num_labels} {_names(sm)}; distill between models of one label set")
    else:
        from jaxlm.data.tokenizer import load_tokenizer

        student_tok = load_tokenizer(config.data.tokenizer.path or run_dir / "tokenizer")
        if tokenizer is None or tokenizer.tok.get_vocab() != student_tok.tok.get_vocab():
            raise ConfigError(f"distill.teacher={cfg.teacher} has another vocabulary than the student "
                              f"({0 if tokenizer is None else tokenizer.vocab_size} vs {student_tok.vocab_size} tokens);"
                              f" give the student the teacher's tokenizer: data.tokenizer.path={tokenizer_path}")
    if task.head == "classification":
        _add_teacher_columns(config, task, model, tokenizer_path, teacher_config)
    if cfg.alpha_hidden and _depth(sm) is None:
        raise ConfigError("distill.alpha_hidden compares hidden states, which this student does not have: set "
                          "distill.alpha_hidden=0")
    log.info("distilling from %s (%s)", cfg.teacher, type(getattr(model, "module", model)).__name__)
    return DistillTask(task, model, cfg, sm, tm), params


def _names(model_config) -> str:
    labels = model_config.id2label
    return f"({', '.join(labels[i] for i in sorted(labels))})" if labels else ""


def _add_teacher_columns(config, task, teacher, tokenizer_path, teacher_config) -> None:
    """When the teacher reads the texts through another tokenizer (a BERT teacher of a TextCNN),
    its own inputs for the same training rows ride in the batches as ``teacher_*`` columns."""
    from jaxlm.config import validate_config
    from jaxlm.tasks.classification import ClassificationTask

    student_tok = Path(config.data.tokenizer.path or Path(config.run.out_dir) / "tokenizer")
    if tokenizer_path is not None and _same_tokenizer(student_tok, Path(tokenizer_path)) \
            and type(teacher.config) is type(config.model):
        return
    seq_len = teacher_config.data.seq_len if teacher_config is not None else min(128, teacher.config.max_positions)
    tree = config.model_dump(mode="json")
    tree.update(model=teacher.config.model_dump(mode="json"), distill=None, qat=None, prune=None,
                data={**tree["data"], "seq_len": seq_len, "tokenizer": {"path": str(tokenizer_path)}})
    tree["model"]["init_from"] = None
    with tempfile.TemporaryDirectory() as scratch:  # the task keeps a copy of its tokenizer: not in the run
        teacher_task = ClassificationTask(validate_config(tree), Path(scratch))
    if not np.array_equal(teacher_task.train["label"], task.train["label"]):
        raise ConfigError("the teacher's rows do not line up with the student's; keep task.split and task.split_seed")
    for k, v in teacher_task.model_inputs(teacher_task.train).items():
        task.train[TEACHER_PREFIX + k] = v


def _same_tokenizer(a: Path, b: Path) -> bool:
    from jaxlm.data.tokenizer import same_vocabulary

    try:
        return same_vocabulary(a, b)
    except Exception:  # noqa: BLE001 - a missing or unreadable tokenizer is not the same one
        return False


# ---------------------------------------------------------------------------------------------
# jaxlm distill init TEACHER --layers 0,2,4,7,9,11 --out RUN


def bert_to_distilbert(params, config):
    """A BERT's params and config as a DistilBERT's (DistilBERT's extraction script, plus one
    refinement: the token-type embedding of segment 0, which BERT adds to every single-segment
    token, is folded into the position embeddings, so the embeddings come out exactly as BERT's).
    Its MLM head maps one to one; a classifier gets BERT's pooler as its ``pre_classifier``
    (DistilBERT applies ReLU where BERT's pooler applies tanh: a start for fine-tuning)."""
    from flax import traverse_util

    from jaxlm.models.distilbert import DistilBertConfig

    if config.variant_changes() or config.hidden_act not in ("gelu", "gelu_new", "relu"):
        raise ConfigError(f"a DistilBERT student needs a BERT of the reference design; this one uses "
                          f"{', '.join(config.variant_changes())}")
    flat = traverse_util.flatten_dict(params)
    prefix = ("bert",) if any(p[0] == "bert" for p in flat) else ()
    trunk = {p[len(prefix):]: x for p, x in flat.items() if p[:len(prefix)] == prefix}
    out = {}
    renames = {"attention_LayerNorm": "sa_layer_norm", "intermediate": "ffn_lin1", "output": "ffn_lin2",
               "output_LayerNorm": "output_layer_norm"}
    attention = {"query": "q_lin", "key": "k_lin", "value": "v_lin", "output": "out_lin"}
    for path, x in trunk.items():
        if path[0] == "embeddings":
            if path[1] == "token_type_embeddings":
                continue
            if path[1] == "position_embeddings":
                x = x + trunk[("embeddings", "token_type_embeddings", "embedding")][0]
            out[("distilbert", *path)] = x
        elif path[0].startswith("layer_"):
            if path[1] == "attention":
                out[("distilbert", path[0], "attention", attention[path[2]], *path[3:])] = x
            else:
                out[("distilbert", path[0], renames[path[1]], *path[2:])] = x
        elif path[0] == "pooler":
            out[("pre_classifier", *path[1:])] = x
    heads = {("cls", "predictions", "transform"): ("vocab_transform",),
             ("cls", "predictions", "transform_LayerNorm"): ("vocab_layer_norm",),
             ("cls", "predictions", "bias"): ("vocab_projector_bias",), ("classifier",): ("classifier",)}
    for path, x in flat.items():
        for source, target in heads.items():
            if path[:len(source)] == source:
                out[(*target, *path[len(source):])] = x
    student = DistilBertConfig(
        vocab_size=config.vocab_size, max_position_embeddings=config.max_position_embeddings,
        n_layers=config.num_hidden_layers, n_heads=config.num_attention_heads, dim=config.hidden_size,
        hidden_dim=config.intermediate_size, dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_probs_dropout_prob, activation=config.hidden_act,
        initializer_range=config.initializer_range, pad_token_id=config.pad_token_id, num_labels=config.num_labels,
        id2label=config.id2label, pruned_heads=config.pruned_heads)
    return traverse_util.unflatten_dict(out), student


def init_student(teacher: str, out: str, layers: list[int], to: str | None = None) -> str:
    """Write a student run initialised from ``teacher``: its embeddings, the chosen ``layers`` (in
    this order) and its head; ``to="distilbert"`` turns a BERT teacher into a DistilBERT."""
    from jaxlm.compress.heads import keep_layers
    from jaxlm.compress.quantize import is_quantized
    from jaxlm.compress.runs import check_out, read_run, with_out_dir, write_run
    from jaxlm.models import build_model, head_of

    check_out(out)
    src = read_run(teacher)
    if is_quantized(src.params):
        raise ConfigError(f"{teacher} is quantized; initialise the student from the float teacher")
    head = head_of(src.model)
    params, mc = keep_layers(src.params, src.config.model, layers)
    if to and to != mc.type:
        if (mc.type, to) != ("bert", "distilbert"):
            raise ConfigError(f"--to {to}: a {mc.type} teacher gives a {mc.type} student (or a BERT a DistilBERT)")
        if head not in ("masked_lm", "classification"):
            raise ConfigError(f"a DistilBERT student has masked_lm and classification heads; the teacher is {head}")
        params, mc = bert_to_distilbert(params, mc)
    mc = mc.model_copy(update={"init_from": None})
    config = with_out_dir(src.config, out, model=mc.model_dump(mode="json"))
    model = build_model(mc, head)
    write_run(src, out, params, config=config, model=model, student={"teacher": teacher, "layers": layers})
    n = sum(x.size for x in jax.tree.leaves(params))
    return (f"wrote a {len(layers)}-layer {type(model).__name__} ({n:,} params) from {teacher}'s layers {layers} to "
            f"{out}; train it with model.init_from={out} distill.teacher={teacher}")
