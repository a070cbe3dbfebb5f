"""Hugging Face directories without torch: export / import round trips, key-name variants,
base <-> head loading and the one-line errors. Parity with transformers is in test_interop.py."""

import json
import logging
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import jaxlm
from jaxlm.interop import InteropError, from_pretrained, save_pretrained
from jaxlm.interop.commands import export_torch
from jaxlm.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel
from jaxlm.models.distilbert import DistilBertConfig, DistilBertForMaskedLM
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel

BERT = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=16)
DISTILBERT = DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=24, max_position_embeddings=16)
GPT2 = GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
IDS = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) + 1


def random_params(model, seed=0):
    """Init params plus noise, so zero biases and unit scales cannot hide a wrong mapping."""
    params = nn.meta.unbox(model.init(jax.random.key(seed), IDS))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), params)


def saved(tmp_path, model, name="ckpt"):
    params = random_params(model)
    return save_pretrained(model, params, tmp_path / name), params


def edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def edit_weights(directory, rename):
    tensors = safetensors.numpy.load_file(directory / "model.safetensors")
    safetensors.numpy.save_file({rename(k): v for k, v in tensors.items()}, directory / "model.safetensors")


def assert_same(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def error(directory) -> str:
    with pytest.raises(InteropError) as info:
        from_pretrained(directory)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    return message


@pytest.mark.parametrize("model", [
    BertForSequenceClassification(BERT.model_copy(update={"num_labels": 3, "id2label": {0: "neg", 1: "mid",
                                                                                        2: "pos"}})),
    DistilBertForMaskedLM(DISTILBERT),
    GPT2LMHeadModel(GPT2),
], ids=lambda m: type(m).__name__)
def test_export_then_import_is_exact(tmp_path, model):
    directory, params = saved(tmp_path, model)
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == [type(model).__name__] and config["model_type"] == model.config.type
    loaded, loaded_params = jaxlm.from_pretrained(directory)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert_same(loaded_params, params)
    if getattr(model.config, "id2label", None):
        assert config["id2label"] == {"0": "neg", "1": "mid", "2": "pos"} and config["label2id"]["pos"] == 2


def test_base_checkpoint_loads_into_a_head_model(tmp_path, caplog):
    directory, params = saved(tmp_path, BertModel(BERT))
    edit_config(directory, architectures=["BertForSequenceClassification"])
    with caplog.at_level(logging.WARNING):
        model, loaded = from_pretrained(directory)
    assert isinstance(model, BertForSequenceClassification)
    assert_same(loaded["bert"], params)
    assert "newly initialised" in caplog.text and "classifier.weight" in caplog.text
    assert loaded["classifier"]["kernel"].shape == (16, 2)


def test_head_checkpoint_loads_into_the_base_model(tmp_path, caplog):
    directory, params = saved(tmp_path, BertForMaskedLM(BERT))
    edit_config(directory, architectures=["BertModel"])
    with caplog.at_level(logging.WARNING):
        model, loaded = from_pretrained(directory)
    assert isinstance(model, BertModel)
    assert_same({k: v for k, v in loaded.items() if k != "pooler"}, params["bert"])
    assert "pooler.dense.weight" in caplog.text  # BertForMaskedLM has no pooler: initialised, and said so
    assert "skipped: cls.predictions.bias" in caplog.text


def test_prefixes_legacy_layernorm_names_and_buffers_are_understood(tmp_path):
    directory, params = saved(tmp_path, BertModel(BERT))
    edit_weights(directory, lambda k: "bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma")
                 .replace("LayerNorm.bias", "LayerNorm.beta"))
    tensors = safetensors.numpy.load_file(directory / "model.safetensors")
    tensors["bert.embeddings.position_ids"] = np.arange(16)[None]
    safetensors.numpy.save_file(tensors, directory / "model.safetensors")
    assert_same(from_pretrained(directory)[1], params)


def test_old_gpt2_checkpoint_without_prefix_and_with_mask_buffers(tmp_path):
    directory, params = saved(tmp_path, GPT2LMHeadModel(GPT2))
    tensors = {k.removeprefix("transformer."): v for k, v in safetensors.numpy.load_file(
        directory / "model.safetensors").items()}
    for i in range(GPT2.n_layer):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((16, 16), np.float32))[None, None]
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    tensors["lm_head.weight"] = tensors["wte.weight"]
    safetensors.numpy.save_file(tensors, directory / "model.safetensors")
    assert_same(from_pretrained(directory)[1], params)


def test_sharded_safetensors(tmp_path):
    directory, params = saved(tmp_path, DistilBertForMaskedLM(DISTILBERT))
    tensors = safetensors.numpy.load_file(directory / "model.safetensors")
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        safetensors.numpy.save_file({k: tensors[k] for k in keys}, directory / shard)
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_same(from_pretrained(directory)[1], params)


def test_directory_without_config(tmp_path):
    assert "has no config.json" in error(tmp_path)


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["T5ForConditionalGeneration"],
                                                      "model_type": "t5"}))
    message = error(tmp_path)
    assert "T5ForConditionalGeneration" in message and "BertForMaskedLM" in message and "GPT2LMHeadModel" in message


def test_unsupported_settings_are_named(tmp_path):
    directory, _ = saved(tmp_path, BertModel(BERT))
    edit_config(directory, is_decoder=True)
    assert "is_decoder=True" in error(directory)
    edit_config(directory, is_decoder=False, hidden_act="silu")
    assert "hidden_act='silu'" in error(directory)


def test_weights_from_a_different_config_name_keys_and_shapes(tmp_path):
    directory, _ = saved(tmp_path, BertModel(BERT))
    edit_config(directory, hidden_size=32)
    message = error(directory)
    assert "shape mismatch: embeddings.LayerNorm.bias is (16,) in the file but (32,) from config.json" in message
    assert "and 33 more" in message
    edit_config(directory, hidden_size=16, num_hidden_layers=3)
    assert "missing: encoder.layer.2." in error(directory)
    edit_config(directory, num_hidden_layers=1)
    assert "unexpected: encoder.layer.1." in error(directory)


def test_truncated_safetensors(tmp_path):
    directory, _ = saved(tmp_path, BertModel(BERT))
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "model.safetensors is truncated or corrupt" in error(directory)


def test_missing_weights(tmp_path):
    directory, _ = saved(tmp_path, BertModel(BERT))
    (directory / "model.safetensors").unlink()
    assert "has no weights" in error(directory)


def test_pytorch_bin_needs_torch(tmp_path, monkeypatch):
    directory, _ = saved(tmp_path, BertModel(BERT))
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert "needs torch" in error(directory)


def test_export_refuses_models_transformers_lacks():
    class NotAModel(nn.Module):
        config: BertConfig

    with pytest.raises(InteropError, match="no transformers counterpart; exportable: BertForMaskedLM"):
        save_pretrained(NotAModel(BERT), {}, "unused")


def test_export_checks_the_params_fit(tmp_path):
    params = random_params(BertModel(BERT))
    with pytest.raises(InteropError, match="do not fit the BertModel"):
        save_pretrained(BertModel(BERT.model_copy(update={"num_hidden_layers": 3})), params, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_export_torch_says_what_it_wrote(tmp_path):
    model = DistilBertForMaskedLM(DISTILBERT)
    line = export_torch(model, random_params(model), tmp_path / "out")
    assert line.startswith("wrote DistilBertForMaskedLM (") and "\n" not in line
    assert (tmp_path / "out" / "model.safetensors").is_file()
