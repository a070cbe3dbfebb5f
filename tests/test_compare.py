"""The plain CNN (model.type: cnn) and the efficiency report: train, prune, quantize, then
`jaxlm compare` the three runs."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxlm.cli import load_model, main
from jaxlm.compress.quantize import quantized_bytes
from jaxlm.config import load_config
from jaxlm.errors import ConfigError
from jaxlm.models import build_model

CNN = ["trainer.max_steps=20", "trainer.eval_every=10", "trainer.log_every=5", "trainer.progress_bar=false",
       "checkpoint.every=10"]


def test_lenet_shapes_and_config_errors():
    config = load_config("configs/cnn-digits.yaml")
    model = build_model(config.model, "image_classification")
    params = nn.meta.unbox(model.init(jax.random.key(0), **config.model.dummy_inputs())["params"])
    assert params["conv_0"]["kernel"].shape == (3, 3, 1, 16) and params["fc_0"]["kernel"].shape == (2 * 2 * 32, 120)
    variables = model.init(jax.random.key(0), **config.model.dummy_inputs())
    assert variables["perturbations"]["pixels"].shape == (1, 8, 8, 1)  # the adversarial hook
    out = model.apply({"params": params}, jnp.zeros((3, 8, 8, 1)))
    assert out.logits.shape == (3, 10) and out.last_hidden_state.shape == (3, 84)
    lenet = load_config(None, ["model.type=cnn", "model.image_size=32", "model.padding=valid"]).model
    assert lenet.conv_channels == (6, 16) and lenet.kernel_size == 5  # LeNet-5: 32 -> 28 -> 14 -> 10 -> 5
    with pytest.raises(ConfigError, match="model.image_size=8 is too small"):
        load_config(None, ["model.type=cnn", "model.image_size=8", "model.padding=valid"])


def test_train_prune_quantize_then_compare(tmp_path, capsys):
    base, pruned, quantized = tmp_path / "cnn", tmp_path / "pruned", tmp_path / "int8"
    assert main(["train", "configs/cnn-digits.yaml", f"run.out_dir={base}", *CNN]) == 0
    assert main(["prune", str(base), "--method", "structured", "--sparsity", "0.25", "--targets", r"conv_\d+/kernel",
                 "--out", str(pruned)]) == 0
    assert main(["quantize", str(pruned), "--method", "int8", "--out", str(quantized)]) == 0
    capsys.readouterr()
    assert main(["compare", str(base), str(pruned), str(quantized), "--repeats", "3", "--out",
                 str(tmp_path / "table.md"), "--json", str(tmp_path / "table.json")]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| run | params | non-zero |") and (tmp_path / "table.md").read_text().strip() == table.strip()
    rows = {r["run"]: r for r in json.loads((tmp_path / "table.json").read_text())["rows"]}
    b, p, q = rows[str(base)], rows[str(pruned)], rows[str(quantized)]
    assert b["params"] == p["params"] == q["params"] and b["nonzero"] > 0.99 * b["params"]
    assert p["nonzero"] == b["nonzero"] - (16 // 4) * 9 * 1 - (32 // 4) * 9 * 16  # 4 of 16 and 8 of 32 filters
    # The int8 arrays are a quarter of the float ones plus scales; on disk orbax's per-array metadata (which
    # varies by a few KB between identical saves) weighs more in a model this small.
    float_params, int8_params = load_model(str(pruned), None)[1], load_model(str(quantized), None)[1]
    assert quantized_bytes(int8_params) < 0.27 * quantized_bytes(float_params)
    assert q["params_bytes"] < 0.5 * p["params_bytes"] and q["note"] == "quantization: int8"
    assert all(r["latency_ms"]["1"] > 0 and r["latency_ms"]["32"] > 0 for r in rows.values())
    assert b["metric"] == "eval_accuracy" and 0 <= b["value"] <= 1
    assert b["train_seconds"] > 0 and p["train_seconds"] == b["train_seconds"]  # a one-shot prune trains nothing
    assert main(["compare", str(base), "--split", "validation", "--metric", "eval_bleu", "--repeats", "1"]) == 2
    assert "reports no eval_bleu" in capsys.readouterr().err
