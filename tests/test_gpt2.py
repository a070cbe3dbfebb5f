import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.generate import generate
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model

CFG = GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def lm():
    model = GPT2LMHeadModel(CFG)
    variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32))
    variables = {k: v for k, v in variables.items() if k != "perturbations"}  # the adversarial hooks
    return model, nn.meta.unbox(variables)["params"], variables


def ids(batch=2, length=12, seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 0, CFG.vocab_size)


def test_shapes_and_outputs(lm):
    model, params, _ = lm
    out = model.apply({"params": params}, ids(), output_hidden_states=True, output_attentions=True)
    assert out.logits.shape == (2, 12, 97)
    assert len(out.hidden_states) == CFG.n_layer + 1 and out.hidden_states[0].shape == (2, 12, 32)
    assert len(out.attentions) == CFG.n_layer and out.attentions[0].shape == (2, 4, 12, 12)
    np.testing.assert_allclose(out.attentions[0].sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(np.asarray(out.attentions[1]), k=1) == 0)  # nothing attends to the future
    base = GPT2Model(CFG).apply({"params": params["transformer"]}, ids())
    np.testing.assert_allclose(base.last_hidden_state, out.hidden_states[-1], atol=1e-6)


def test_every_parameter_has_logical_axes(lm):
    *_, variables = lm
    specs = jax.tree.leaves(nn.get_partition_spec(variables), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(b, nn.Partitioned) for b in boxed) and len(specs) == len(boxed)
    assert nn.get_partition_spec(variables)["params"]["transformer"]["wte"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")


def test_future_tokens_cannot_change_earlier_logits(lm):
    model, params, _ = lm
    a = ids()
    b = a.at[:, 7:].set((a[:, 7:] + 1) % CFG.vocab_size)
    la = model.apply({"params": params}, a).logits
    lb = model.apply({"params": params}, b).logits
    np.testing.assert_array_equal(la[:, :7], lb[:, :7])
    assert not np.allclose(la[:, 7:], lb[:, 7:])


def test_padding_mask_and_explicit_path_agree(lm):
    model, params, _ = lm
    x = ids()
    mask = jnp.ones_like(x).at[1, 9:].set(0)
    fast = model.apply({"params": params}, x, attention_mask=mask).logits
    explicit = model.apply({"params": params}, x, attention_mask=mask, output_attentions=True).logits
    np.testing.assert_allclose(fast, explicit, atol=1e-5)
    # Right padding changes nothing before the pad.
    np.testing.assert_allclose(fast[1, :9], model.apply({"params": params}, x[1:, :9]).logits[0], atol=1e-5)


def test_dropout_only_with_an_rng(lm):
    model = GPT2LMHeadModel(CFG.model_copy(update={"resid_pdrop": 0.5, "attn_pdrop": 0.5}))
    _, params, _ = lm
    x = ids()
    e1, e2 = (model.apply({"params": params}, x).logits for _ in range(2))
    np.testing.assert_array_equal(e1, e2)
    t = model.apply({"params": params}, x, rngs={"dropout": jax.random.PRNGKey(1)}).logits
    assert not np.allclose(t, e1)


def test_kv_cache_greedy_matches_full_forward(lm):
    model, params, _ = lm
    prompt = ids(2, 5)
    out = np.asarray(generate(model, params, prompt, max_new_tokens=6))
    seq = np.asarray(prompt)
    for _ in range(6):  # the slow way: recompute everything for every token
        logits = model.apply({"params": params}, jnp.asarray(seq)).logits
        seq = np.concatenate([seq, np.asarray(jnp.argmax(logits[:, -1], -1))[:, None]], 1)
    np.testing.assert_array_equal(out, seq)


def test_left_padded_prompt_decodes_like_unpadded(lm):
    model, params, _ = lm
    short = ids(1, 4, seed=3)
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), short], 1)
    mask = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 4), jnp.int32)], 1)
    a = generate(model, params, short, max_new_tokens=5)
    b = generate(model, params, padded, attention_mask=mask, max_new_tokens=5)
    np.testing.assert_array_equal(a[:, 4:], b[:, 7:])


def test_eos_stops_a_row(lm):
    model, params, _ = lm
    prompt = ids(1, 4)
    free = np.asarray(generate(model, params, prompt, max_new_tokens=6))
    eos = int(free[0, 5])  # the second generated token
    stopped = np.asarray(generate(model, params, prompt, max_new_tokens=6, eos_token_id=eos, pad_token_id=-1))
    first = list(free[0, 4:]).index(eos)
    assert stopped[0, 4 + first] == eos and np.all(stopped[0, 5 + first:] == -1)
