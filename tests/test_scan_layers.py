"""``model.scan_layers``: one compiled layer scanned N times, equal to the unscanned model."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_overrides
from jaxlm.checkpoint import CheckpointError, load_params_into, load_run
from jaxlm.config import load_config
from jaxlm.generation import generate
from jaxlm.interop import files, from_pretrained, save_pretrained, walker
from jaxlm.models import MODEL_FAMILIES, build_model
from jaxlm.models.layout import stack_layers, unstack_layers
from jaxlm.train.logging import read_metrics
from jaxlm.train.trainer import train

SIZES = {"gpt2": dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=3, n_head=2),
         "bert": dict(vocab_size=50, max_position_embeddings=16, hidden_size=16, num_hidden_layers=3,
                      num_attention_heads=2, intermediate_size=32)}
HEADS = {"gpt2": "causal_lm", "bert": "masked_lm"}


def pair(family, **fields):
    """(unscanned model, scanned model, unscanned params)."""
    config = MODEL_FAMILIES[family].config(**SIZES[family], **fields)
    plain = build_model(config, HEADS[family])
    scanned = build_model(config.model_copy(update={"scan_layers": True}), HEADS[family])
    ids = jnp.ones((1, 4), jnp.int32)
    return plain, scanned, nn.meta.unbox(plain.init(jax.random.PRNGKey(0), ids))["params"]


def close(a, b, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol), a, b)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_scanned_outputs_and_gradients_equal_the_unscanned_model(family):
    plain, scanned, params = pair(family)
    stacked = stack_layers(params, plain.config)
    assert jax.tree.structure(unstack_layers(stacked, plain.config)) == jax.tree.structure(params)
    ids = jnp.asarray(np.random.RandomState(0).randint(1, 50, (2, 9)))
    mask = jnp.ones_like(ids).at[1, 6:].set(0)
    kw = dict(output_hidden_states=True, output_attentions=True)
    a = plain.apply({"params": params}, ids, mask, **kw)
    b = scanned.apply({"params": stacked}, ids, mask, **kw)
    assert len(b.hidden_states) == 4 and len(b.attentions) == 3
    close(a, b)

    # Every stacked param keeps its logical names behind a leading "layers" axis.
    boxed = scanned.init(jax.random.PRNGKey(0), ids)["params"]
    trunk = boxed["transformer"]["h"] if family == "gpt2" else boxed["bert"]["layer"]
    boxes = jax.tree.leaves(trunk, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert boxes and all(isinstance(b, nn.Partitioned) and b.names[0] == "layers" for b in boxes)

    def loss(model, p):
        return (model.apply({"params": p}, ids, mask).logits ** 2).mean()

    grads = jax.grad(lambda p: loss(plain, p))(params)
    for remat in ("none", "full"):  # scan composes with remat
        model = scanned.clone(config=scanned.config.model_copy(update={"remat": remat}))
        close(grads, unstack_layers(jax.grad(lambda p: loss(model, p))(stacked), plain.config))


def test_scanned_dropout_is_reproducible_and_differs_per_key():
    _, scanned, params = pair("gpt2", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    stacked = stack_layers(params, scanned.config)
    ids = jnp.asarray(np.random.RandomState(0).randint(1, 50, (2, 9)))

    def run(seed):
        return scanned.apply({"params": stacked}, ids, rngs={"dropout": jax.random.PRNGKey(seed)}).logits

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))
    assert not np.allclose(run(1), scanned.apply({"params": stacked}, ids).logits)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_equal_between_layouts(num_beams):
    plain, scanned, params = pair("gpt2")
    prompt = jnp.asarray([[0, 5, 7, 9], [3, 4, 1, 2]])
    mask = jnp.asarray([[0, 1, 1, 1], [1, 1, 1, 1]])
    kw = dict(max_new_tokens=6, num_beams=num_beams, eos_token_id=None, pad_token_id=0)
    np.testing.assert_array_equal(generate(plain, params, prompt, mask, **kw),
                                  generate(scanned, stack_layers(params, plain.config), prompt, mask, **kw))


def test_export_and_import_of_a_scanned_model(tmp_path):
    plain, scanned, params = pair("bert")
    stacked = stack_layers(params, plain.config)
    save_pretrained(scanned, stacked, tmp_path)
    model, loaded = from_pretrained(tmp_path)
    assert not model.config.scan_layers
    close(loaded, params, atol=0)
    family = MODEL_FAMILIES["bert"]
    again = walker.params_from_torch(scanned, files.read_state_dict(tmp_path), family.torch_keys,
                                     dtype=jnp.float32, seed=0, source=str(tmp_path))
    close(again, stacked, atol=0)


def test_distilbert_refuses_scan_layers():
    with pytest.raises(ValueError, match="model.scan_layers is not implemented for model type 'distilbert'"):
        MODEL_FAMILIES["distilbert"].config(scan_layers=True)


def test_trainer_init_from_and_resume_across_layouts(tmp_path, corpus_file):
    def config(run, **extra):
        return load_config("configs/gpt2-tiny.yaml", tiny_overrides(tmp_path / run, **{
            "data.paths": corpus_file, "trainer.max_steps": 3, "trainer.eval_every": 3, **extra}))

    def losses(run):
        return [r["loss"] for r in read_metrics(tmp_path / run) if "loss" in r]

    train(config("start"))
    # The same start (an unscanned checkpoint) trains to the same losses in both layouts.
    train(config("plain", **{"model.init_from": tmp_path / "start", "trainer.log_every": 1}))
    train(config("scanned", **{"model.init_from": tmp_path / "start", "trainer.log_every": 1,
                               "model.scan_layers": True}))
    assert len(losses("plain")) == 3
    np.testing.assert_allclose(losses("scanned"), losses("plain"), rtol=1e-5)

    # A scanned checkpoint loads into an unscanned model.
    cfg = config("x").model
    _, saved, _ = load_run(tmp_path / "scanned")
    model = build_model(cfg, "causal_lm")
    abstract = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))))
    loaded = load_params_into(tmp_path / "scanned", abstract["params"])
    close(loaded, unstack_layers(saved, cfg), atol=0)

    # Resuming a run with the other layout is refused in one line that names the field.
    with pytest.raises(CheckpointError, match=r"cannot resume .*model\.scan_layers: True in the checkpoint, "
                                              r"False now"):
        train(config("scanned", **{"trainer.max_steps": 6}))
