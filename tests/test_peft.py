"""Parameter-efficient runs through the one trainer: every method trains from a pretrained base, only
its own params (and modules_to_save) move, and its runs evaluate, predict, generate, merge and export."""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_overrides
from jaxlm.checkpoint import Checkpoints, load_run
from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.interop.runs import load_run_model
from jaxlm.train.logging import read_metrics
from jaxlm.train.trainable import flat, unflat
from jaxlm.train.trainer import setup, train

BERT_SIZES = {"model.hidden_size": 32, "model.num_attention_heads": 2, "model.intermediate_size": 64,
              "model.max_position_embeddings": 48, "model.vocab_size": 512}


@pytest.fixture(scope="module")
def mlm_base(tmp_path_factory):
    """A tiny BERT pretrained (a few steps) by masked LM: the base the classifiers adapt."""
    run = tmp_path_factory.mktemp("mlm") / "base"
    train(load_config("configs/bert-tiny-mlm.yaml", [
        f"run.out_dir={run}", *(f"{k}={v}" for k, v in BERT_SIZES.items()), "data.tokenizer.vocab_size=512",
        "data.seq_len=32", "trainer.max_steps=4", "trainer.eval_every=4", "trainer.eval_batches=1",
        "trainer.progress_bar=false", "checkpoint.every=4"]))
    return run


def classify(base, run, peft=None, **extra):
    settings = {"run.out_dir": run, **BERT_SIZES, "model.init_from": base, "data.tokenizer.path": base / "tokenizer",
                "data.seq_len": 32, "trainer.max_steps": 4, "trainer.eval_every": 4, "trainer.log_every": 1,
                "trainer.early_stopping": None, "checkpoint.keep_best": 0, "checkpoint.every": 2,
                "trainer.progress_bar": False, "model.hidden_dropout_prob": 0.0, **(peft or {}), **extra}
    return load_config("configs/bert-classify.yaml", [f"{k}={'null' if v is None else v}" for k, v in settings.items()])


# NF4's round-trip error bound, as a share of a tensor's absmax: half its widest code gap (-1.0 to -0.696, so
# 0.152) plus a little for the rounding of the block scales by double quantization.
NF4_ERROR = 0.16

METHODS = {
    "lora": {"peft.method": "lora", "peft.r": 4, "peft.dropout": 0.1},
    "lora-all-linear-rslora": {"peft.method": "lora", "peft.target_modules": "all-linear", "peft.use_rslora": True},
    "qlora": {"peft.method": "lora", "peft.quantize": "nf4", "peft.quant_block_size": 32},
    "houlsby": {"peft.method": "adapter", "peft.kind": "houlsby", "peft.reduction_factor": 8},
    "pfeiffer": {"peft.method": "adapter", "peft.kind": "pfeiffer", "peft.reduction_factor": 8},
    "prompt": {"peft.method": "prompt_tuning", "peft.num_virtual_tokens": 4, "peft.prompt_init": "text",
               "peft.prompt_init_text": "'the review is'"},
    "p-tuning-mlp": {"peft.method": "p_tuning", "peft.num_virtual_tokens": 4, "peft.encoder_hidden_size": 16},
    "p-tuning-lstm+prompt": {"peft.method": "p_tuning", "peft.num_virtual_tokens": 3, "peft.encoder": "lstm",
                             "peft.encoder_hidden_size": 8, "peft.num_prompt_tokens": 2},
    "prefix": {"peft.method": "prefix_tuning", "peft.num_virtual_tokens": 4},
    "prefix-projection": {"peft.method": "prefix_tuning", "peft.num_virtual_tokens": 4, "peft.prefix_projection": True,
                          "peft.encoder_hidden_size": 16},
}
OWN = {"lora": "lora_", "lora-all-linear-rslora": "lora_", "qlora": "lora_", "houlsby": "_adapter", "pfeiffer": "_adapter",
       "prompt": "prompt_", "p-tuning-mlp": "prompt_", "p-tuning-lstm+prompt": "prompt_", "prefix": "prefix_encoder",
       "prefix-projection": "prefix_encoder"}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_only_its_params_from_the_base(mlm_base, tmp_path, method):
    run = tmp_path / "run"
    train(classify(mlm_base, run, METHODS[method]))
    _, base, _ = load_run(mlm_base)
    config, params, meta = load_run(run)
    ckpt = Checkpoints(run, read_only=True)
    saved = {"/".join(p) for p in flat(ckpt.read_params(4))}
    ckpt.close()
    # The checkpoint holds the method's params and the classifier; the base is a fingerprint.
    assert saved and all(OWN[method] in p or p.startswith("classifier/") for p in saved), saved
    assert any(p.startswith("classifier/") for p in saved) and len(meta["frozen"]["fingerprint"]) == 16
    # Every frozen param is the pretrained base's, bit for bit (QLoRA: its NF4 round trip, within NF4_ERROR).
    for path, value in flat(base["bert"]).items():
        got = flat(params["bert"])[path]
        if method == "qlora" and value.ndim >= 2:
            assert np.abs(np.asarray(got) - value).max() <= NF4_ERROR * np.abs(value).max() and not np.array_equal(got, value)
        else:
            np.testing.assert_array_equal(got, value)
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    # eval and predict read the run whole (base rebuilt from model.init_from and checked).
    model, full, _ = load_run_model(run)
    from jaxlm.data.tokenizer import load_tokenizer
    from jaxlm.tasks.classification import classify as predict

    scores = predict(model, full, load_tokenizer(mlm_base / "tokenizer"), "a wonderful film")
    assert {label for label, _ in scores} == {"negative", "positive"}


def test_lora_starts_at_the_base_and_counts_its_share(mlm_base, tmp_path, caplog):
    config = classify(mlm_base, tmp_path / "run", METHODS["lora"])
    with caplog.at_level("INFO", logger="jaxlm"):
        s = setup(config)
    params, _ = s.initial_params()
    lora_b = [x for p, x in flat(params).items() if p[-1] == "lora_B"]
    assert lora_b and all(not np.any(np.asarray(b)) for b in lora_b)  # B starts at zero
    trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(s.abstract_state.params))
    # r=4 on query and value of 2 layers: 4 x (32 + 32) x 2 x 2 = 1024, plus the classifier's 66
    assert trainable == 1024 + 66
    assert any("trains 1,090 of" in r.message for r in caplog.records)
    # The optimizer state is that size too: AdamW's two moments of the trainable params.
    assert sum(x.size for x in jax.tree.leaves(s.abstract_state.opt_state) if x.ndim) == 2 * trainable


def test_qlora_step_holds_its_base_in_nf4(mlm_base, tmp_path, caplog):
    from jaxlm.compress.quantize import QuantizedArray

    s = setup(classify(mlm_base, tmp_path / "run", METHODS["qlora"]))
    params, _ = s.initial_params()
    with caplog.at_level("INFO", logger="jaxlm"):
        constants = s.constants(params)
    stored = jax.tree.leaves(constants, is_leaf=lambda x: isinstance(x, QuantizedArray))
    kernels = [x for x in stored if isinstance(x, QuantizedArray)]
    assert kernels and all(x.method == "nf4" and x.values.dtype == jnp.uint8 for x in kernels)
    # What the step is given matches what setup promised the jitted step (shapes, dtypes).
    assert jax.tree.map(lambda a: (a.shape, a.dtype), constants) == \
        jax.tree.map(lambda a: (a.shape, a.dtype), s.abstract_constants)
    # The assembled params are the dequantized base: within NF4_ERROR of the floats, never equal.
    assembled = flat(s.assemble(s.split.split(params)[0], constants))
    for path, value in flat(params).items():
        if value.ndim >= 2 and "lora_" not in path[-1] and path[0] == "bert":
            got = np.asarray(assembled[path])
            assert 0 < np.abs(got - value).max() <= NF4_ERROR * np.abs(value).max(), path
    line = next(r.message for r in caplog.records if "QLoRA: the frozen base holds" in r.message)
    ratio32, ratio16 = (float(x) for x in re.findall(r"([\d.]+)x", line))
    assert 4 < ratio32 < 8 and 2 < ratio16 < 4 and abs(ratio32 - 2 * ratio16) < 0.1, line


def test_lora_run_merges_exports_and_continues(mlm_base, tmp_path, capsys):
    run = tmp_path / "lora"
    train(classify(mlm_base, run, METHODS["lora"]))
    model, params, _ = load_run_model(run)
    ids = jnp.asarray(np.random.RandomState(0).randint(5, 500, (2, 9)))
    mask = jnp.ones_like(ids).at[1, 7:].set(0)
    expected = model.apply({"params": params}, ids, mask).logits
    # jaxlm merge: a plain run with the same outputs, which every command reads like any other.
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    plain, merged, config = load_run_model(tmp_path / "merged")
    assert config.peft is None and not any(p[-1].startswith("lora_") for p in flat(merged))
    np.testing.assert_allclose(plain.apply({"params": merged}, ids, mask).logits, expected, atol=1e-5)
    assert main(["predict", "--run", str(tmp_path / "merged"), "a wonderful film"]) == 0
    # convert --to-torch writes a PEFT adapter directory and the base beside it.
    assert main(["convert", "--to-torch", str(run), "--out", str(tmp_path / "hf")]) == 0
    adapter = json.loads((tmp_path / "hf" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["modules_to_save"] == ["classifier"]
    assert (tmp_path / "hf" / "base" / "config.json").is_file()
    again, again_params = __import__("jaxlm").from_pretrained(tmp_path / "hf")
    np.testing.assert_allclose(again.apply({"params": again_params}, ids, mask).logits, expected, atol=1e-5)
    # ... and convert --from-torch makes a run that training continues from (the adapter included).
    assert main(["convert", "--from-torch", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 0
    s = setup(classify(tmp_path / "imported", tmp_path / "next", METHODS["lora"],
                       **{"data.tokenizer.path": mlm_base / "tokenizer"}))
    started, _ = s.initial_params()
    for path, value in flat(params).items():
        np.testing.assert_allclose(flat(started)[path], value, atol=1e-6, err_msg="/".join(path))
    capsys.readouterr()


def test_bad_peft_settings_are_one_line(mlm_base, tmp_path, capsys):
    def error(*overrides, config="configs/bert-classify.yaml"):
        assert main(["train", config, *overrides]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    common = [f"run.out_dir={tmp_path / 'run'}", *(f"{k}={v}" for k, v in BERT_SIZES.items()),
              f"model.init_from={mlm_base}", f"data.tokenizer.path={mlm_base / 'tokenizer'}", "data.seq_len=32"]
    err = error(*common, "peft.method=lora", "peft.target_modules=[q_proj]")
    assert "peft.target_modules=['q_proj'] matches no dense layer of this model; its dense layers (and embedding " \
           "tables) are: " in err and "bert.layer_0.attention.query, " in err
    err = error("peft.method=prefix_tuning", f"run.out_dir={tmp_path / 'cnn'}", config="configs/textcnn-sentiment.yaml")
    assert "peft.method=prefix_tuning needs attention layers" in err and "model.type=text_cnn has none" in err
    err = error(*common, "peft.method=prompt_tuning", "peft.num_virtual_tokens=20")
    assert "data.seq_len=32 plus the 20 virtual tokens of peft.method=prompt_tuning exceed the model's 48" in err
    err = error(*common, "peft.method=lora", "peft.modules_to_save=[clasifier]")
    assert "peft.modules_to_save names 'clasifier', which is not a module of this model" in err
    err = error(*common, "peft.method=lora", "prune.sparsity=0.5")
    assert "peft cannot be combined with prune yet" in err and "jaxlm merge RUN --out DIR" in err
    train(classify(mlm_base, tmp_path / "qlora", METHODS["qlora"], **{"trainer.max_steps": 2}))
    assert main(["merge", str(tmp_path / "qlora"), "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keeps its base in NF4" in err and "--dtype float32" in err
    assert not (tmp_path / "merged").exists()
    assert main(["merge", str(tmp_path / "qlora"), "--out", str(tmp_path / "merged"), "--dtype", "float32"]) == 0


def gpt2_tiny(tmp_path, corpus, name, **extra):
    return load_config("configs/gpt2-tiny.yaml", tiny_overrides(tmp_path / name, **{
        "data.paths": corpus, "model.positions": "learned", **extra}))


@pytest.mark.parametrize("peft", [{"peft.method": "prompt_tuning", "peft.num_virtual_tokens": 3},
                                  {"peft.method": "prefix_tuning", "peft.num_virtual_tokens": 3}])
def test_generation_of_a_prompt_or_prefix_tuned_gpt2_uses_the_cache(tmp_path, corpus_file, peft):
    from jaxlm.generation import generate

    train(gpt2_tiny(tmp_path, corpus_file, "base", **{"trainer.max_steps": 2}))
    train(gpt2_tiny(tmp_path, corpus_file, "tuned", **{"model.init_from": tmp_path / "base", **peft,
                                                       "trainer.max_steps": 3, "optimizer.learning_rate": 0.05}))
    model, params, _ = load_run_model(tmp_path / "tuned")
    prompt = np.asarray([[5, 17, 42, 9], [0, 0, 8, 3]])
    mask = (np.arange(4) >= np.asarray([[0], [2]])).astype(np.int32)
    tokens = np.asarray(generate(model, params, prompt, mask, max_new_tokens=6))
    # The same continuation computed without a cache: the whole row again for every token.
    rows = []
    for row, first in zip(prompt, (0, 2)):
        ids = list(row[first:])
        for _ in range(6):
            logits = model.apply({"params": params}, jnp.asarray([ids])).logits
            ids.append(int(jnp.argmax(logits[0, -1])))
        rows.append(ids[len(row) - first:])
    np.testing.assert_array_equal(tokens[:, 4:], np.asarray(rows))
    beams = np.asarray(generate(model, params, prompt[:1], max_new_tokens=5, num_beams=3))
    assert beams.shape == (1, 9)


FAMILIES = {
    "gpt2": ("causal_lm", {"type": "gpt2", "vocab_size": 50, "n_positions": 16, "n_embd": 16, "n_layer": 2,
                           "n_head": 2}, ["c_attn"]),
    "distilbert": ("classification", {"type": "distilbert", "vocab_size": 50, "max_position_embeddings": 16, "dim": 16,
                                      "n_layers": 2, "n_heads": 2, "hidden_dim": 32}, ["q_lin", "v_lin"]),
    "vit": ("image_classification", {"type": "vit", "image_size": 8, "patch_size": 4, "num_channels": 1,
                                     "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                                     "intermediate_size": 32, "num_labels": 3}, ["query", "value"]),
    "transformer_seq2seq": ("seq2seq", {"type": "transformer_seq2seq", "vocab_size": 20, "d_model": 16,
                                        "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
                                        "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32},
                            ["q_proj", "v_proj"]),
    "llama": ("causal_lm", {"type": "llama", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
                            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                            "max_position_embeddings": 16}, ["q_proj", "v_proj"]),
    "qwen2": ("classification", {"type": "qwen2", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
                                 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                 "max_position_embeddings": 16, "pad_token_id": 0}, ["q_proj", "v_proj"]),
    "roberta": ("masked_lm", {"type": "roberta", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 20},
                ["query", "value"]),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_on_every_family_starts_at_the_base_and_merges_exactly(family):
    from jaxlm import peft
    from jaxlm.config import validate_config
    from jaxlm.models import build_model
    from jaxlm.peft.merge import merged_params

    head, model, targets = FAMILIES[family]
    config = validate_config({"model": model, "data": {"seq_len": 8}, "peft": {"method": "lora", "r": 2, "alpha": 4}})
    wrapped, own, trained = peft.build(config, head, jnp.float32, {})
    inputs = config.model.dummy_inputs()
    if family == "vit":
        inputs = {"pixel_values": jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 1))}
    else:
        ids = jnp.asarray(np.random.RandomState(0).randint(1, 20, (2, 5)))
        inputs = {k: ids if "ids" in k else jnp.ones_like(ids) for k in inputs}
    params = jax.tree.map(np.asarray, nn.meta.unbox(wrapped.init(jax.random.PRNGKey(0), **inputs)["params"]))
    lora_modules = {".".join(p[:-1]) for p in own}
    assert lora_modules and all(any(m.endswith(t) for t in targets) for m in lora_modules)
    plain = build_model(config.model, head)
    base = {k: v for k, v in flat(params).items() if k not in own}
    expected = plain.apply({"params": unflat(base)}, **inputs).logits
    np.testing.assert_allclose(wrapped.apply({"params": params}, **inputs).logits, expected, atol=1e-6)
    moved = unflat({k: (np.random.RandomState(1).normal(size=v.shape).astype(np.float32) if k[-1] == "lora_B" else v)
                    for k, v in flat(params).items()})
    out = wrapped.apply({"params": moved}, **inputs).logits
    assert np.abs(out - expected).max() > 1e-4  # the update now moves the outputs
    np.testing.assert_allclose(plain.apply({"params": merged_params(wrapped, moved)}, **inputs).logits, out,
                               atol=2e-5)
