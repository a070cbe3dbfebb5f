"""BERT and DistilBERT without torch: shapes, heads, logical axes, dropout, padding gradients.
Numerical parity with transformers is in test_interop.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import MODEL_FAMILIES, build_model
from jaxlm.models.bert import BertConfig, BertForPreTraining, BertModel
from jaxlm.models.distilbert import DistilBertConfig, DistilBertModel

BERT = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=16, num_labels=3)
DISTILBERT = DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=24, max_position_embeddings=16,
                              num_labels=3)
B, L = 2, 6
HEADS = [(cfg, head) for cfg in (BERT, DISTILBERT) for head in MODEL_FAMILIES[cfg.type].heads]


def ids(seed=0):
    return jax.random.randint(jax.random.key(seed), (B, L), 1, 50)


def init(model):
    """The model's variables without the adversarial hooks' ``perturbations`` (not parameters)."""
    variables = model.init(jax.random.key(0), ids())
    return {k: v for k, v in variables.items() if k != "perturbations"}


@pytest.mark.parametrize("cfg,head", HEADS, ids=[f"{c.type}-{h}" for c, h in HEADS])
def test_head_outputs_and_logical_axes(cfg, head):
    if head == "question_answering":
        cfg = cfg.model_copy(update={"num_labels": 2})  # start and end
    model = build_model(cfg, head)
    variables = init(model)
    boxed = jax.tree.leaves(variables, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxed and all(isinstance(b, nn.Partitioned) and len(b.names) == b.value.ndim for b in boxed)
    out = model.apply(nn.meta.unbox(variables), ids(), attention_mask=jnp.ones((B, L)).at[1, 4:].set(0),
                      output_hidden_states=True, output_attentions=True)
    layers = getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layers", None))
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
    assert out.attentions[0].shape == (B, 2, L, L)
    np.testing.assert_allclose(out.attentions[-1][1, :, :, 4:], 0.0)  # padded keys get no attention
    expected = {
        "base": None, "masked_lm": (B, L, 50), "pretraining": (B, L, 50), "next_sentence": (B, 2),
        "classification": (B, 3), "token_classification": (B, L, 3), "question_answering": (B, L, 2),
    }[head]
    if expected is None:
        assert out.logits is None and out.last_hidden_state.shape == (B, L, 16)
    else:
        assert out.logits.shape == expected
    if head == "pretraining":
        assert out.seq_relationship_logits.shape == (B, 2)
    if head == "question_answering":
        np.testing.assert_array_equal(out.start_logits, out.logits[..., 0])


MASKED_HEADS = [(cfg, head) for cfg, head in HEADS if getattr(build_model(cfg, head), "scores_tokens", False)]


@pytest.mark.parametrize("cfg,head", MASKED_HEADS, ids=[f"{c.type}-{h}" for c, h in MASKED_HEADS])
def test_masked_positions_give_the_logits_at_those_positions(cfg, head):
    model = build_model(cfg, head)
    params = nn.meta.unbox(init(model))
    positions = jnp.array([[4, 0, 4], [1, 5, 2]])
    full = model.apply(params, ids())
    some = model.apply(params, ids(), masked_positions=positions)
    assert some.logits.shape == (B, 3, 50)
    np.testing.assert_allclose(some.logits, jnp.take_along_axis(full.logits, positions[..., None], 1), rtol=1e-6,
                               atol=1e-6)
    if head == "pretraining":  # the pair head reads the [CLS] state, not the gathered ones
        np.testing.assert_array_equal(some.seq_relationship_logits, full.seq_relationship_logits)


NO_TOKEN_HEADS = [(c, h) for c, h in HEADS if (c, h) not in MASKED_HEADS and h not in ("base", "question_answering")]


@pytest.mark.parametrize("cfg,head", NO_TOKEN_HEADS, ids=[f"{c.type}-{h}" for c, h in NO_TOKEN_HEADS])
def test_heads_that_predict_no_tokens_refuse_masked_positions(cfg, head):
    model = build_model(cfg, head)
    with pytest.raises(ValueError, match="predicts no tokens: call it without masked_positions"):
        model.init(jax.random.key(0), ids(), masked_positions=jnp.zeros((B, 2), int))


def test_heads_share_the_trunk_and_tie_the_decoder():
    variables = nn.meta.unbox(init(BertForPreTraining(BERT)))["params"]
    assert set(variables) == {"bert", "cls"}
    assert "decoder" not in variables["cls"]["predictions"]  # tied to bert/embeddings/word_embeddings
    base = BertModel(BERT).apply({"params": variables["bert"]}, ids())
    full = BertForPreTraining(BERT).apply({"params": variables}, ids())
    np.testing.assert_array_equal(base.last_hidden_state, full.last_hidden_state)
    np.testing.assert_array_equal(base.pooler_output, full.pooler_output)


@pytest.mark.parametrize("cfg,model_cls", [(BERT, BertModel), (DISTILBERT, DistilBertModel)])
def test_dropout_only_with_a_dropout_rng(cfg, model_cls):
    model = model_cls(cfg)
    params = nn.meta.unbox(init(model))
    x = ids()
    eval_a, eval_b = (model.apply(params, x).last_hidden_state for _ in range(2))
    train = model.apply(params, x, rngs={"dropout": jax.random.key(1)}).last_hidden_state
    np.testing.assert_array_equal(eval_a, eval_b)
    assert not np.allclose(eval_a, train)


@pytest.mark.parametrize("cfg,model_cls", [(BERT, BertModel), (DISTILBERT, DistilBertModel)])
def test_padding_row_gets_no_gradient_from_the_lookup(cfg, model_cls):
    """As torch's ``nn.Embedding(padding_idx=pad_token_id)``."""
    model = model_cls(cfg)
    params = nn.meta.unbox(init(model))["params"]
    x = ids().at[:, -2:].set(cfg.pad_token_id)
    grads = jax.grad(lambda p: model.apply({"params": p}, x).last_hidden_state.sum())(params)
    rows = np.abs(np.asarray(grads["embeddings"]["word_embeddings"]["embedding"])).sum(-1)
    assert rows[cfg.pad_token_id] == 0 and (rows[np.unique(np.asarray(x[:, :-2]))] > 0).all()


def test_distilbert_refuses_token_types():
    model = DistilBertModel(DISTILBERT)
    params = nn.meta.unbox(init(model))
    with pytest.raises(ValueError, match="token_type_ids"):
        model.apply(params, ids(), token_type_ids=jnp.zeros((B, L), jnp.int32))


def test_token_types_and_positions_change_the_output():
    model = BertModel(BERT)
    params = nn.meta.unbox(init(model))
    x = ids()
    plain = model.apply(params, x).last_hidden_state
    explicit = model.apply(params, x, token_type_ids=jnp.zeros_like(x),
                           position_ids=jnp.broadcast_to(jnp.arange(L), x.shape)).last_hidden_state
    np.testing.assert_array_equal(plain, explicit)
    assert not np.allclose(plain, model.apply(params, x, token_type_ids=jnp.ones_like(x)).last_hidden_state)
