"""The shared layer variants: grouped-query / multi-query attention, rotary and sinusoidal
positions, sliding windows, cross-attention, RMSNorm, pre-/post-LN GPT-2."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.interop.errors import InteropError
from jaxlm.layers.attention import (SelfAttention, attend_beams, attend_past_and_new, attention_weights, causal_mask,
                                   padding_mask, repeat_kv)
from jaxlm.layers.core import Dropout, rms_norm
from jaxlm.layers.embeddings import apply_rotary, sinusoidal
from jaxlm.models import build_model
from jaxlm.models.gpt2 import GPT2Config

B, T, E, H, D = 2, 6, 16, 4, 4


def _x(seed=0, length=T):
    return jax.random.normal(jax.random.PRNGKey(seed), (B, length, E))


def _apply(attn, params, x, **kw):
    return attn.apply({"params": params}, x, **kw)[0]


def _init(module, x, **kw):
    return nn.meta.unbox(module.init(jax.random.PRNGKey(1), x, **kw)["params"])


def test_gqa_with_as_many_kv_heads_as_heads_is_multi_head_attention():
    x = _x()
    mha = SelfAttention(num_heads=H, head_dim=D, causal=True)
    gqa = SelfAttention(num_heads=H, head_dim=D, num_kv_heads=H, causal=True)
    params = _init(mha, x)
    assert jax.tree.structure(params) == jax.tree.structure(_init(gqa, x))
    np.testing.assert_array_equal(_apply(mha, params, x), _apply(gqa, params, x))


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_kv_heads_equal_multi_head_attention_with_shared_heads(kv_heads):
    """Query head n reads key/value head n // (H / kv_heads): MHA with each key/value head
    copied into its group's slots gives the same output, on the fast and the explicit path."""
    x = _x()
    gqa = SelfAttention(num_heads=H, head_dim=D, num_kv_heads=kv_heads, causal=True)
    params = _init(gqa, x)
    assert params["key"]["kernel"].shape == (E, kv_heads, D)
    mha_params = {**params, **{n: jax.tree.map(lambda a: jnp.repeat(a, H // kv_heads, axis=-2 if a.ndim > 2 else 0),
                                               params[n]) for n in ("key", "value")}}
    want = _apply(SelfAttention(num_heads=H, head_dim=D, causal=True), mha_params, x)
    np.testing.assert_allclose(_apply(gqa, params, x), want, atol=1e-6)
    explicit = gqa.apply({"params": params}, x, output_attentions=True)[0]
    np.testing.assert_allclose(explicit, want, atol=1e-6)


def test_rotary_scores_depend_only_on_position_differences():
    q, k = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 1, 1, 8))

    def score(m, n):
        return float(jnp.sum(apply_rotary(q, jnp.array([m])) * apply_rotary(k, jnp.array([n]))))

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5) == pytest.approx(score(102, 100), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    np.testing.assert_allclose(apply_rotary(q, jnp.array([0])), q)  # position 0 is no rotation
    # Rotation keeps the norm of every vector.
    np.testing.assert_allclose(jnp.linalg.norm(apply_rotary(q, jnp.array([7]))), jnp.linalg.norm(q), rtol=1e-6)


def test_sinusoidal_positions_follow_the_transformer_formula():
    table = sinusoidal(jnp.arange(50), 8)
    p, i = 17, 3  # feature pair (6, 7)
    angle = p / 10000 ** (2 * i / 8)
    np.testing.assert_allclose(table[p, 2 * i], np.sin(angle), rtol=1e-5)
    np.testing.assert_allclose(table[p, 2 * i + 1], np.cos(angle), rtol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_sliding_window_blocks_keys_outside_it(causal):
    window = 2
    attn = SelfAttention(num_heads=H, head_dim=D, causal=causal, sliding_window=window)
    x = _x()
    params = _init(attn, x)
    weights = attn.apply({"params": params}, x, output_attentions=True)[1]
    i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    visible = (i - j < window) & ((i - j >= 0) if causal else (j - i < window))
    assert np.all(np.asarray(weights)[..., ~visible] == 0)
    assert np.all(np.asarray(weights)[..., visible] > 0)
    # The kernel's own window (fast path) agrees with the explicit mask.
    np.testing.assert_allclose(_apply(attn, params, x), attn.apply({"params": params}, x, output_attentions=True)[0],
                               atol=1e-6)
    # Changing the first token changes only the outputs that can see it.
    moved = _apply(attn, params, x.at[:, 0].add(1.0)) - _apply(attn, params, x)
    changed = np.abs(np.asarray(moved)).max(axis=(0, 2)) > 1e-6
    np.testing.assert_array_equal(changed, visible[:, 0])


def test_cross_attention_reads_kv_masks_its_padding_and_caches_it_for_decoding():
    x, memory = _x(0, length=3), _x(1, length=5)
    attn = SelfAttention(num_heads=H, head_dim=D, cross=True)
    params = _init(attn, x, kv=memory)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = _apply(attn, params, x, kv=memory, attention_mask=mask)
    # Padding positions of the memory are never read.
    garbage = memory.at[0, 3:].set(100.0)
    np.testing.assert_allclose(_apply(attn, params, x, kv=garbage, attention_mask=mask), out, atol=1e-6)
    assert not np.allclose(_apply(attn, params, x, kv=garbage), _apply(attn, params, x, kv=memory))
    # Decoding: the first call projects and caches the memory, later calls pass kv=None.
    cache = attn.init(jax.random.PRNGKey(1), x, kv=memory, decode=True)["cache"]
    first, mutated = attn.apply({"params": params, "cache": cache}, x[:, :1], kv=memory, attention_mask=mask,
                                decode=True, mutable=["cache"])
    rest, _ = attn.apply({"params": params, **mutated}, x[:, 1:], attention_mask=mask, decode=True,
                         mutable=["cache"])
    np.testing.assert_allclose(jnp.concatenate([first[0], rest[0]], axis=1), out, atol=1e-6)


@pytest.mark.parametrize("output_attentions", [False, True])
def test_cross_attention_rows_may_share_a_source(output_attentions):
    """3 query rows per cached source (a prompt's beams) attend as if each source were repeated 3 times."""
    x, memory = jax.random.normal(jax.random.PRNGKey(2), (3 * B, 2, E)), _x(1, length=5)
    attn = SelfAttention(num_heads=H, head_dim=D, cross=True)
    params = _init(attn, x[:B], kv=memory)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    cache = attn.apply({"params": params}, x[:B, :1], kv=memory, decode=True, mutable=["cache"])[1]["cache"]
    shared = attn.apply({"params": params, "cache": cache}, x, attention_mask=mask, decode=True,
                        output_attentions=output_attentions, mutable=["cache"])[0]
    repeated = attn.apply({"params": params}, x, kv=jnp.repeat(memory, 3, 0), attention_mask=jnp.repeat(mask, 3, 0),
                          output_attentions=output_attentions)
    np.testing.assert_allclose(shared[0], repeated[0], atol=1e-6)
    if output_attentions:
        assert shared[1].shape == (3 * B, H, 2, 5)
        np.testing.assert_allclose(shared[1], repeated[1], atol=1e-6)
    with pytest.raises(ValueError, match="cannot serve 5 query rows"):
        attn.apply({"params": params, "cache": cache}, x[:5], attention_mask=mask, decode=True, mutable=["cache"])


@pytest.mark.parametrize("t, kv_heads", [(1, 4), (3, 2), (2, 1)])
def test_attending_past_and_new_equals_attending_over_the_updated_cache(t, kv_heads):
    """The decoding step's attention (the cache before the write plus the step's own keys / values)
    is attention over the cache with them written in, for any step length and grouped heads."""
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    batch, heads, dim, length, start = 2, 4, 8, 10, 4
    q = jax.random.normal(keys[0], (batch, t, heads, dim))
    k, v = (jax.random.normal(key, (batch, t, kv_heads, dim)) for key in keys[1:3])
    # the cache [batch, kv_heads, head_dim, length], with garbage beyond what was written
    past_k, past_v = (jax.random.normal(key, (batch, kv_heads, dim, length)) for key in keys[3:5])
    mask = padding_mask(jnp.array([[1] * length, [0, 0] + [1] * (length - 2)])) & causal_mask(
        start + jnp.arange(t), length)
    out, (k_written, v_written) = attend_past_and_new(q, past_k, past_v, k, v, mask, jnp.int32(start))
    full_k, full_v = (jax.lax.dynamic_update_slice(c, x.transpose(0, 2, 3, 1), (0, 0, 0, start)).transpose(0, 3, 1, 2)
                      for c, x in ((past_k, k), (past_v, v)))
    want = jnp.einsum("bnqk,bknh->bqnh", attention_weights(q, full_k, mask), repeat_kv(full_v, heads))
    np.testing.assert_allclose(out, want, atol=1e-5)
    np.testing.assert_array_equal(k_written, k)
    np.testing.assert_array_equal(v_written, v)


@pytest.mark.parametrize("t, kv_heads", [(1, 4), (2, 2), (1, 1)])
def test_beams_attend_through_their_ancestry_as_over_a_reordered_cache(t, kv_heads):
    """Beam search without reordering: each beam reading every cached position from the row its ancestry
    names is attention over a cache with those positions gathered into the beam's own row."""
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    prompts, beams, heads, dim, length, start = 2, 3, 4, 8, 9, 5
    rows = prompts * beams
    q = jax.random.normal(keys[0], (rows, t, heads, dim))
    k, v = (jax.random.normal(key, (rows, t, kv_heads, dim)) for key in keys[1:3])
    past_k, past_v = (jax.random.normal(key, (rows, kv_heads, dim, length)) for key in keys[3:5])
    ancestry = jax.random.randint(keys[5], (prompts, beams, length), 0, beams)
    mask = padding_mask(jnp.repeat(jnp.array([[1] * length, [0, 0, 0] + [1] * (length - 3)]), beams, axis=0)) & \
        causal_mask(start + jnp.arange(t), length)
    out, (k_written, v_written) = attend_beams(q, past_k, past_v, k, v, mask, jnp.int32(start), ancestry)

    holder = (ancestry + jnp.arange(prompts)[:, None, None] * beams).reshape(rows, length)  # row of each position
    gathered = [jnp.take_along_axis(c, holder[:, None, None, :], axis=0) for c in (past_k, past_v)]
    want, _ = attend_past_and_new(q, *gathered, k, v, mask, jnp.int32(start))
    np.testing.assert_allclose(out, want, atol=1e-5)
    np.testing.assert_array_equal(k_written, k)
    np.testing.assert_array_equal(v_written, v)


def test_rms_norm_scales_by_the_root_mean_square():
    x = _x()
    layer = rms_norm(1e-6, name="norm")
    params = _init(layer, x)
    want = x / jnp.sqrt(jnp.mean(x**2, axis=-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(layer.apply({"params": params}, x), want, rtol=1e-5, atol=1e-6)
    assert set(params) == {"scale"}


VARIANTS = {
    "rotary+gqa": dict(positions="rotary", num_kv_heads=2),
    "sinusoidal+mqa+rms": dict(positions="sinusoidal", num_kv_heads=1, norm_type="rms_norm"),
    "post-ln+window": dict(norm_position="post", sliding_window=3),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_gpt2_variants_decode_with_the_kv_cache_exactly(variant):
    """Every variant's KV-cache decoding (prompt, then one token at a time) reproduces the
    full forward pass, and none of them can be exported as a transformers GPT-2."""
    from jaxlm.interop.hf import save_pretrained

    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=E, n_layer=2, n_head=H, **VARIANTS[variant])
    model = build_model(config, "causal_lm")
    ids = jax.random.randint(jax.random.PRNGKey(0), (B, 9), 0, 50)
    params = _init(model, ids)
    full = jax.jit(model.apply)({"params": params}, ids).logits
    cache = model.init(jax.random.PRNGKey(1), ids, decode=True)["cache"]
    positions = jnp.broadcast_to(jnp.arange(9), ids.shape)
    for weights in (False, True):  # output_attentions attends over the updated cache, the other path apart
        step = jax.jit(lambda variables, ids, positions: model.apply(
            variables, ids, position_ids=positions, decode=True, output_attentions=weights, mutable=["cache"]))
        out, mutated = step({"params": params, "cache": cache}, ids[:, :5], positions[:, :5])
        steps = [out.logits]
        for t in range(5, 9):
            out, mutated = step({"params": params, **mutated}, ids[:, t:t + 1], positions[:, t:t + 1])
            steps.append(out.logits)
        np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)
    full_weights = model.apply({"params": params}, ids, output_attentions=True).attentions
    np.testing.assert_allclose(out.attentions[-1][:, :, 0, :9], full_weights[-1][:, :, -1], atol=1e-6)
    if config.positions == "rotary":
        assert "wpe" not in params["transformer"]
    with pytest.raises(InteropError, match="reference layer settings"):
        save_pretrained(model, params, "unused")


def test_gpt2_rejects_kv_heads_that_do_not_divide_the_heads():
    with pytest.raises(ValueError, match="num_kv_heads"):
        GPT2Config(n_embd=E, n_head=H, num_kv_heads=3)


def test_bert_variants_ignore_padding_and_do_not_export():
    """Pre-LN BERT with rotary positions, RMSNorm and grouped-query attention: extra padding
    leaves the real tokens' outputs unchanged; the final norm exists only for pre-LN."""
    from jaxlm.interop.hf import save_pretrained
    from jaxlm.models.bert import BertConfig

    config = BertConfig(vocab_size=50, hidden_size=E, num_hidden_layers=2, num_attention_heads=H,
                        intermediate_size=32, max_position_embeddings=16, norm_position="pre", positions="rotary",
                        norm_type="rms_norm", num_kv_heads=2)
    model = build_model(config, "base")
    ids = jax.random.randint(jax.random.PRNGKey(0), (B, 5), 1, 50)
    params = _init(model, ids)
    assert "final_LayerNorm" in params and "position_embeddings" not in params["embeddings"]
    apply = jax.jit(model.apply)
    short = apply({"params": params}, ids, attention_mask=jnp.ones_like(ids)).last_hidden_state
    padded_ids = jnp.concatenate([ids, jnp.zeros((B, 3), ids.dtype)], axis=1)
    mask = (jnp.arange(8) < 5).astype(jnp.int32)[None].repeat(B, 0)
    padded = apply({"params": params}, padded_ids, attention_mask=mask).last_hidden_state
    np.testing.assert_allclose(padded[:, :5], short, atol=1e-5)
    with pytest.raises(InteropError, match="model.norm_position=pre"):
        save_pretrained(model, params, "unused")


def test_dropout_rate_scale_and_determinism():
    x = jnp.full((3, 1001), 2.0)  # an odd last axis: the last word's high half goes unused
    apply = lambda rate, key, deterministic=False: Dropout(rate).apply(  # noqa: E731
        {}, x, deterministic=deterministic, rngs={"dropout": jax.random.key(key)})
    y = apply(0.1, 0)
    threshold = round(0.9 * 2**16)
    kept = y != 0
    assert abs(float(kept.mean()) - 0.9) < 0.01
    np.testing.assert_allclose(y[kept], 2.0 * 2**16 / threshold, rtol=1e-6)  # exactly unbiased: E[y] = x
    np.testing.assert_array_equal(apply(0.1, 0), y)  # the same key, the same mask
    assert not np.array_equal(apply(0.1, 1), y)
    np.testing.assert_array_equal(apply(0.1, 0, deterministic=True), x)
    np.testing.assert_array_equal(apply(1.0, 0), jnp.zeros_like(x))
    big = Dropout(0.25).apply({}, jnp.ones((1000, 1000)), deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert abs(float((big == 0).mean()) - 0.25) < 0.002  # 1M draws: within ~5 standard deviations
