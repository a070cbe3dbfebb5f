"""What trains: gradients and optimizer state for the trainable params only, the frozen params a
constant of the step, fingerprinted in the checkpoint; gradual unfreezing; layer-wise learning rates."""

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_overrides
from jaxlm.checkpoint import Checkpoints, load_run
from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.errors import ConfigError, JaxlmError
from jaxlm.models.bert import BertConfig, BertForSequenceClassification
from jaxlm.tasks.classification import ClassificationTask
from jaxlm.train import layerwise
from jaxlm.train.logging import read_metrics
from jaxlm.train.precision import LossScale
from jaxlm.train.step import TrainState, make_train_step
from jaxlm.train.trainable import count, fingerprint, make_split, merge
from jaxlm.train.trainer import setup, train

BERT = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)


def bert_params():
    model = BertForSequenceClassification(BERT)
    ids = jnp.ones((1, 5), jnp.int32)
    return model, nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])


def test_split_rules():
    _, params = bert_params()
    probe = make_split(params, trainable=["^classifier/"])
    assert {p[0] for p in probe.trainable} == {"classifier"} and not probe.everything
    trainable, frozen = probe.split(params)
    assert count(trainable) == 16 * 3 + 3 and count(trainable) + count(frozen) == count(params)
    assert jax.tree.structure(merge(trainable, frozen)) == jax.tree.structure(params)
    no_embeddings = make_split(params, freeze=["embeddings"])
    assert not any("embeddings" in "/".join(p) for p in no_embeddings.trainable)
    assert make_split(params).everything
    with pytest.raises(ConfigError, match=r"trainer.trainable pattern 'clasifier' matches no parameter; the params "
                                          r"are named like: bert/"):
        make_split(params, trainable=["clasifier"])
    with pytest.raises(ConfigError, match="no parameter is left to train"):
        make_split(params, freeze=["."])


def probe_step(frozen_kernel_shapes):
    """The jaxpr of a linear probe's train step, and the shapes of its frozen matmul kernels."""
    model, params = bert_params()
    split = make_split(params, trainable=["^classifier/"])
    trainable, frozen = split.split(params)
    task = object.__new__(ClassificationTask)
    task.token_types = True
    tx = optax.adamw(1e-3)
    step = make_train_step(model, task, tx, lambda s: 1e-3, 1, 0.0, dropout=False,
                           assemble=lambda t, c: merge(t, c["frozen"]))
    state = TrainState(jnp.zeros((), jnp.int32), trainable, tx.init(trainable), jax.random.PRNGKey(0),
                       LossScale.create("float32", 1.0, 1))
    batch = {"input_ids": jnp.ones((4, 8), jnp.int32), "token_type_ids": jnp.zeros((4, 8), jnp.int32),
             "attention_mask": jnp.ones((4, 8), jnp.int32), "label": jnp.zeros((4,), jnp.int32)}
    jaxpr = jax.make_jaxpr(step)(state, batch, {"frozen": frozen})
    shapes = {tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(frozen)[0]
              if p[-1].key == "kernel" and x.ndim == 2 and x.shape[1] == 24}  # intermediate: [16, 24]
    return jaxpr, shapes, state


def all_eqns(jaxpr):
    yield from jaxpr.eqns
    for sub in jax.extend.core.subjaxprs(jaxpr):
        yield from all_eqns(sub)


def test_gradients_reach_only_the_trainable_params():
    jaxpr, shapes, state = probe_step(None)
    assert shapes == {(16, 24)}
    # A frozen kernel's gradient would be a [16, 24] dot_general output: the step computes none.
    outputs = {tuple(v.aval.shape) for e in all_eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"
               for v in e.outvars}
    assert (16, 24) not in outputs
    # The optimizer state holds the classifier's moments only.
    opt_leaves = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
    assert sum(x.size for x in opt_leaves) == 2 * count(state.params)


def test_full_fine_tuning_jaxpr_does_compute_that_gradient():
    model, params = bert_params()
    batch = jnp.ones((4, 8), jnp.int32)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: model.apply({"params": p}, batch).logits.sum()))(params)
    outputs = {tuple(v.aval.shape) for e in all_eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"
               for v in e.outvars}
    assert (16, 24) in outputs


def test_fingerprint_sees_every_bit():
    _, params = bert_params()
    a = fingerprint(params)
    assert a == fingerprint(jax.tree.map(jnp.copy, params)) and len(a) == 16
    kernel = params["bert"]["layer_1"]["intermediate"]["kernel"]
    bits = jax.lax.bitcast_convert_type(kernel, jnp.uint32).at[3, 5].add(1)
    changed = {**params, "bert": {**params["bert"], "layer_1": {**params["bert"]["layer_1"], "intermediate": {
        **params["bert"]["layer_1"]["intermediate"], "kernel": jax.lax.bitcast_convert_type(bits, jnp.float32)}}}}
    assert fingerprint(changed) != a
    assert fingerprint(jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)) != a


def gpt2_run(tmp_path, corpus_file, name, **extra):
    return load_config("configs/gpt2-tiny.yaml", tiny_overrides(tmp_path / name, **{
        "data.paths": corpus_file, "trainer.max_steps": 4, "trainer.log_every": 1, "checkpoint.every": 2,
        **extra}))


def test_frozen_run_checkpoints_trainable_params_and_refuses_another_base(tmp_path, corpus_file, caplog):
    train(gpt2_run(tmp_path, corpus_file, "base", **{"trainer.max_steps": 2}))
    train(gpt2_run(tmp_path, corpus_file, "other", **{"trainer.max_steps": 1}))
    probe = {"trainer.trainable": "[ln_f, h_1/mlp]", "model.init_from": tmp_path / "base"}
    with caplog.at_level("INFO", logger="jaxlm"):
        train(gpt2_run(tmp_path, corpus_file, "probe", **probe))
    assert any("trains 8,416 of" in r.message for r in caplog.records)
    _, base, _ = load_run(tmp_path / "base")
    config, params, meta = load_run(tmp_path / "probe")
    # eval / generate read every param: the frozen ones are the base's, the trained ones moved.
    assert meta["frozen"]["params"] == count(base) - 8416 and len(meta["frozen"]["fingerprint"]) == 16
    np.testing.assert_array_equal(params["transformer"]["h_0"]["attn"]["c_attn"]["kernel"],
                                  base["transformer"]["h_0"]["attn"]["c_attn"]["kernel"])
    assert not np.allclose(params["transformer"]["h_1"]["mlp"]["c_fc"]["kernel"],
                           base["transformer"]["h_1"]["mlp"]["c_fc"]["kernel"])
    ckpt = Checkpoints(tmp_path / "probe", read_only=True)
    saved = ckpt.read_params(4)
    ckpt.close()
    assert set(saved) == {"transformer"} and set(saved["transformer"]) == {"ln_f", "h_1"}
    # Resuming against another base is refused in one line; against the same one it continues.
    with pytest.raises(JaxlmError, match=r"cannot resume .*probe: the checkpoint does not match: its frozen base "
                                         r"has fingerprint [0-9a-f]{16}"):
        train(gpt2_run(tmp_path, corpus_file, "probe", **{**probe, "model.init_from": tmp_path / "other",
                                                          "trainer.max_steps": 6}))
    train(gpt2_run(tmp_path, corpus_file, "probe", **{**probe, "trainer.max_steps": 6}))
    assert max(r["step"] for r in read_metrics(tmp_path / "probe")) == 6


def test_frozen_run_resumes_to_the_same_losses(tmp_path, corpus_file):
    probe = {"trainer.trainable": "[h_1]", "trainer.grad_accum_steps": 2, "trainer.max_steps": 6}
    train(gpt2_run(tmp_path, corpus_file, "whole", **probe))
    train(gpt2_run(tmp_path, corpus_file, "halves", **{**probe, "trainer.max_steps": 3}))
    train(gpt2_run(tmp_path, corpus_file, "halves", **probe))

    def losses(name):
        return [r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r]

    np.testing.assert_allclose(losses("halves"), losses("whole"), rtol=1e-6)


def test_gradual_unfreezing_thaws_from_the_top_without_moving_the_rest():
    model, params = bert_params()
    depth = layerwise.depths(params, BERT)
    assert depth["classifier"]["kernel"] == 3 and depth["bert"]["pooler"]["kernel"] == 3
    assert depth["bert"]["layer_1"]["output"]["kernel"] == 2 and depth["bert"]["embeddings"]["LayerNorm"]["scale"] == 0
    tx = layerwise.gradual_unfreeze(optax.adam(0.1), 2, params, BERT)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    moved = []
    for _ in range(8):
        updates, state = tx.update(grads, state, params)
        kernels = {"head": updates["classifier"]["kernel"], "layer_1": updates["bert"]["layer_1"]["output"]["kernel"],
                   "layer_0": updates["bert"]["layer_0"]["output"]["kernel"]}
        moved.append({name: bool(jnp.any(k != 0)) for name, k in kernels.items()})
    assert [m["head"] for m in moved] == [True] * 8
    assert [m["layer_1"] for m in moved] == [False, False] + [True] * 6
    assert [m["layer_0"] for m in moved] == [False] * 4 + [True] * 4
    # The layer that had not thawed kept zero moments: its first update is Adam's first step.
    assert np.allclose(state.inner[0].mu["bert"]["layer_0"]["output"]["kernel"], 1 - 0.9 ** 4)


def test_gradual_unfreezing_of_scanned_layers_goes_slice_by_slice():
    config = BERT.model_copy(update={"scan_layers": True})
    model = BertForSequenceClassification(config)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 5), jnp.int32))["params"])
    tx = layerwise.gradual_unfreeze(optax.sgd(1.0), 1, params, config)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = tx.update(grads, state, params)
    updates, state = tx.update(grads, state, params)  # step 1: the top layer (slice 1) thaws
    kernel = updates["bert"]["layer"]["output"]["kernel"]
    assert kernel.shape[0] == 2 and not jnp.any(kernel[0]) and jnp.all(kernel[1] == -1)


def test_layer_decay_scales_updates_by_depth():
    _, params = bert_params()
    tx = optax.chain(optax.sgd(1.0), layerwise.layer_decay(0.5, params, BERT))
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert float(updates["classifier"]["kernel"][0, 0]) == -1.0
    assert float(updates["bert"]["layer_1"]["intermediate"]["kernel"][0, 0]) == -0.5
    assert float(updates["bert"]["layer_0"]["intermediate"]["kernel"][0, 0]) == -0.25
    assert float(updates["bert"]["embeddings"]["word_embeddings"]["embedding"][0, 0]) == -0.125


def test_trainer_settings_reach_the_optimizer(tmp_path, corpus_file):
    s = setup(gpt2_run(tmp_path, corpus_file, "x", **{"trainer.unfreeze_every": 2, "optimizer.layer_decay": 0.8,
                                                       "trainer.freeze": "[wte]"}))
    assert "wte" not in s.abstract_state.params["transformer"]
    assert type(s.abstract_state.opt_state).__name__ == "UnfreezeState"
    state = s.init_state()
    trainable, constants = state.params, s.constants(s.initial_params()[0])
    assert set(constants["frozen"]["transformer"]) == {"wte"}
    assert count(trainable) + count(constants["frozen"]) == count(s.abstract_params)


def test_bad_rules_are_one_line(tmp_path, corpus_file, capsys):
    args = tiny_overrides(tmp_path / "run", **{"data.paths": corpus_file, "trainer.trainable": "[classifier]"})
    assert main(["train", "configs/gpt2-tiny.yaml", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trainer.trainable pattern 'classifier' matches no parameter" in err
