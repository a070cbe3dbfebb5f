"""The base of every model config: Hugging Face field names plus a few jaxlm-only fields."""

from __future__ import annotations

from dataclasses import dataclass, field
import typing
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jaxlm.layers.core import NormType
from jaxlm.layers.embeddings import PositionType

# Layer variants a Transformer can switch to; each model's defaults are its reference design.
VARIANT_FIELDS = {"num_kv_heads", "positions", "rope_theta", "sliding_window", "norm_type", "norm_position"}
# Fields that are jaxlm's own and never go into an exported config.json (with VARIANT_FIELDS for
# the families whose variants they are: :class:`TransformerVariants`).
JAXLM_ONLY_FIELDS = {"type", "init_from", "attention_implementation", "remat", "scan_layers", "pruned_heads"}


def is_dropout_field(name: str) -> bool:
    return "dropout" in name or name.endswith("pdrop")


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    init_from: str | None = None
    """Load params (only) from a jaxlm run or checkpoint directory before training; the run's
    tokenizer comes with them when ``data.tokenizer.path`` is unset."""
    attention_implementation: Literal["xla", "cudnn"] | None = None
    """Force an attention kernel; ``None`` lets JAX pick (cuDNN flash on GPU when it can)."""
    remat: Literal["none", "full", "dots"] = "none"
    """Recompute each layer's activations in the backward pass: ``full`` keeps only layer
    inputs, ``dots`` also keeps matmul outputs (less memory than none, less compute than full)."""
    scan_layers: bool = False
    """Run the layers as one layer compiled once and scanned N times (params stacked on a
    leading ``layers`` axis): compile time stops growing with depth; same outputs."""

    layers_name: ClassVar[str | None] = None
    """The layer stack's param name (``h`` -> ``h_0 .. h_{n-1}``); None: no ``scan_layers`` support."""

    @model_validator(mode="before")
    @classmethod
    def _sizes_and_rates(cls, data):
        """Every count or size (an integer setting other than a token id) is at least 1, every
        dropout rate in [0, 1): nonsense fails here, before any check that divides by it."""
        for name, value in data.items() if isinstance(data, dict) else ():
            values = value if isinstance(value, (list, tuple)) else [value]
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if is_dropout_field(name) and numbers and not 0 <= numbers[0] < 1:
                raise ValueError(f"model.{name}={value} is a dropout rate: use a value in [0, 1)")
            if _counts(name, cls.model_fields.get(name)) and any(isinstance(v, int) and v < 1 for v in numbers):
                raise ValueError(f"model.{name}={value} must be at least 1")
        return data

    @model_validator(mode="after")
    def _check_scan_layers(self):
        if self.scan_layers and self.layers_name is None:
            raise ValueError(f"model.scan_layers is not implemented for model type {self.type!r}; set it to false")
        return self

    def remat_layer(self, layer_cls, static_argnums: tuple[int, ...]):
        """``layer_cls`` wrapped per ``remat`` (``static_argnums`` count ``self`` as 0)."""
        if self.remat == "none":
            return layer_cls
        policy = None if self.remat == "full" else jax.checkpoint_policies.checkpoint_dots
        return nn.remat(layer_cls, policy=policy, static_argnums=static_argnums)

    @property
    def uses_dropout(self) -> bool:
        """Any dropout rate above zero (HF names them ``*_pdrop`` or ``*dropout*``)."""
        return any(v for k, v in self if isinstance(v, float) and is_dropout_field(k))

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model's position embeddings cover (None: unbounded)."""
        return getattr(self, "n_positions", None) or getattr(self, "max_position_embeddings", None)

    def dummy_inputs(self) -> dict[str, jax.Array]:
        """The smallest inputs ``model.init`` builds every param from (one token id by default)."""
        return {"input_ids": jax.numpy.zeros((1, 1), jax.numpy.int32)}

    @classmethod
    def jaxlm_only_fields(cls) -> set[str]:
        """Fields that are jaxlm's own: never read from nor written to a ``config.json``."""
        return JAXLM_ONLY_FIELDS | (VARIANT_FIELDS if issubclass(cls, TransformerVariants) else set())

    @classmethod
    def fields_from_hf(cls, hf: dict) -> dict:
        """This config's fields from a ``config.json`` dict: the keys it knows (families whose
        transformers config renamed or nested fields translate them here)."""
        fields = set(cls.model_fields) - cls.jaxlm_only_fields()
        return {k: v for k, v in hf.items() if k in fields}

    def hf_dict(self) -> dict:
        """The fields that transformers' config class knows."""
        return self.model_dump(exclude=self.jaxlm_only_fields())


def _counts(name: str, field) -> bool:
    """Whether a config field holds counts or sizes: integers (or tuples of them), not token ids."""
    def leaves(t):
        args = typing.get_args(t)
        return [leaf for a in args for leaf in leaves(a)] if args else [t]

    if field is None or name.endswith("_id"):
        return False
    return {k for k in leaves(field.annotation) if k not in (type(None), Ellipsis)} == {int}


class TransformerVariants(BaseModel):
    """Config-selectable layer variants, shared by the Transformer families.

    A family sets the defaults to its reference architecture (GPT-2: learned positions,
    pre-LN LayerNorm, full multi-head attention), so only an explicit choice changes it;
    a changed model has no transformers counterpart and cannot be exported to one.
    """

    num_kv_heads: int | None = Field(None, gt=0)
    """Key/value heads: ``None`` = one per query head (multi-head), 1 = multi-query,
    in between = grouped-query attention; must divide the number of heads."""
    positions: PositionType = "learned"
    """``learned`` table, fixed ``sinusoidal`` (both added to the embeddings) or ``rotary`` (RoPE)."""
    rope_theta: float = Field(10000.0, gt=0)
    sliding_window: int | None = Field(None, gt=0)
    """Each token attends only to this many nearest positions (causal: itself and those before)."""
    norm_type: NormType = "layer_norm"
    norm_position: Literal["pre", "post"] = "pre"
    """``pre``: normalise each sublayer's input (GPT-2); ``post``: its residual sum (BERT)."""

    head_fields: ClassVar[tuple[str, tuple[str, ...]]] = ("", ())
    """The family's width field and its head-count fields (checked to divide evenly)."""

    @model_validator(mode="after")
    def _heads_divide(self):
        width, counts = type(self).head_fields
        for name in counts:
            heads = getattr(self, name)
            if getattr(self, width) % heads:
                raise ValueError(f"model.{width}={getattr(self, width)} is not divisible by model.{name}={heads}")
            if self.num_kv_heads and heads % self.num_kv_heads:
                raise ValueError(f"model.{name}={heads} is not divisible by model.num_kv_heads={self.num_kv_heads}")
        return self

    def variant_changes(self) -> list[str]:
        """``key=value`` for each variant that differs from this family's reference setting."""
        fields = type(self).model_fields
        return [f"model.{k}={getattr(self, k)}" for k in sorted(VARIANT_FIELDS & set(fields))
                if getattr(self, k) != fields[k].default]


class PrunedHeads(BaseModel):
    """Attention heads removed per layer (``jaxlm prune --heads``, Michel et al. 2019): layer ``i``
    keeps its other heads, of the same size, so the model is smaller and faster. transformers
    (v5) has no per-layer head counts: the export puts the removed heads back as zeros (the same
    outputs)."""

    pruned_heads: tuple[tuple[int, ...], ...] = ()
    """Per layer, the original indices of its removed heads (``[[1, 3], [], [0]]``); empty: none.
    Tuples, so the config stays hashable (generation passes the model as a static argument)."""

    heads_field: ClassVar[str] = ""
    """The family's field with the heads per layer (``num_attention_heads``, ``n_head``, ...)."""

    @field_validator("pruned_heads", mode="before")
    @classmethod
    def _from_mapping(cls, v):
        """Also ``{layer: [heads]}`` (``{1: [0]}``; ``{}``: none), as runs before the per-layer lists wrote it."""
        if isinstance(v, dict):
            return tuple(tuple(v.get(i, v.get(str(i), ()))) for i in range(1 + max(map(int, v), default=-1)))
        return v

    @model_validator(mode="after")
    def _check_pruned_heads(self):
        if not self.pruned_heads:
            return self
        heads = getattr(self, type(self).heads_field)
        if getattr(self, "scan_layers", False) or getattr(self, "num_kv_heads", None):
            raise ValueError("model.pruned_heads needs unscanned layers with one key/value head per query head "
                             "(model.scan_layers=false, model.num_kv_heads=null)")
        for layer, removed in enumerate(self.pruned_heads):
            if len(set(removed)) >= heads or len(set(removed)) != len(removed) or not all(0 <= h < heads
                                                                                       for h in removed):
                raise ValueError(f"model.pruned_heads[{layer}]={list(removed)} must name distinct heads below "
                                 f"{heads}, leaving at least one")
        return self

    def removed_heads(self, layer: int) -> tuple[int, ...]:
        return self.pruned_heads[layer] if layer < len(self.pruned_heads) else ()

    def heads_in(self, layer_name: str) -> int:
        """The heads the layer module named ``layer_name`` (``layer_3``, ``h_3``) keeps."""
        heads = getattr(self, type(self).heads_field)
        if not self.pruned_heads:
            return heads
        return heads - len(self.removed_heads(int(layer_name.rsplit("_", 1)[1])))


@dataclass(frozen=True)
class TorchKeyMap:
    """How one model family's params are named in PyTorch ``state_dict``s (Levanter style).

    :mod:`jaxlm.interop` names every jaxlm param generically (path joined with dots;
    ``kernel`` / ``scale`` / ``embedding`` -> ``weight``), then applies ``renames`` in order.
    Kernels are reshaped from / to 2-D: ``[out, in]`` (``nn.Linear``) or, with ``conv1d``,
    ``[in, out]`` (GPT-2's ``Conv1D``); the sibling bias tells how many trailing kernel axes
    are outputs.
    """

    prefix: str
    """The trunk's name inside head models (transformers' ``base_model_prefix``)."""
    renames: tuple[tuple[str, str], ...] = ()
    """``re.sub`` pattern / replacement pairs, applied in order to the dotted jaxlm name."""
    conv1d: bool = False
    conv2d: str = r"(?!)"
    """Pattern of PyTorch keys that are ``nn.Conv2d`` weights: OIHW there, HWIO in Flax."""
    dropped: tuple[str, ...] = ()
    """Patterns of PyTorch keys (prefix removed) that are buffers or tied copies: skipped on import."""
    input_axes: tuple[tuple[str, int], ...] = ()
    """``(pattern, n)``: PyTorch kernels matching ``pattern`` have ``n`` leading jaxlm input axes, for
    kernels whose bias cannot tell (they have none): a bias-free ``[embed, heads, head_dim]`` projection."""
    optional: str = r"(?!)"
    """Pattern of keys (prefix removed) a checkpoint may lack or carry beyond the model:
    heads and poolers, so a base checkpoint loads into a head model and vice versa."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Hugging Face config settings that jaxlm implements only at these values."""
