"""Quantization: the int8 / NF4 / int4 codecs against their bounds and bitsandbytes, the
quantized leaf in orbax checkpoints, int8-dynamic dense layers, and quantized runs through
every command (eval, predict, generate, fill-mask, checkpoints, convert, init_from)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from conftest import small_corpus, tiny_overrides
from jaxlm.cli import load_model, main
from jaxlm.compress.quantize import (NF4_CODE, QuantizedArray, dequantize, dequantize_params, dynamic_map,
                                     from_storable, int8_dense, is_quantized, kernel_reduce_axes, quantize_blockwise,
                                     quantize_int8, quantize_params, quantized_model, storable)

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64, "vocab_size": 300}


def bert_overrides(out_dir, **extra):
    base = {"run.out_dir": out_dir, "data.seq_len": 32, "data.tokenizer.vocab_size": 300, "trainer.batch_size": 8,
            "trainer.max_steps": 4, "trainer.log_every": 2, "trainer.eval_every": 2, "trainer.progress_bar": False,
            "checkpoint.every": 2, "schedule.warmup_steps": 1, **{f"model.{k}": v for k, v in TINY_BERT.items()},
            **extra}
    return [f"{k}={v}" for k, v in base.items()]


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


# ---------------------------------------------------------------------------------------------
# Codecs


def test_int8_round_trip_is_within_half_a_step_per_channel():
    x = jax.random.normal(jax.random.key(0), (24, 3, 8)) * jnp.arange(1, 25)[:, None, None]
    q = quantize_int8(x, (0,))
    assert q.values.dtype == jnp.int8 and q.scale.shape == (1, 3, 8)
    assert int(jnp.abs(q.values.astype(jnp.int32)).max()) == 127  # each channel's absmax maps to 127
    err = jnp.abs(dequantize(q) - x)
    assert bool(jnp.all(err <= q.scale / 2 * (1 + 1e-6)))
    np.testing.assert_array_equal(dequantize(quantize_int8(jnp.zeros((4, 2)), (0,))), 0.0)  # all-zero channels


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_int8_codes_and_scales_match_torch_per_channel_symmetric():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    kernel = (rng.standard_normal((48, 40)) * rng.uniform(0.01, 3.0, (1, 40))).astype(np.float32)  # [in, out]
    q = quantize_int8(jnp.asarray(kernel), (0,))
    weight = torch.from_numpy(kernel.T.copy())  # nn.Linear's [out, in]: one scale per output row
    observer = torch.ao.quantization.PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127)
    observer(weight)
    scale, zero_point = observer.calculate_qparams()
    reference = torch.quantize_per_channel(weight, scale, zero_point, 0, torch.qint8)
    assert not zero_point.any()
    np.testing.assert_allclose(np.asarray(q.scale).ravel(), scale.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(q.values), reference.int_repr().numpy().T)
    np.testing.assert_allclose(np.asarray(dequantize(q)), reference.dequantize().numpy().T, rtol=1e-6, atol=1e-7)


def test_kernel_input_axes_follow_the_bias():
    assert kernel_reduce_axes("kernel", (32, 2, 16), 2) == (0,)  # query [embed, heads, head_dim]
    assert kernel_reduce_axes("kernel", (2, 16, 32), 1) == (0, 1)  # attention output [heads, head_dim, embed]
    assert kernel_reduce_axes("kernel", (3, 3, 1, 8), None) == (0, 1, 2)  # a bias-free conv (HWIO)
    assert kernel_reduce_axes("embedding", (300, 32), None) == (1,)  # one scale per token row


@pytest.mark.parametrize("method,shape", [("nf4", (64, 32)), ("nf4", (33, 7)), ("int4", (5, 50))])
@pytest.mark.parametrize("double_quant", [False, True])
def test_blockwise_round_trip_bound(method, shape, double_quant):
    x = jax.random.normal(jax.random.key(1), shape)
    q = quantize_blockwise(x, method, 64, double_quant)
    assert q.values.dtype == jnp.uint8 and q.values.size == -(-x.size // 2)
    blocks = np.pad(np.asarray(x).ravel(), (0, -x.size % 64)).reshape(-1, 64)
    absmax = np.repeat(np.abs(blocks).max(1), 64)[:x.size].reshape(shape)
    # Half the widest gap between code values, plus the error of a double-quantized absmax.
    half_gap = np.diff(NF4_CODE).max() / 2 if method == "nf4" else 1 / 14
    bound = absmax * half_gap + (0.02 * absmax if double_quant else 1e-6)
    assert np.all(np.abs(np.asarray(dequantize(q)) - np.asarray(x)) <= bound)


@pytest.mark.torch
def test_nf4_codes_and_double_quantization_match_bitsandbytes():
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes.functional")
    np.testing.assert_allclose(dynamic_map(), bnb.create_dynamic_map().numpy(), atol=1e-7)
    w = np.random.default_rng(0).standard_normal((300, 129)).astype(np.float32)
    for double_quant in (False, True):
        q = quantize_blockwise(jnp.asarray(w), "nf4", 64, double_quant)
        packed, state = bnb.quantize_4bit(torch.from_numpy(w), blocksize=64, quant_type="nf4",
                                          compress_statistics=double_quant)
        np.testing.assert_array_equal(np.asarray(q.values), packed.numpy().ravel())  # the 4-bit codes, byte for byte
        if not double_quant:
            np.testing.assert_array_equal(np.asarray(q.scale), state.absmax.numpy())
            continue
        np.testing.assert_allclose(float(q.scale_offset), float(state.offset), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(q.scale_absmax), state.state2.absmax.numpy(), rtol=1e-6)
        ours, theirs = np.asarray(q.scale).astype(int), state.absmax.numpy().astype(int)
        # bitsandbytes' CPU search takes a neighbouring code at rare near-ties; ours is the nearest
        assert (ours == theirs).mean() > 0.98 and np.abs(ours - theirs).max() <= 1
        code, centred = dynamic_map(), np.asarray(jnp.asarray(
            np.abs(w.reshape(-1)[:(w.size // 64) * 64].reshape(-1, 64)).max(1))) - float(q.scale_offset)
        differ = np.nonzero(ours[:len(centred)] != theirs[:len(centred)])[0]
        scaled = centred[differ] / np.asarray(q.scale_absmax)[differ // 256]
        assert np.all(np.abs(code[ours[differ]] - scaled) <= np.abs(code[theirs[differ]] - scaled) + 1e-7)


def test_quantized_leaves_round_trip_through_orbax(tmp_path):
    params = {"dense": {"kernel": jax.random.normal(jax.random.key(2), (40, 6)), "bias": jnp.ones(6)},
              "embed": {"embedding": jax.random.normal(jax.random.key(3), (10, 8))}}
    for method in ("int8", "nf4", "int4"):
        q = quantize_params(params, method)
        assert is_quantized(q) and not isinstance(q["dense"]["bias"], QuantizedArray)
        tree, layout = storable(q)
        json.dumps(layout)  # the metadata is JSON
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(tmp_path / method, tree)
        ckptr.wait_until_finished()
        back = from_storable(ckptr.restore(tmp_path / method), layout)
        for a, b in zip(jax.tree.leaves(dequantize_params(q)), jax.tree.leaves(dequantize_params(back))):
            np.testing.assert_array_equal(a, b)
        # A tree of QuantizedArray leaves also saves and restores whole, given its abstract tree.
        ckptr.save(tmp_path / f"{method}-whole", q)
        ckptr.wait_until_finished()
        whole = ckptr.restore(tmp_path / f"{method}-whole", jax.tree.map(ocp.utils.to_shape_dtype_struct, q))
        assert jax.tree.structure(whole) == jax.tree.structure(q)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_params(q, "int8")


@pytest.mark.parametrize("axis,features,x_shape", [(-1, 6, (2, 5, 8)), ((-2, -1), 4, (3, 2, 8))])
def test_int8_dynamic_dense_is_the_integer_product(axis, features, x_shape):
    layer = nn.DenseGeneral(features, axis=axis)
    x = jax.random.normal(jax.random.key(4), x_shape)
    params = layer.init(jax.random.key(5), x)["params"]
    n_in = 1 if isinstance(axis, int) else len(axis)
    kernel = quantize_int8(params["kernel"], tuple(range(n_in)), dynamic=True)
    got = layer.apply({"params": params}, x, method=lambda m, x: int8_dense(m, x, kernel, params["bias"]))
    # numpy: per-token int8 activations times the int8 kernel in int64, then both scales
    xs = np.asarray(x).reshape(-1, int(np.prod(x_shape[-n_in:])))
    sx = np.abs(xs).max(1, keepdims=True) / 127
    xq = np.clip(np.round(xs / sx), -127, 127).astype(np.int64)
    wq = np.asarray(kernel.values).reshape(xs.shape[1], -1).astype(np.int64)
    want = (xq @ wq) * sx * np.asarray(kernel.scale).reshape(1, -1) + np.asarray(params["bias"]).reshape(1, -1)
    np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, rtol=1e-5, atol=1e-6)
    dense = layer.apply({"params": params}, x)
    assert float(jnp.abs(got - dense).max()) < 0.05 * float(jnp.abs(dense).max())


# ---------------------------------------------------------------------------------------------
# Quantized runs through the commands


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant-gpt2")
    small_corpus(root)
    assert main(["train", "configs/gpt2-tiny.yaml", *tiny_overrides(root / "run", **{"data.paths": root / "corpus.txt"})]) == 0
    return root


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant-bert")
    assert main(["train", "configs/bert-classify.yaml", *bert_overrides(root / "run", **{
        "trainer.early_stopping": "null", "checkpoint.keep_best": 0})]) == 0
    return root


def test_quantized_params_give_the_dequantized_models_outputs(classifier_run):
    model, params, _ = load_model(str(classifier_run / "run"), None)
    inputs = {"input_ids": jnp.asarray([[2, 40, 41, 42, 3]]), "attention_mask": jnp.ones((1, 5), jnp.int32)}
    q = quantize_params(params, "nf4")
    qmodel = quantized_model(model)
    assert type(qmodel).__name__ == type(model).__name__ and isinstance(qmodel, type(model))
    got = jax.jit(lambda p: qmodel.apply({"params": p}, **inputs).logits)(q)
    np.testing.assert_array_equal(got, jax.jit(lambda p: model.apply({"params": dequantize_params(p)},
                                                                      **inputs).logits)(q))
    np.testing.assert_array_equal(qmodel.apply({"params": params}, **inputs).logits,
                                  model.apply({"params": params}, **inputs).logits)  # float params as before


def test_quantize_then_eval_predict_checkpoints(classifier_run, capsys, tmp_path):
    assert main(["eval", str(classifier_run / "run" / "config.yaml")]) == 0
    full = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    float_bytes = sum(x.nbytes for x in jax.tree.leaves(load_model(str(classifier_run / "run"), None)[1]))
    for method in ("int8", "int8-dynamic", "nf4"):
        out = tmp_path / method
        assert main(["quantize", str(classifier_run / "run"), "--method", method, "--out", str(out)]) == 0
        assert f"with {method}" in capsys.readouterr().out
        assert main(["eval", str(out / "config.yaml")]) == 0
        quantized = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert quantized["step"] == full["step"] and abs(quantized["eval_loss"] - full["eval_loss"]) < 0.05
        assert main(["checkpoints", str(out)]) == 0
        assert f"latest, best, {method})" in capsys.readouterr().out
        stored = sum(x.nbytes for x in jax.tree.leaves(load_model(str(out), None)[1]))
        assert stored < (0.3 if method.startswith("int8") else 0.17) * float_bytes
    assert main(["predict", "--run", str(out), "A wonderful film, I loved it."]) == 0
    assert capsys.readouterr().out.split()[0] in ("positive", "negative")
    # Already quantized: one line, nothing written.
    assert main(["quantize", str(out), "--method", "int8", "--out", str(tmp_path / "again")]) == 2
    one_line_error(capsys, "already quantized")
    assert not (tmp_path / "again").exists()
    # Exported to transformers: the dequantized weights.
    assert main(["convert", "--to-torch", str(out), "--out", str(tmp_path / "hf")]) == 0
    assert "dequantized float32" in capsys.readouterr().out
    from jaxlm.interop import from_pretrained

    _, exported = from_pretrained(tmp_path / "hf")
    _, quantized, _ = load_model(str(out), None)
    for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(dequantize_params(quantized))):
        np.testing.assert_array_equal(a, b)


def test_generate_and_init_from_a_quantized_gpt2(gpt2_run, tmp_path, capsys):
    run, out = gpt2_run / "run", tmp_path / "nf4"
    assert main(["quantize", str(run), "--method", "nf4", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["generate", "--run", str(out), "--prompt", "The import", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("The import")
    # model.init_from a quantized run starts from its dequantized weights.
    tuned = tmp_path / "tuned"
    assert main(["train", "configs/gpt2-tiny.yaml", *tiny_overrides(tuned, **{
        "data.paths": gpt2_run / "corpus.txt", "model.init_from": out, "trainer.max_steps": 1,
        "data.tokenizer.path": run / "tokenizer"})]) == 0


def test_fill_mask_on_a_quantized_masked_lm(tmp_path, capsys):
    from jaxlm.data.corpus import embedded_corpus

    (tmp_path / "corpus.txt").write_text("\n\n".join(embedded_corpus()[:20]))
    assert main(["train", "configs/bert-tiny-mlm.yaml", *bert_overrides(tmp_path / "mlm", **{
        "data.paths": tmp_path / "corpus.txt"})]) == 0
    assert main(["quantize", str(tmp_path / "mlm"), "--method", "int8-dynamic", "--out", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    assert main(["fill-mask", "--run", str(tmp_path / "q"), "the [MASK] statement", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(0 < float(line.split()[0]) < 1 for line in lines)


def test_bad_quantize_input_is_one_line(gpt2_run, tmp_path, capsys):
    run = str(gpt2_run / "run")
    assert main(["quantize", run, "--method", "int8", "--out", run]) == 2
    one_line_error(capsys, "already exists and is not empty")
    assert main(["quantize", run, "--method", "nf4", "--block-size", "63", "--out", str(tmp_path / "x")]) == 2
    one_line_error(capsys, "--block-size 63")
    assert main(["quantize", str(tmp_path / "none"), "--method", "int8", "--out", str(tmp_path / "y")]) == 2
    one_line_error(capsys, "is not a jaxlm run")


# ---------------------------------------------------------------------------------------------
# Quantization-aware training


def test_fake_quantize_rounds_like_int8_and_passes_gradients_straight_through():
    from jaxlm.compress.qat import fake_quantize

    x = jax.random.normal(jax.random.key(6), (16, 5))
    np.testing.assert_allclose(fake_quantize(x, (0,), 127), dequantize(quantize_int8(x, (0,))), rtol=1e-6)
    weights = jnp.arange(80.0).reshape(16, 5)
    np.testing.assert_array_equal(jax.grad(lambda x: (fake_quantize(x, (0,), 127) * weights).sum())(x), weights)


def test_qat_computes_what_int8_dynamic_serves(classifier_run, tmp_path, capsys):
    from jaxlm.compress.qat import qat_model

    model, params, _ = load_model(str(classifier_run / "run"), None)
    flat = traverse_util.flatten_dict(params)
    dense = frozenset(p for p in flat if p[-1] == "kernel")
    # The embeddings stay float: QAT rounds the dense layers only.
    served = traverse_util.unflatten_dict({p: flat[p] if "embeddings" in p else q for p, q in traverse_util.flatten_dict(
        quantize_params(params, "int8-dynamic", dense_kernels=dense)).items()})
    inputs = {"input_ids": jnp.asarray([[2, 40, 41, 42, 3]]), "attention_mask": jnp.ones((1, 5), jnp.int32)}
    trained = qat_model(model).apply({"params": params}, **inputs).logits
    np.testing.assert_allclose(quantized_model(model).apply({"params": served}, **inputs).logits, trained, atol=2e-5)
    # The qat section trains through the one trainer and is used by eval.
    assert main(["train", "configs/bert-classify.yaml", *bert_overrides(tmp_path / "qat", **{
        "trainer.early_stopping": "null", "checkpoint.keep_best": 0, "trainer.max_steps": 2,
        "qat.weights": "int8"})]) == 0
    assert main(["quantize", str(tmp_path / "qat"), "--method", "int8-dynamic", "--out", str(tmp_path / "q")]) == 0
    from jaxlm.config import load_config

    assert load_config(tmp_path / "q" / "config.yaml").qat is None  # the served run computes in int8 itself
