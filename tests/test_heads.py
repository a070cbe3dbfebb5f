"""Head pruning by importance (Michel et al. 2019) and layer dropping: removed heads leave the other
heads' outputs exact, importance is the gate gradient, and the shrunk runs evaluate and export to
transformers with the same outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxlm.cli import load_model, main
from jaxlm.compress.heads import (gate_heads, head_importance, keep_layers, layer_paths, least_important,
                                  remove_heads, restore_heads)
from jaxlm.config import validate_config
from jaxlm.models import build_model

FAMILIES = {
    "bert": ({"type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
              "intermediate_size": 32, "max_position_embeddings": 16}, "classification"),
    "roberta": ({"type": "roberta", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3,
                 "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 20}, "masked_lm"),
    "distilbert": ({"type": "distilbert", "vocab_size": 50, "dim": 16, "n_layers": 3, "n_heads": 4, "hidden_dim": 32,
                    "max_position_embeddings": 16}, "masked_lm"),
    "gpt2": ({"type": "gpt2", "vocab_size": 50, "n_embd": 16, "n_layer": 3, "n_head": 4, "n_positions": 16},
             "causal_lm"),
    "vit": ({"type": "vit", "image_size": 8, "patch_size": 4, "num_channels": 1, "hidden_size": 16,
             "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 32, "num_labels": 3},
            "image_classification"),
}
REMOVE = {0: [1, 3], 2: [0]}


def built(family):
    fields, head = FAMILIES[family]
    config = validate_config({"model": fields, "data": {"seq_len": 8}}).model
    model = build_model(config, head)
    inputs = {"pixel_values": jax.random.normal(jax.random.key(1), (2, 8, 8, 1))} if family == "vit" else \
        {"input_ids": jax.random.randint(jax.random.key(1), (2, 7), 0, 50)}
    params = model.init(jax.random.key(0), **inputs)["params"]
    return config, head, model, jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                                             is_leaf=lambda x: hasattr(x, "value")), inputs


@pytest.mark.parametrize("family", list(FAMILIES))
def test_removing_heads_keeps_the_other_heads_outputs_exact(family):
    config, head, model, params, inputs = built(family)
    gates = jnp.ones((3, 4))
    for layer, heads in REMOVE.items():
        gates = gates.at[layer, jnp.asarray(heads)].set(0.0)
    silenced = model.apply({"params": gate_heads(params, config, gates)}, **inputs).logits
    small_params, small_config = remove_heads(params, config, REMOVE)
    assert small_config.pruned_heads == ((1, 3), (), (0,))
    hash(small_config)  # generation passes the model as a static argument
    small = build_model(small_config, head)
    got = small.apply({"params": small_params}, **inputs).logits
    np.testing.assert_allclose(got, silenced, atol=2e-6)
    assert sum(x.size for x in jax.tree.leaves(small_params)) < sum(x.size for x in jax.tree.leaves(params))
    # Again on the shrunk model (indices stay the original ones), then back to full size with zero heads.
    smaller_params, smaller_config = remove_heads(small_params, small_config, {0: [0]})
    assert smaller_config.pruned_heads[0] == (0, 1, 3)
    full_params, full_config = restore_heads(small_params, small_config)
    assert full_config.pruned_heads == () and jax.tree.map(jnp.shape, full_params) == jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(build_model(full_config, head).apply({"params": full_params}, **inputs).logits, got,
                               atol=2e-6)


def test_importance_is_the_gate_gradient_and_the_lowest_go_first():
    config, head, model, params, inputs = built("gpt2")

    class Task:  # next-token loss of one row
        @staticmethod
        def loss(model, params, batch, rng, smoothing):
            logits = model.apply({"params": params}, batch["input_ids"]).logits[:, :-1]
            nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["input_ids"][:, 1:, None], -1)
            return nll.sum(), jnp.asarray(float(nll.size))

    rows = {"input_ids": inputs["input_ids"]}
    importance = head_importance(model, params, config, Task, [rows])
    # By hand: dL/dg for head h is the sum of W_o[h] * dL/dW_o[h] (the gate scales that slice).
    expected = np.zeros((3, 4))
    for r in range(2):
        grads = jax.grad(lambda p: Task.loss(model, p, {"input_ids": rows["input_ids"][r:r + 1]}, None, 0)[0] / 6)(
            params)
        for i, path in layer_paths(params, config).items():
            w = traverse_util.flatten_dict(params)[(*path, "attn", "c_proj", "kernel")]
            g = traverse_util.flatten_dict(grads)[(*path, "attn", "c_proj", "kernel")]
            expected[i] += np.abs(np.asarray((w * g).sum((1, 2)))) / 2
    for i in range(3):
        np.testing.assert_allclose(importance[i], expected[i] / np.linalg.norm(expected[i]), rtol=1e-4)
    remove = least_important(importance, config, 0.5)
    assert sum(map(len, remove.values())) == 6 and all(len(h) < 4 for h in remove.values())
    lowest = min((float(s), i, h) for i, scores in importance.items() for h, s in enumerate(scores))
    assert lowest[2] in remove[lowest[1]]


def test_keep_layers_renumbers_and_carries_pruned_heads():
    config, head, model, params, inputs = built("bert")
    small_params, small_config = remove_heads(params, config, {2: [0]})
    kept, kept_config = keep_layers(small_params, small_config, [0, 2])
    assert kept_config.num_hidden_layers == 2 and kept_config.pruned_heads == ((), (0,))
    assert type(kept_config).model_validate({**kept_config.model_dump(), "pruned_heads": {1: [0]}}) == kept_config
    flat_old, flat_new = traverse_util.flatten_dict(small_params), traverse_util.flatten_dict(kept)
    for path, x in flat_new.items():
        old = tuple(p.replace("layer_1", "layer_2") for p in path)
        np.testing.assert_array_equal(x, flat_old[old])
    build_model(kept_config, head).apply({"params": kept}, **inputs)


@pytest.mark.torch
def test_shrunk_classifier_evaluates_and_exports_to_transformers(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from transformers import BertForSequenceClassification

    from test_quantize import bert_overrides

    run = tmp_path / "run"
    assert main(["train", "configs/bert-classify.yaml", *bert_overrides(run, **{
        "trainer.early_stopping": "null", "checkpoint.keep_best": 0, "model.num_hidden_layers": 3,
        "model.num_attention_heads": 4})]) == 0
    assert main(["prune", str(run), "--heads", "0.25", "--drop-layers", "1", "--importance-batches", "2",
                 "--out", str(tmp_path / "small")]) == 0
    out = capsys.readouterr().out
    assert "removed 3 heads by importance" in out and "dropped layers [1]; 2 remain" in out
    assert main(["eval", str(tmp_path / "small" / "config.yaml")]) == 0
    model, params, _ = load_model(str(tmp_path / "small"), None)
    assert model.config.num_hidden_layers == 2 and sum(map(len, model.config.pruned_heads)) >= 1
    assert main(["convert", "--to-torch", str(tmp_path / "small"), "--out", str(tmp_path / "hf")]) == 0
    assert "written back as zeros" in capsys.readouterr().out
    ids = np.asarray([[2, 11, 12, 13, 3, 0]])
    mask = (ids > 0).astype(np.int32)
    ours = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)).logits
    hf = BertForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
