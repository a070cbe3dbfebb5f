"""Packed classification rows: attention never crosses an example, so each example gets the
logits it gets alone in its own padded row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import load_config
from jaxlm.data.packing import best_fit, pack_rows
from jaxlm.errors import ConfigError
from jaxlm.layers.attention import segment_mask
from jaxlm.models import build_model
from jaxlm.tasks.classification import ClassificationTask

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 32, "vocab_size": 300, "num_labels": 3}


def test_best_fit_fills_rows_and_keeps_every_example_once():
    lengths = np.array([5, 9, 3, 7, 1, 10, 4, 2])
    rows = best_fit(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(8))
    assert all(lengths[r].sum() <= 10 for r in rows) and len(rows) == 5  # 41 tokens: 5 rows is the least
    assert best_fit(lengths, 10) == rows


def framed(rng, n, length):
    ids, types, mask = (np.zeros((n, length), np.int32) for _ in range(3))
    for i in range(n):
        size = int(rng.integers(3, length // 2))
        ids[i, :size] = [2, *rng.integers(5, 300, size - 2), 3]
        types[i, size // 2:size] = 1
        mask[i, :size] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@pytest.mark.parametrize("model_type,extra", [("bert", {}), ("bert", {"positions": "rotary"}),
                                              ("distilbert", {})])
def test_packed_logits_equal_unpacked(model_type, extra):
    names = {"distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "vocab_size": 300,
                            "max_position_embeddings": 32, "num_labels": 3}}.get(model_type, TINY)
    config = load_config(None, [f"model.type={model_type}", "task=classification", "data.seq_len=32",
                                *[f"model.{k}={v}" for k, v in {**names, **extra}.items()]])
    model = build_model(config.model, "classification")
    rows = framed(np.random.default_rng(0), 12, 32)
    labels = np.arange(12) % 3
    packed = pack_rows(rows, labels)
    assert len(packed["input_ids"]) < 12 and packed["label_weight"].sum() == 12
    alone_inputs = {k: jnp.asarray(v) for k, v in rows.items() if k != "token_type_ids" or model_type == "bert"}
    params = model.init(jax.random.PRNGKey(0), **alone_inputs)["params"]
    alone = model.apply({"params": params}, **alone_inputs).logits
    together = model.apply({"params": params}, jnp.asarray(packed["input_ids"]),
                           attention_mask=segment_mask(jnp.asarray(packed["segment_ids"])),
                           token_type_ids=None if model_type == "distilbert" else jnp.asarray(packed["token_type_ids"]),
                           position_ids=jnp.asarray(packed["position_ids"]),
                           pooled_positions=jnp.asarray(packed["pooled_positions"])).logits
    order = np.concatenate([np.flatnonzero(np.isin(np.arange(12), g)) for g in best_fit(
        rows["attention_mask"].sum(1), 32)])
    got = np.asarray(together)[packed["label_weight"] == 1]
    assert got.shape == (12, 3) and (packed["label"][packed["label_weight"] == 1] == labels[order]).all()
    np.testing.assert_allclose(got, np.asarray(alone)[order], atol=1e-5, rtol=0)
    assert np.abs(got - np.asarray(alone)[order]).max() <= 1e-5


def test_packed_classification_task_trains_and_evaluates_like_unpacked(tmp_path):
    overrides = [f"run.out_dir={tmp_path}", "data.seq_len=64", "model.max_position_embeddings=64",
                 *[f"model.{k}={v}" for k, v in TINY.items() if k not in ("num_labels", "max_position_embeddings",
                                                                           "vocab_size")]]
    plain = ClassificationTask(load_config("configs/bert-classify.yaml", overrides), tmp_path)
    packed = ClassificationTask(load_config("configs/bert-classify.yaml", [*overrides, "task.packing=true"]), tmp_path)
    assert len(packed.train["input_ids"]) < len(plain.train["input_ids"]) / 2
    assert packed.train["label_weight"].sum() == len(plain.train["label"])
    config = load_config("configs/bert-classify.yaml", overrides)
    model = build_model(config.model, "classification")
    params = model.init(jax.random.PRNGKey(0), **plain.model_inputs(plain.example_batch(1)))["params"]

    def sums(task):
        totals = None
        for batch in task.eval_batches(8):
            s = jax.jit(lambda b: task.eval_sums(model, params, b))({k: jnp.asarray(v) for k, v in batch.items()})
            totals = s if totals is None else jax.tree.map(jnp.add, totals, s)
        return task.summarize(jax.device_get(totals), True)

    a, b = sums(plain), sums(packed)
    assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 for k in a)
    with pytest.raises(ConfigError, match="task.packing needs a Transformer encoder"):
        ClassificationTask(load_config("configs/textcnn-sentiment.yaml", [f"run.out_dir={tmp_path / 'cnn'}",
                                                                          "task.packing=true"]), tmp_path / "cnn")


@pytest.mark.parametrize("positions", ["sinusoidal", "rotary"])
def test_packed_seq2seq_logits_equal_unpacked(tmp_path, positions):
    from jaxlm.data.packing import pack_pairs
    from jaxlm.tasks.seq2seq import Seq2SeqTask

    overrides = [f"run.out_dir={tmp_path}", "task.num_train_examples=40", "task.num_eval_examples=8",
                 f"model.positions={positions}", "model.d_model=32", "data.seq_len=32",
                 "model.max_position_embeddings=40",
                 "model.decoder_layers=2", "model.encoder_ffn_dim=64", "model.decoder_ffn_dim=64"]
    config = load_config("configs/seq2seq-reverse.yaml", overrides)
    task = Seq2SeqTask(config, tmp_path)
    rows = {k: v[:12] for k, v in task.train.items()}
    packed = pack_pairs(rows, task.pad_id)
    targets = rows["decoder_attention_mask"] == 1
    assert len(packed["input_ids"]) < 6 and packed["decoder_attention_mask"].sum() == targets.sum()
    model = build_model(config.model, "seq2seq")
    params = model.init(jax.random.PRNGKey(0), **task.model_inputs(rows))["params"]
    alone = np.asarray(model.apply({"params": params}, **task.model_inputs(rows)).logits)
    together = np.asarray(model.apply({"params": params}, **task.model_inputs(packed)).logits)
    got = together[packed["decoder_attention_mask"] == 1]
    want = alone[targets]  # the same order: pairs stay in order, tokens in place
    assert (packed["labels"][packed["decoder_attention_mask"] == 1] == rows["labels"][targets]).all()
    assert np.abs(got - want).max() <= 1e-5
    packed_task = Seq2SeqTask(load_config("configs/seq2seq-reverse.yaml", [*overrides, "task.packing=true"]), tmp_path)
    assert len(packed_task.train["input_ids"]) < 40 / 3 and "segment_ids" not in packed_task.valid
    with pytest.raises(ConfigError, match="task.packing needs model.type=transformer_seq2seq"):
        Seq2SeqTask(load_config("configs/lstm-seq2seq-reverse.yaml", [f"run.out_dir={tmp_path}", "task.packing=true",
                                                                      "task.num_train_examples=40"]), tmp_path)
