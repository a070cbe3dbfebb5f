"""The models' hook points for parameter-efficient methods: ``inputs_embeds``, per-layer key / value
prefixes and residual adapters, in every Transformer family; off by default (checkpoints unchanged)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.layers.adapters import AdapterSpec, Hooks
from jaxlm.models import MODEL_FAMILIES, build_model

SIZES = {
    "gpt2": ("causal_lm", dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)),
    "bert": ("masked_lm", dict(vocab_size=50, max_position_embeddings=16, hidden_size=16, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=32)),
    "distilbert": ("masked_lm", dict(vocab_size=50, max_position_embeddings=16, dim=16, n_layers=2, n_heads=2,
                                     hidden_dim=32)),
}
IDS = jnp.asarray(np.random.RandomState(0).randint(1, 50, (2, 6)))


def model_and_params(family, hooks=Hooks(), **fields):
    head, sizes = SIZES[family]
    model = build_model(MODEL_FAMILIES[family].config(**sizes, **fields), head, hooks=hooks)
    return model, nn.meta.unbox(model.init(jax.random.PRNGKey(0), IDS))["params"]


def word_table(family, params):
    return {"gpt2": lambda p: p["transformer"]["wte"]["embedding"],
            "bert": lambda p: p["bert"]["embeddings"]["word_embeddings"]["embedding"],
            "distilbert": lambda p: p["distilbert"]["embeddings"]["word_embeddings"]["embedding"]}[family](params)


@pytest.mark.parametrize("family", list(SIZES))
def test_inputs_embeds_equal_the_ids(family):
    model, params = model_and_params(family)
    a = model.apply({"params": params}, IDS).logits
    b = model.apply({"params": params}, inputs_embeds=word_table(family, params)[IDS]).logits
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
def test_a_key_value_prefix_acts_as_earlier_tokens(scan):
    """GPT-2 fed 6 tokens equals GPT-2 fed the last 3 after the first 3's cached keys / values."""
    model, params = model_and_params("gpt2", scan_layers=scan)
    full = model.apply({"params": params}, IDS).logits
    cache = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), IDS, decode=True))["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache)
    _, written = model.apply({"params": params, "cache": cache}, IDS[:, :3], decode=True, mutable=["cache"])
    layers = ([written["cache"]["transformer"]["h"]["attn"]] if scan else
              [written["cache"]["transformer"][f"h_{i}"]["attn"] for i in range(2)])
    keys = [c["cached_key"][..., :3].transpose(*((0, 1, 4, 2, 3) if scan else (0, 3, 1, 2))) for c in layers]
    values = [c["cached_value"][..., :3].transpose(*((0, 1, 4, 2, 3) if scan else (0, 3, 1, 2))) for c in layers]
    if scan:  # [layers, batch, 3, heads, head_dim]
        prefix = jnp.stack([keys[0], values[0]], axis=1)
    else:
        prefix = jnp.stack([jnp.stack([k, v]) for k, v in zip(keys, values)])
    positions = jnp.broadcast_to(jnp.arange(3, 6), (2, 3))
    tail = model.apply({"params": params}, IDS[:, 3:], jnp.ones((2, 6), jnp.int32), position_ids=positions,
                       kv_prefix=prefix).logits
    np.testing.assert_allclose(tail, full[:, 3:], atol=1e-5)
    # Decoding from an empty cache with the prefix gives the same logits, token by token.
    cache = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), IDS[:, 3:], decode=True, kv_prefix=prefix))
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache["cache"])
    for i in range(3):
        out, variables = model.apply({"params": params, "cache": cache}, IDS[:, 3 + i:4 + i],
                                     jnp.ones((2, 6), jnp.int32), position_ids=positions[:, i:i + 1], kv_prefix=prefix,
                                     decode=True, mutable=["cache"])
        cache = variables["cache"]
        np.testing.assert_allclose(out.logits[:, 0], full[:, 3 + i], atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "distilbert"])
def test_encoder_prefix_is_visible_to_every_position(family):
    model, params = model_and_params(family)
    prefix = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 2, 3, 2, 8))
    mask = jnp.ones((2, 9), jnp.int32)
    with_prefix = model.apply({"params": params}, IDS, mask, kv_prefix=prefix).logits
    hidden = model.apply({"params": params}, IDS, mask.at[:, :3].set(0), kv_prefix=prefix).logits
    plain = model.apply({"params": params}, IDS).logits
    assert not np.allclose(with_prefix, plain, atol=1e-3)
    np.testing.assert_allclose(hidden, plain, atol=1e-5)  # a masked-out prefix changes nothing


@pytest.mark.parametrize("family", list(SIZES))
def test_adapters_start_near_the_identity_and_add_only_their_params(family):
    spec = AdapterSpec(("attention", "feed_forward"), reduction_factor=4, non_linearity="relu")
    plain, base = model_and_params(family)
    model, params = model_and_params(family, Hooks(spec))
    extra = {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]} - {
        jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(base)[0]}
    assert extra and all("_adapter']['" in k for k in extra)
    assert len(extra) == 2 * 2 * 4  # two layers x two adapters x (down, up) x (kernel, bias)
    a = plain.apply({"params": base}, IDS).logits
    b = model.apply({"params": params}, IDS).logits
    assert 0 < float(jnp.abs(a - b).max()) < 0.05
    zeroed = jax.tree_util.tree_map_with_path(
        lambda k, x: jnp.zeros_like(x) if "'up'" in jax.tree_util.keystr(k) else x, params)
    np.testing.assert_allclose(model.apply({"params": zeroed}, IDS).logits, a, atol=1e-6)


def test_pfeiffer_adapters_follow_the_feed_forward_block_only():
    _, params = model_and_params("bert", Hooks(AdapterSpec(("feed_forward",), reduction_factor=8)))
    layer = params["bert"]["layer_0"]
    assert "feed_forward_adapter" in layer and "attention_adapter" not in layer
    assert layer["feed_forward_adapter"]["down"]["kernel"].shape == (16, 2)


def test_vit_and_seq2seq_take_the_hooks():
    from jaxlm.models.seq2seq import TransformerSeq2Seq, TransformerSeq2SeqConfig
    from jaxlm.models.vit import ViTConfig, ViTForImageClassification

    hooks = Hooks(AdapterSpec(("attention", "feed_forward"), reduction_factor=4))
    vit = ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16,
                                              num_hidden_layers=2, num_attention_heads=2, intermediate_size=32),
                                    hooks=hooks)
    pixels = jnp.ones((1, 8, 8, 1))
    params = vit.init(jax.random.PRNGKey(0), pixels)["params"]
    assert "attention_adapter" in params["vit"]["layer_1"]
    prefix = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 1, 3, 2, 8))
    assert vit.apply({"params": params}, pixels, kv_prefix=prefix).logits.shape == (1, 2)
    s2s = TransformerSeq2Seq(TransformerSeq2SeqConfig(vocab_size=20, d_model=16, encoder_layers=1, decoder_layers=1,
                                                      encoder_attention_heads=2, decoder_attention_heads=2,
                                                      encoder_ffn_dim=32, decoder_ffn_dim=32), hooks=hooks)
    params = s2s.init(jax.random.PRNGKey(0), IDS, jnp.ones_like(IDS), IDS)["params"]
    assert {"attention_adapter", "feed_forward_adapter"} <= set(params["encoder"]["layers_0"])
    assert {"attention_adapter", "feed_forward_adapter"} <= set(params["decoder"]["layers_0"])
