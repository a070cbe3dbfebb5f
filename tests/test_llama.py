"""Llama / Qwen2 / Mistral decoders: KV-cache decoding equals the full forward pass, the layouts
(``scan_layers``, ``remat``) and precisions agree, config import from transformers 4 and 5 files, the
sequence-classification pooling, and (``torch``) exactly transformers' greedy and beam tokens, rope
scaling parity, tokenizer.json loading and ``jaxlm generate --model DIR``. The per-architecture
output / gradient / export parity runs in tests/test_interop.py (every importable class)."""

import gc
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlm
from jaxlm.config import load_config
from jaxlm.errors import ConfigError
from jaxlm.generation import generate, init_cache
from jaxlm.interop.hf import config_from_hf
from jaxlm.layers.embeddings import Rope
from jaxlm.models import MODEL_FAMILIES, build_model
from jaxlm.models.layout import stack_layers
from jaxlm.models.llama import last_token

# Tiny jaxlm configs of each family with what sets it apart: GQA, sliding windows, biases, tied heads.
TINY = {
    "llama": dict(type="llama", vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=48, attention_bias=True,
                  rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "qwen2": dict(type="qwen2", vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=48, tie_word_embeddings=True,
                  use_sliding_window=True, sliding_window=5, max_window_layers=1),
    "mistral": dict(type="mistral", vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=48,
                    sliding_window=4),
}


def tiny(family, head="causal_lm", **fields):
    config = MODEL_FAMILIES[family].config(**{**TINY[family], **fields})
    model = build_model(config, head)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32)))["params"]
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
    return model, params


def ids(batch=2, length=13, vocab=61, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(1, vocab, (batch, length)), jnp.int32)


@partial(jax.jit, static_argnums=0)
def logits(model, params, x, mask=None):
    return model.apply({"params": params}, x, mask).logits


@pytest.mark.parametrize("family, scan", [("llama", False), ("qwen2", False), ("mistral", True)])
def test_kv_cache_decoding_equals_the_full_forward_pass(family, scan):
    """A prompt, then one token, then a few at once: the cached logits are the full pass's (the sequence
    outgrows Qwen2's and Mistral's sliding windows; Mistral's layers scanned, their caches stacked)."""
    model, params = tiny(family)
    if scan:
        model = model.clone(config=model.config.model_copy(update={"scan_layers": True}))
        params = stack_layers(params, model.config)
    x = ids()

    @jax.jit
    def step(cache, chunk):
        out, variables = model.apply({"params": params, "cache": cache}, chunk, decode=True, mutable=["cache"])
        return out.logits, variables["cache"]

    cache, got = init_cache(model, x.shape[0], x.shape[1]), []
    for start, stop in ((0, 6), (6, 7), (7, 13)):
        out, cache = step(cache, x[:, start:stop])
        got.append(out)
    np.testing.assert_allclose(jnp.concatenate(got, axis=1), logits(model, params, x), atol=1e-5)


@pytest.mark.parametrize("family, beams", [("llama", 1), ("qwen2", 3), ("mistral", 1)])
def test_left_padded_generation_equals_each_prompt_alone(family, beams):
    model, params = tiny(family)
    prompts = [[5, 17, 33, 3, 8, 41, 9], [23, 2, 44]]
    width = max(map(len, prompts))
    padded = np.array([[0] * (width - len(p)) + p for p in prompts])
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batch = np.asarray(generate(model, params, padded, mask, max_new_tokens=10, num_beams=beams))
    for row, prompt in enumerate(prompts):
        alone = np.asarray(generate(model, params, np.array([prompt]), max_new_tokens=10, num_beams=beams))
        np.testing.assert_array_equal(batch[row, width:], alone[0, len(prompt):])


def test_scan_layers_and_remat_give_the_same_outputs_and_gradients():
    model, params = tiny("mistral")
    x, mask = ids(), jnp.ones((2, 13), jnp.int32).at[1, 9:].set(0)

    @partial(jax.jit, static_argnums=0)
    def grad(m, p):
        return jax.grad(lambda q: (m.apply({"params": q}, x, mask).logits ** 2).mean())(p)

    want = grad(model, params)
    for fields in ({"remat": "full"}, {"scan_layers": True, "remat": "dots"}):
        other = model.clone(config=model.config.model_copy(update=fields))
        p = stack_layers(params, model.config) if fields.get("scan_layers") else params
        np.testing.assert_allclose(logits(other, p, x, mask), logits(model, params, x, mask), atol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grad(other, p),
                     stack_layers(want, model.config) if fields.get("scan_layers") else want)


SHARDED = """
import json, sys, tempfile
from conftest import tiny_overrides
from jaxlm.config import load_config
from jaxlm.train.logging import read_metrics
from jaxlm.train.trainer import train

out = {}
for mesh in sys.argv[2:]:
    data, fsdp, tensor = mesh.split(",")
    run = tempfile.mkdtemp()
    overrides = [o for o in tiny_overrides(run) if not o.startswith("model.")] + [
        f"data.paths={sys.argv[1]}", "trainer.batch_size=8", "trainer.max_steps=3", "trainer.log_every=1",
        "trainer.eval_every=3", "checkpoint.every=3", f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}",
        "model.vocab_size=300", "model.hidden_size=64", "model.intermediate_size=96", "model.num_hidden_layers=2",
        "model.attention_dropout=0.0"]
    train(load_config("configs/llama-tiny.yaml", overrides))
    out[mesh] = [r["loss"] for r in read_metrics(run) if "loss" in r] + [
        r["eval_loss"] for r in read_metrics(run) if "eval_loss" in r]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_fsdp_and_tensor_parallel_training_equals_data_parallel(corpus_file):
    """8 fake CPU devices: GQA's 2 key/value heads split over tensor=2, the rest as for GPT-2 and BERT."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([root, os.path.join(root, "tests")])}
    result = subprocess.run([sys.executable, "-c", SHARDED, str(corpus_file), "8,1,1", "1,4,2"], cwd=root,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(losses["1,4,2"], losses["8,1,1"], rtol=2e-5)


def test_bfloat16_compute_stays_close_to_float32():
    model, params = tiny("llama")
    x = ids()
    want = logits(model, params, x)
    half = logits(model.clone(dtype=jnp.bfloat16), params, x)
    assert half.dtype == jnp.bfloat16
    assert float(jnp.abs(half.astype(jnp.float32) - want).max()) < 0.1 * float(jnp.abs(want).max())


def test_params_carry_logical_axes_and_peft_names():
    model = build_model(MODEL_FAMILIES["llama"].config(**TINY["llama"]), "causal_lm")
    boxed = model.init(jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32))["params"]
    layer = boxed["model"]["layers_0"]
    assert set(layer["self_attn"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert set(layer["mlp"]) == {"gate_proj", "up_proj", "down_proj"}
    names = {"/".join(str(getattr(k, "key", k)) for k in path): leaf.names for path, leaf in
             jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))}
    assert names["model/layers_0/self_attn/q_proj/kernel"] == ("embed", "heads", "kv")
    assert names["model/layers_0/self_attn/k_proj/kernel"] == ("embed", "kv_heads", "kv")
    assert names["model/layers_0/mlp/gate_proj/kernel"] == ("embed", "mlp")
    assert names["lm_head/kernel"] == ("embed", "vocab")
    assert all(isinstance(leaf, nn.Partitioned) for leaf in jax.tree.leaves(
        boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned)))


def test_the_adversarial_hook_perturbs_the_token_embeddings():
    model, params = tiny("llama")
    x = ids()
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))["perturbations"]
    delta = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    assert jax.tree.leaves(shapes)[0].shape == (2, 13, 32)  # embed_tokens_output
    clean = logits(model, params, x)
    np.testing.assert_allclose(model.apply({"params": params, "perturbations": delta}, x).logits, clean, atol=1e-6)
    nudged = jax.tree.map(lambda d: d + 0.1, delta)
    assert not np.allclose(model.apply({"params": params, "perturbations": nudged}, x).logits, clean)


def test_sequence_classification_reads_each_rows_last_real_token():
    x = jnp.array([[5, 6, 7, 0, 0], [0, 0, 5, 6, 7], [5, 6, 7, 8, 9]])
    mask = (x != 0).astype(jnp.int32)
    np.testing.assert_array_equal(last_token(x, None, 0), [2, 4, 4])
    np.testing.assert_array_equal(last_token(x, mask, None), [2, 4, 4])
    np.testing.assert_array_equal(last_token(x, None, None), [4, 4, 4])
    model, params = tiny("llama", head="classification", pad_token_id=0, num_labels=3)
    scores = logits(model, params, x, mask)
    assert scores.shape == (3, 3)
    np.testing.assert_allclose(scores[0], logits(model, params, x[:1, :3])[0], atol=1e-6)
    np.testing.assert_allclose(scores[2], logits(model, params, x[2:, :])[0], atol=1e-6)


def test_sequence_classification_trains_and_predicts(tmp_path, capsys):
    from conftest import tiny_overrides
    from jaxlm.cli import main
    from jaxlm.train.trainer import train

    run = tmp_path / "run"
    overrides = [o for o in tiny_overrides(run, **{"trainer.max_steps": 2, "trainer.eval_every": 2,
                                                   "checkpoint.every": 2}) if not o.startswith("model.")]
    overrides += [f"model.{k}={v}" for k, v in TINY["qwen2"].items() if k != "vocab_size"] + [
        "model.vocab_size=300", "task.type=classification", "task.dataset=sentiment_en", "model.num_labels=2",
        "model.id2label={0: negative, 1: positive}", "data.seq_len=32"]
    metrics = train(load_config(None, overrides))
    assert 0 <= metrics["eval_accuracy"] <= 1
    capsys.readouterr()
    assert main(["predict", "--run", str(run), "a great film"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] in ("negative", "positive") and len(lines) == 3


def test_rope_scaling_kinds_change_the_frequencies_as_transformers_defines_them():
    positions = jnp.arange(10)
    default = Rope(theta=100.0).inverse_frequencies(8, positions)
    np.testing.assert_allclose(default, 1 / 100.0 ** (np.arange(0, 8, 2) / 8), rtol=1e-6)
    np.testing.assert_allclose(Rope(theta=100.0, kind="linear", factor=4.0).inverse_frequencies(8, positions),
                               default / 4, rtol=1e-6)
    dynamic = Rope(theta=100.0, kind="dynamic", factor=2.0, max_positions=16)
    np.testing.assert_allclose(dynamic.inverse_frequencies(8, positions), default, rtol=1e-6)  # within the context
    longer = dynamic.inverse_frequencies(8, jnp.arange(32))  # base * (2 * 32 / 16 - 1) ** (8 / 6)
    np.testing.assert_allclose(longer, 1 / (100.0 * 3 ** (8 / 6)) ** (np.arange(0, 8, 2) / 8), rtol=1e-5)
    llama3 = Rope(theta=100.0, kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                  original_max_positions=16).inverse_frequencies(8, positions)
    wavelength = 2 * np.pi / np.asarray(default)  # 6.3, 19.9, 62.8, 198.7 against 16 / 4 = 4 and 16 / 1 = 16
    smooth = (16 / wavelength[0] - 1) / (4 - 1)  # 6.3 lies between the bounds: blended
    np.testing.assert_allclose(llama3[0], (1 - smooth) * default[0] / 8 + smooth * default[0], rtol=1e-6)
    np.testing.assert_allclose(llama3[1:], default[1:] / 8, rtol=1e-6)  # longer than 16: divided by factor


def test_configs_from_transformers_4_and_5_files():
    family = MODEL_FAMILIES["llama"]
    v5 = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 100,
          "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
          "eos_token_id": [128001, 128009], "pretraining_tp": 1}
    config = config_from_hf(v5, family)
    assert config.rope_theta == 500000.0 and config.rope_scaling.rope_type == "llama3"
    assert config.eos_token_id == (128001, 128009)
    v4 = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "rope_theta": 1e6,
          "rope_scaling": {"type": "dynamic", "factor": 2.0}}
    config = config_from_hf(v4, family)
    assert (config.rope_theta, config.rope_scaling.rope_type, config.max_positions) == (1e6, "dynamic", None)
    assert config_from_hf({"rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}, family).rope_scaling is None
    hf = config.hf_dict()
    assert hf["rope_scaling"] == {"rope_type": "dynamic", "factor": 2.0} and hf["rope_theta"] == 1e6


@pytest.mark.parametrize("override, message", [
    ("model.num_key_value_heads=3", "model.num_attention_heads=4 is not divisible by model.num_key_value_heads=3"),
    ("model.rope_scaling={rope_type: llama3, factor: 8.0}", "llama3 needs low_freq_factor and high_freq_factor"),
    ("model.rope_scaling={rope_type: yarn, factor: 8.0}", "model.rope_scaling.rope_type"),
])
def test_bad_llama_settings_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config("configs/llama-tiny.yaml", [override])
    assert "\n" not in str(info.value)


def test_scan_layers_refuses_layers_that_attend_differently():
    with pytest.raises(ConfigError, match="scan_layers needs every layer to attend alike"):
        load_config(None, [f"model.{k}={v}" for k, v in TINY["qwen2"].items() if k != "max_window_layers"] +
                    ["model.max_window_layers=1", "model.scan_layers=true"])


def test_jaxlm_generate_stays_the_function_after_importing_the_module():
    import jaxlm.generation

    assert jaxlm.generate is jaxlm.generation.generate


# ---- transformers parity ---------------------------------------------------------------------------------------------

GENERATION = {"LlamaForCausalLM": {}, "Qwen2ForCausalLM": {}, "MistralForCausalLM": {},
              "LlamaForCausalLM (dynamic rope)": {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0},
                                                  "max_position_embeddings": 16}}


@pytest.mark.torch
@pytest.mark.parametrize("name", list(GENERATION))
def test_greedy_and_beam_tokens_equal_transformers(name, tmp_path):
    """Left-padded prompts; 20 new tokens (with dynamic rope the sequence grows past its 16 positions)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxlm.interop.parity import random_checkpoint

    architecture = name.split()[0]
    directory = random_checkpoint(architecture, tmp_path, **GENERATION[name])
    model, params = jaxlm.from_pretrained(directory)
    hf = getattr(transformers, architecture).from_pretrained(directory, attn_implementation="eager").eval()
    prompts = [[5, 17, 62, 3, 88, 41, 9], [33, 2, 71, 50], [11]]
    width = max(map(len, prompts))
    x = np.array([[0] * (width - len(p)) + p for p in prompts])
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    # pad 1: transformers' beam search fills finished rows with eos when pad_token_id is 0 (``pad or eos``)
    for options in (dict(), dict(num_beams=3, length_penalty=0.8, repetition_penalty=1.2, num_return_sequences=2)):
        options = dict(options, do_sample=False, pad_token_id=1, eos_token_id=98, max_new_tokens=20)
        with torch.no_grad():
            want = hf.generate(input_ids=torch.tensor(x), attention_mask=torch.tensor(mask), min_length=0,
                               **options).numpy()
        with jax.default_matmul_precision("highest"):
            got = np.asarray(generate(model, params, x, mask, **options))
        np.testing.assert_array_equal(got[:, :want.shape[1]], want)
        assert (got[:, want.shape[1]:] == 1).all()


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["byte_level", "sentencepiece_like"])
def test_tokenizer_json_matches_transformers(kind, tmp_path):
    """A Qwen2 / Llama-3 style byte-level BPE and a Llama-2 style BPE with byte fallback and a prepended
    ``▁``, each saved by transformers as tokenizer.json: jaxlm's encodings equal AutoTokenizer's."""
    transformers = pytest.importorskip("transformers")
    import tokenizers
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    from jaxlm.data.corpus import embedded_corpus
    from jaxlm.data.tokenizer import load_tokenizer

    texts = embedded_corpus()[:3]
    if kind == "byte_level":
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        special = dict(eos_token="<|endoftext|>")
    else:
        tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400,
                                                           special_tokens=["<unk>", "<s>", "</s>"]))
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
        special = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(tmp_path)
    want = transformers.AutoTokenizer.from_pretrained(tmp_path)
    got = load_tokenizer(tmp_path)
    for text in ["The import statement", "  spaced  out\nnew line", "naïve café ☕ 1234", texts[2][:300]]:
        assert got.encode(text, add_special_tokens=True) == want(text)["input_ids"], text
        assert got.decode(want(text)["input_ids"]) == want.decode(want(text)["input_ids"], skip_special_tokens=True)
    assert got.eos_id == want.eos_token_id


@pytest.mark.torch
def test_cli_generate_with_a_llama_directory(tmp_path, capsys):
    """``jaxlm generate --model DIR``: the prompt with its BOS (the tokenizer's template) and the config's eos."""
    transformers = pytest.importorskip("transformers")
    import tokenizers
    from tokenizers import models, pre_tokenizers, processors, trainers

    from conftest import small_corpus
    from jaxlm.cli import main
    from jaxlm.data.corpus import embedded_corpus
    from jaxlm.interop.parity import random_checkpoint

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator(embedded_corpus()[:3], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[
        ("<|begin_of_text|>", 0)])
    directory = random_checkpoint("LlamaForCausalLM", tmp_path, vocab_size=tok.get_vocab_size(), bos_token_id=0,
                                  eos_token_id=1, pad_token_id=None)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                         eos_token="<|end_of_text|>").save_pretrained(directory)
    assert main(["generate", "--model", str(directory), "--prompt", "The import", "--max-new-tokens", "12"]) == 0
    model, params = jaxlm.from_pretrained(directory)
    prompt = tok.encode("The import").ids
    assert prompt[0] == 0
    want = np.asarray(generate(model, params, np.array([prompt]), max_new_tokens=12, eos_token_id=1))[0]
    assert capsys.readouterr().out == tok.decode(want.tolist()) + "\n"

    # convert to a jaxlm run (tokenizer files along), fine-tune it briefly, export it back
    run, tuned, exported = tmp_path / "run", tmp_path / "tuned", tmp_path / "exported"
    assert main(["convert", "--from-torch", str(directory), "--out", str(run)]) == 0
    corpus = small_corpus(tmp_path)
    assert main(["train", str(run / "config.yaml"), f"run.out_dir={tuned}", f"model.init_from={run}",
                 f"data.paths={corpus}", "data.seq_len=32", "trainer.batch_size=2", "trainer.max_steps=2",
                 "trainer.eval_batches=1", "trainer.progress_bar=false", "checkpoint.every=2"]) == 0
    assert main(["convert", "--to-torch", str(tuned), "--out", str(exported)]) == 0
    capsys.readouterr()
    hf = transformers.LlamaForCausalLM.from_pretrained(exported).eval()
    model, params = jaxlm.from_pretrained(exported)
    ids = np.array([prompt])
    import torch

    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(logits(model, params, jnp.asarray(ids)), want, atol=1e-5)
    assert load_tokenizer_ids(exported, "The import") == prompt


def load_tokenizer_ids(directory, text):
    from jaxlm.data.tokenizer import load_tokenizer

    return load_tokenizer(directory).encode(text, add_special_tokens=True)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["LlamaForCausalLM (dynamic rope past 4 positions, tied)",
                                  "LlamaForCausalLM (llama3 rope, no biases)"])
def test_rope_scaling_variants_match_transformers(name):
    """More tiny settings than tests/test_interop.py's one per architecture: outputs, gradients, AdamW step."""
    pytest.importorskip("torch")
    from jaxlm.interop.parity import TINY_VARIANTS, tiny_parity

    architecture, config = TINY_VARIANTS[name]
    diffs = tiny_parity(architecture, **config)
    assert max(diffs[k] for k in ("logits", "hidden_states", "attentions")) <= 1e-5, diffs
    assert diffs["gradients (max relative)"] <= 1e-4 and diffs["params after one AdamW step"] <= 1e-6, diffs


@pytest.mark.torch
@pytest.mark.slow
def test_qwen2_0_5b_shapes_random_weights(tmp_path):
    """Qwen2-0.5B's shapes (494M parameters, float32) with random weights: one forward's logits."""
    transformers = pytest.importorskip("transformers")
    from jaxlm.interop.parity import QWEN2_0_5B, compare_outputs, example_inputs, random_checkpoint

    directory = random_checkpoint("Qwen2ForCausalLM", tmp_path, tiny=False, **QWEN2_0_5B)
    gc.collect()  # the 2 GB torch model random_checkpoint built, before two more copies load
    diffs = compare_outputs(directory, example_inputs(transformers.AutoConfig.from_pretrained(directory)))
    assert diffs["logits"] <= 1e-4, diffs
