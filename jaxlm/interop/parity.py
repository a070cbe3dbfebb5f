"""Measure how exactly jaxlm reproduces transformers (PyTorch) on a checkpoint directory.

Outputs (every output, hidden state and attention map, at non-padded positions), the
gradients of a loss touching every output, and the params after one AdamW step. Text
models take token ids; image models (ViT) ``pixel_values``, NCHW for PyTorch and
transposed to NHWC for jaxlm. Used by
the parity tests and ``benchmarks/parity_table.py``; to validate a real checkpoint::

    d = "path/to/bert-base-uncased"
    compare_outputs(d, example_inputs(transformers.AutoConfig.from_pretrained(d)))  # or your own ids

Needs torch and transformers (the ``[torch]`` extra). Everything runs in float32 with
``jax.default_matmul_precision("highest")`` so GPUs do not drop to TF32.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import transformers
from flax import traverse_util
from transformers.core_model_loading import revert_weight_conversion

from jaxlm.interop import walker
from jaxlm.interop.hf import from_pretrained
from jaxlm.models import MODEL_FAMILIES

# Tiny transformers configs, one per family: two layers, sizes that cannot be confused.
TINY = {
    "bert": dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=64, type_vocab_size=2, num_labels=3),
    "distilbert": dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64,
                       num_labels=3),
    "gpt2": dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=98, eos_token_id=98),
    "vit": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=12,
                patch_size=4, num_channels=3, num_labels=3),
    # RoBERTa's own pad id (1): positions start at 2, padding sits at 1
    "roberta": dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    max_position_embeddings=64, type_vocab_size=1, num_labels=3),
    # grouped-query attention (2 key/value heads for 4), linear rope scaling, untied, biased projections
    "llama": dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0,
                  rope_scaling={"rope_type": "linear", "factor": 2.0}, attention_bias=True, mlp_bias=True,
                  pad_token_id=0, bos_token_id=1, eos_token_id=98, num_labels=3),
    # multi-query attention, tied embeddings, a sliding window of 3 in the second layer
    "qwen2": dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True, use_sliding_window=True,
                  sliding_window=3, max_window_layers=1, pad_token_id=0, bos_token_id=1, eos_token_id=98,
                  num_labels=3),
    # a sliding window of 4 in every layer, head_dim 16 (not hidden_size / heads), llama3 rope scaling
    "mistral": dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, max_position_embeddings=64, sliding_window=4,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                    pad_token_id=0, bos_token_id=1, eos_token_id=98, num_labels=3),
}
# More tiny settings of one architecture, named for the parity table: config fields over TINY's.
TINY_VARIANTS = {
    "LlamaForCausalLM (dynamic rope past 4 positions, tied)": (
        "LlamaForCausalLM", dict(max_position_embeddings=4, rope_scaling={"rope_type": "dynamic", "factor": 3.0},
                                 tie_word_embeddings=True, attention_bias=False, mlp_bias=False)),
    "LlamaForCausalLM (llama3 rope, no biases)": (
        "LlamaForCausalLM", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
                                 attention_bias=False, mlp_bias=False)),
}
# Qwen2-0.5B's shapes (494M parameters, tied embeddings): the full-size decoder check.
QWEN2_0_5B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151643)
NOT_COMPARED = {"loss", "past_key_values", "cross_attentions"}  # the last: empty, BERT as encoder


def random_checkpoint(architecture: str, out_dir: str | os.PathLike, *, tiny: bool = True, seed: int = 0,
                      **config) -> Path:
    """Save a random-weight transformers ``architecture`` (tiny, or the library's default size, with
    ``config`` fields overridden, e.g. ``n_positions=128``) to ``out_dir``.

    Every weight, bias and LayerNorm parameter gets noise on top of transformers' own
    initialisation, so a bias or LayerNorm mapped wrongly cannot hide behind zeros and ones.
    """
    cls = getattr(transformers, architecture)
    kwargs = TINY[cls.config_class.model_type] if tiny else {}
    if architecture.endswith("QuestionAnswering"):
        kwargs = {**kwargs, "num_labels": 2}
    kwargs = {**kwargs, **config}
    torch.manual_seed(seed)
    model = cls(cls.config_class(**kwargs))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return Path(out_dir)


def example_inputs(config, batch: int = 2, length: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs as transformers takes them. Text: random ids; every row after the first padded
    (``pad_token_id``, else 0) over its last ``row`` positions; token types 0 then 1 when the model has them.
    Images: standard-normal ``pixel_values`` ``[batch, channels, height, width]``."""
    rng = np.random.default_rng(seed)
    if getattr(config, "num_channels", None):
        size = (batch, config.num_channels, config.image_size, config.image_size)
        return {"pixel_values": rng.standard_normal(size).astype(np.float32)}
    ids = rng.integers(1, config.vocab_size, (batch, length))
    pad = getattr(config, "pad_token_id", None) or 0
    if pad:  # real tokens never equal the pad id (RoBERTa's positions skip it)
        ids = np.where(ids == pad, 0, ids)
    mask = np.ones((batch, length), np.int64)
    for row in range(1, batch):
        mask[row, length - min(row * 2, length - 1):] = 0
    inputs = {"input_ids": np.where(mask, ids, pad), "attention_mask": mask}
    if getattr(config, "type_vocab_size", 0) > 1:
        inputs["token_type_ids"] = (np.arange(length) >= length // 2).astype(np.int64)[None].repeat(batch, 0)
    return inputs


def compare_outputs(model_dir: str | os.PathLike, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Max-abs difference per output of transformers' forward pass (hidden states and
    attentions: the worst layer), at positions the attention mask keeps."""
    ref = _torch_model(model_dir)
    model, params = from_pretrained(model_dir)
    with torch.no_grad():
        want = ref(**_to_torch(inputs), output_hidden_states=True, output_attentions=True)
    with jax.default_matmul_precision("highest"):
        got = model.apply({"params": params}, **_to_jax(inputs), output_hidden_states=True, output_attentions=True)
    keep = _keep(inputs)
    diffs = {}
    for name, value in want.items():
        if name in NOT_COMPARED:
            continue
        if name == "attentions":  # [batch, heads, query, key]: keep the real queries
            pairs = [(w.numpy().transpose(0, 2, 1, 3), np.asarray(g).transpose(0, 2, 1, 3))
                     for w, g in zip(value, got.attentions, strict=True)]
        elif name == "hidden_states":
            pairs = list(zip((w.numpy() for w in value), map(np.asarray, got.hidden_states), strict=True))
        else:
            pairs = [(value.numpy(), np.asarray(getattr(got, name)))]
        diffs[name] = max(float(np.abs(_kept(w, keep) - _kept(g, keep)).max()) for w, g in pairs)
    return diffs


def compare_training_step(model_dir: str | os.PathLike, inputs: dict[str, np.ndarray], *, lr: float = 1e-3,
                          b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                          weight_decay: float = 0.01, seed: int = 0) -> dict[str, float]:
    """Gradients of ``sum(output * fixed random weights)`` over every output (padding
    masked), and the params after one AdamW step with the same hyperparameters.

    Returns the worst per-tensor relative gradient error; the largest gradient on entries
    whose exact gradient is zero (:func:`exact_zero_gradient`; rounding noise in both
    frameworks, so left out of the first number), relative to the largest gradient; and
    the max-abs param difference after ``optax.adamw`` and ``torch.optim.AdamW`` each take
    one step from transformers' gradients. Both optimizers get the same gradients because
    Adam's first step divides every entry by its own magnitude: float32 rounding in an
    entry near zero would become a step of up to ``lr`` however exact the model.
    """
    ref = _torch_model(model_dir)
    model, params = from_pretrained(model_dir)
    keep = _keep(inputs)
    outputs = {k: v for k, v in ref(**_to_torch(inputs)).items() if k not in NOT_COMPARED}
    rng = np.random.default_rng(seed)
    weights = {}
    for name, value in outputs.items():
        w = rng.standard_normal(value.shape).astype(np.float32)
        weights[name] = w * keep.reshape(keep.shape + (1,) * (w.ndim - 2)) if _per_position(w, keep) else w
    sum((value * torch.from_numpy(weights[name])).sum() for name, value in outputs.items()).backward()

    def loss(p):
        got = model.apply({"params": p}, **_to_jax(inputs))
        return sum((getattr(got, name) * w).sum() for name, w in weights.items())

    with jax.default_matmul_precision("highest"):
        grads = traverse_util.flatten_dict(jax.grad(loss)(params))
    # Checkpoint names: transformers may rename params in memory (ViT's q_proj is query in files).
    torch_params = revert_weight_conversion(ref, dict(ref.named_parameters(remove_duplicate=False)))
    slots = walker.slots(params, MODEL_FAMILIES[model.config.type].torch_keys)
    largest = max(float(p.grad.abs().max()) for p in ref.parameters())
    grad_rel = noise = 0.0
    for slot in slots:
        want, got = torch_params[slot.key].grad.numpy(), slot.to_torch(np.asarray(grads[slot.path]))
        zero = exact_zero_gradient(slot.key, want.shape)
        noise = max(noise, float(np.abs(np.concatenate([want[zero], got[zero]])).max(initial=0)) / largest)
        scale = float(np.abs(want[~zero]).max(initial=0)) or 1.0
        grad_rel = max(grad_rel, float(np.abs(want - got)[~zero].max(initial=0)) / scale)

    torch_grads = traverse_util.unflatten_dict({s.path: s.to_jax(torch_params[s.key].grad.numpy()) for s in slots})
    tx = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    stepped = traverse_util.flatten_dict(optax.apply_updates(params, tx.update(torch_grads, tx.init(params),
                                                                                    params)[0]))
    torch.optim.AdamW(ref.parameters(), lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay).step()
    step = max(float(np.abs(torch_params[s.key].detach().numpy() - s.to_torch(np.asarray(stepped[s.path]))).max())
               for s in slots)
    return {"gradients (max relative)": grad_rel, "zero-gradient noise (relative)": noise,
            "params after one AdamW step": step}


def exact_zero_gradient(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Entries whose exact gradient is zero: key biases, which add the same amount to every
    score of a query and so cannot change a softmax. Both frameworks return rounding noise.
    (Not under rotary positions: the key bias is rotated by the key's position there.)"""
    zero = np.zeros(shape, bool)
    if key.endswith(("attention.self.key.bias", "attention.k_lin.bias", "attention.attention.key.bias")):
        zero[:] = True
    elif key.endswith("attn.c_attn.bias"):  # GPT-2's fused [query; key; value] bias
        third = shape[0] // 3
        zero[third:2 * third] = True
    return zero


def tiny_parity(architecture: str, seed: int = 0, **config) -> dict[str, float]:
    """Every number above for a tiny random ``architecture`` (``config``: fields over its tiny config),
    in a temporary directory."""
    with tempfile.TemporaryDirectory() as d:
        random_checkpoint(architecture, d, seed=seed, **config)
        inputs = example_inputs(transformers.AutoConfig.from_pretrained(d), seed=seed)
        return {**compare_outputs(d, inputs), **compare_training_step(d, inputs, seed=seed)}


def _torch_model(model_dir):
    config = transformers.AutoConfig.from_pretrained(model_dir)
    cls = getattr(transformers, config.architectures[0])
    return cls.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()


def _keep(inputs) -> np.ndarray | None:
    """``[batch, length]``: the positions compared (None: all, as for images)."""
    mask = inputs.get("attention_mask")
    return None if mask is None else mask.astype(bool)


def _per_position(x: np.ndarray, keep: np.ndarray | None) -> bool:
    return keep is not None and x.ndim >= 2 and x.shape[:2] == keep.shape


def _kept(x: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    return x[keep] if _per_position(x, keep) else x


def _to_torch(inputs):
    return {k: torch.from_numpy(np.asarray(v, np.float32 if k == "pixel_values" else np.int64))
            for k, v in inputs.items()}


def _to_jax(inputs):
    """jaxlm's inputs: int32 ids, NHWC images."""
    return {k: jnp.asarray(v.transpose(0, 2, 3, 1)) if k == "pixel_values" else jnp.asarray(v, jnp.int32)
            for k, v in inputs.items()}
