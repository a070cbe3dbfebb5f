import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_overrides
from jaxlm.cli import main
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxlm.tasks.causal_lm import CausalLMTask
from jaxlm.train.logging import read_metrics
from jaxlm.train.losses import cross_entropy_sum
from jaxlm.train.precision import LossScale
from jaxlm.train.step import TrainState, make_train_step


def test_label_smoothing_matches_optax():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 11))
    targets = jax.random.randint(jax.random.PRNGKey(1), (2, 5), 0, 11)
    weights = jnp.ones((2, 5)).at[1, 3:].set(0)
    total, count = cross_entropy_sum(logits, targets, weights, 0.1)
    ref = optax.softmax_cross_entropy(logits, optax.smooth_labels(jax.nn.one_hot(targets, 11), 0.1))
    np.testing.assert_allclose(total, (ref * weights).sum(), rtol=1e-6)
    assert count == 8


def test_accumulation_equals_one_large_batch():
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    task = object.__new__(CausalLMTask)  # only the loss is needed
    rng = np.random.RandomState(0)
    batch = {"tokens": rng.randint(0, 50, (8, 13)).astype(np.int32), "loss_mask": np.ones((8, 12), np.int32)}
    batch["loss_mask"][5, 4:] = 0  # uneven weights: accumulation must weight by tokens, not by micro-batch
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), batch["tokens"][:, :-1]))["params"]
    tx = optax.sgd(1.0)  # updated params = params - grads: compares the gradients themselves
    results = []
    for k in (1, 4):
        step = jax.jit(make_train_step(model, task, tx, lambda s: 1.0, k, 0.0, dropout=False))
        state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.PRNGKey(0),
                           LossScale.create("float32", 1.0, 1))
        results.append(step(state, batch))
    (s1, m1), (s4, m4) = results
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s1.params, s4.params)


def test_train_eval_generate_end_to_end(tmp_path, corpus_file, capsys):
    run = tmp_path / "run"
    args = tiny_overrides(run, **{"data.paths": corpus_file, "trainer.grad_accum_steps": 2})
    assert main(["train", "configs/gpt2-tiny.yaml", *args]) == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    records = read_metrics(run)
    train_logs = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in train_logs] == [2, 4, 6] and [r["step"] for r in evals] == [3, 6]
    assert {"step", "loss", "learning_rate", "grad_norm", "tokens_per_second"} <= set(train_logs[0])
    assert {"eval_loss", "eval_perplexity"} <= set(evals[0])
    assert "eval_bits_per_byte" not in evals[0]  # a capped eval does not cover the split
    assert train_logs[-1]["loss"] < train_logs[0]["loss"]
    assert final["eval_loss"] == pytest.approx(evals[-1]["eval_loss"], rel=1e-5)
    assert (run / "config.yaml").is_file() and (run / "tokenizer" / "tokenizer.json").is_file()
    assert list((run / "tensorboard").iterdir())

    assert main(["eval", "configs/gpt2-tiny.yaml", *args]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["step"] == 6 and evaluated["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-5)

    assert main(["generate", "--run", str(run), "--prompt", "The import", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("The import")


def test_bits_per_byte_on_the_full_validation_split(tmp_path, corpus_file):
    from jaxlm.config import load_config
    from jaxlm.data.corpus import load_documents, split_documents
    from jaxlm.tasks import build_task

    run = tmp_path / "run"
    args = tiny_overrides(run, **{"data.paths": corpus_file, "trainer.max_steps": 1, "trainer.eval_batches": None})
    assert main(["train", "configs/gpt2-tiny.yaml", *args]) == 0
    ev = [r for r in read_metrics(run) if "eval_loss" in r][-1]
    task = build_task(load_config("configs/gpt2-tiny.yaml", args), run)
    n_targets = int(task.valid[np.arange(len(task.valid))]["loss_mask"].sum())  # streamed from prepared shards
    _, valid_text = split_documents(load_documents([str(corpus_file)]), 0.1)
    assert task.valid_bytes == sum(len(t.encode()) for t in valid_text)
    expected = ev["eval_loss"] * n_targets / np.log(2) / task.valid_bytes
    assert ev["eval_bits_per_byte"] == pytest.approx(expected, rel=1e-6)
    assert ev["eval_perplexity"] == pytest.approx(np.exp(ev["eval_loss"]), rel=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_remat_gives_the_same_gradients(family):
    from jaxlm.models import MODEL_FAMILIES, build_model

    sizes = {"gpt2": dict(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2),
             "bert": dict(vocab_size=50, max_position_embeddings=16, hidden_size=16, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=32)}[family]
    head = "causal_lm" if family == "gpt2" else "masked_lm"
    ids = jnp.asarray(np.random.RandomState(0).randint(1, 50, (2, 9)))
    grads = {}
    for remat in ("none", "full", "dots"):
        model = build_model(MODEL_FAMILIES[family].config(**sizes, remat=remat), head)
        params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids))["params"]
        loss = lambda p: (model.apply({"params": p}, ids, rngs={"dropout": jax.random.PRNGKey(1)}).logits ** 2).mean()  # noqa: E731
        grads[remat] = jax.grad(loss)(params)
    for remat in ("full", "dots"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads["none"], grads[remat])
