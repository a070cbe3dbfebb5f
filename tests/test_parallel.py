"""Sharded training computes what single-device training computes (8 fake CPU devices)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trains gpt2 for 5 steps under each mesh given on the command line; prints losses and the
# per-device parameter bytes as JSON.
SCRIPT = """
import json, sys, tempfile
import jax, numpy as np
from conftest import tiny_overrides
from jaxlm.config import load_config
from jaxlm.train.logging import read_metrics
from jaxlm.train.trainer import setup, train

FAMILIES = {
    "gpt2": ("configs/gpt2-tiny.yaml", {"model.n_embd": 64, "model.n_head": 4, "model.vocab_size": 320,
                                        "data.tokenizer.vocab_size": 320}),
    "bert": ("configs/bert-tiny-mlm.yaml", {"model.vocab_size": 512, "data.tokenizer.vocab_size": 512,
                                            "model.hidden_size": 64, "model.num_attention_heads": 4,
                                            "model.intermediate_size": 128, "data.seq_len": 32}),
}
corpus, wordpiece, out = sys.argv[1], sys.argv[2], {}
FAMILIES["bert"][1]["data.tokenizer.path"] = wordpiece  # WordPiece training breaks ties in hash order
for entry in sys.argv[3:]:
    family, mesh = entry.split(":")
    data, fsdp, tensor = map(int, mesh.split(","))
    path, sizes = FAMILIES[family]
    run = tempfile.mkdtemp()
    overrides = tiny_overrides(run, **{
        "data.paths": corpus, "trainer.batch_size": 8, "trainer.max_steps": 5, "trainer.log_every": 1,
        "trainer.eval_every": 5, "mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor, **sizes})
    if family == "bert":  # tiny_overrides' model keys are GPT-2's: keep only ours
        overrides = [o for o in overrides if not o.startswith("model.") or o.split("=")[0] in sizes]
    config = load_config(path, overrides)
    train(config)
    s = setup(config)
    per_device = sum(np.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize
                     for a in jax.tree.leaves(s.abstract_state.params))
    out[entry] = {"losses": [r["loss"] for r in read_metrics(run) if "loss" in r],
                  "eval_loss": [r["eval_loss"] for r in read_metrics(run) if "eval_loss" in r],
                  "param_bytes_per_device": int(per_device)}
print(json.dumps(out))
"""

MESHES = ["8,1,1", "2,4,1", "2,2,2", "1,4,2"]


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    from conftest import small_corpus
    from jaxlm.data.corpus import embedded_corpus
    from jaxlm.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("corpus")
    corpus = small_corpus(root)
    train_tokenizer("wordpiece", embedded_corpus()[:6], 512).save(root / "wordpiece")
    runs = [f"{family}:{mesh}" for family in ("gpt2", "bert") for mesh in MESHES]
    return {**run_meshes(1, root, ["gpt2:1,1,1", "bert:1,1,1"]), **run_meshes(8, root, runs)}


def run_meshes(devices, root, meshes):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.path.join(ROOT, "tests")}
    args = [str(root / "corpus.txt"), str(root / "wordpiece"), *meshes]
    result = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["gpt2", "bert"])
@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_losses_equal_single_device(sharded_runs, family, mesh):
    single, sharded = sharded_runs[f"{family}:1,1,1"], sharded_runs[f"{family}:{mesh}"]
    for a, b in zip(single["losses"] + single["eval_loss"], sharded["losses"] + sharded["eval_loss"], strict=True):
        assert abs(a - b) <= 2e-5 * abs(a), (mesh, single, sharded)


def test_fsdp_and_tensor_parallelism_shrink_per_device_params(sharded_runs):
    sharded_runs = {k.split(":")[1]: v for k, v in sharded_runs.items() if k.startswith("gpt2:")}
    full = sharded_runs["1,1,1"]["param_bytes_per_device"]
    assert sharded_runs["8,1,1"]["param_bytes_per_device"] == full  # data parallel: a full copy each
    assert sharded_runs["2,4,1"]["param_bytes_per_device"] < full / 3  # fsdp=4 shards every embed axis
    # tensor=2 on top of fsdp=4 also halves heads, mlp and vocab
    assert sharded_runs["1,4,2"]["param_bytes_per_device"] < sharded_runs["2,4,1"]["param_bytes_per_device"] * 0.6


def test_tensor_not_dividing_heads_is_one_line(tmp_path):
    from test_cli import jaxlm, one_line_error

    from conftest import tiny_overrides

    result = jaxlm("train", "configs/gpt2-tiny.yaml", *tiny_overrides(tmp_path, **{"mesh.data": 1, "mesh.tensor": 8,
                                                                                "trainer.batch_size": 8}), devices=8)
    one_line_error(result, "transformer/h_0/attn/c_attn/bias: its 'heads' axis of size 4 cannot be split 8 ways",
                   "mesh.tensor=8")
    result = jaxlm("train", "configs/gpt2-tiny.yaml", *tiny_overrides(tmp_path, **{"mesh.data": 3}), devices=8)
    one_line_error(result, "mesh data=3 x fsdp=1 x tensor=1 = 3 but there are 8 devices")


def test_memory_report_counts_shards():
    from jaxlm.config import Config
    from jaxlm.parallel.memory import state_memory

    model = {"type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 512, "n_positions": 128}
    dp = state_memory(Config.model_validate({"model": model, "mesh": {"data": 8}}), "causal_lm", 8)
    assert dp["params"] == dp["grads"] == 4 * dp["parameters"]  # float32, a full copy per device
    assert 2 * dp["params"] <= dp["optimizer"] <= 2 * dp["params"] + 64  # AdamW's mu and nu (+ step counts)
    fsdp = state_memory(Config.model_validate({"model": model, "mesh": {"data": 1, "fsdp": 8}}), "causal_lm", 8)
    tp = state_memory(Config.model_validate({"model": model, "mesh": {"data": 2, "tensor": 4}}), "causal_lm", 8)
    assert fsdp["params"] < dp["params"] / 6 and tp["params"] < dp["params"] / 3
    assert fsdp["parameters"] == dp["parameters"]


def test_rule_overrides_and_generic_fsdp_fallback():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from jax.sharding import AbstractMesh, PartitionSpec as P

    from jaxlm.config import MeshConfig
    from jaxlm.parallel.mesh import AXES, param_shardings, rules_for

    class Plain(nn.Module):  # no logical axis names anywhere
        @nn.compact
        def __call__(self, x):
            return nn.Dense(96)(nn.Dense(256)(x))

    boxed = jax.eval_shape(lambda: Plain().init(jax.random.PRNGKey(0), jnp.ones((1, 48)))["params"])
    mesh = AbstractMesh((2, 4, 1), AXES)
    specs = jax.tree.map(lambda s: s.spec, param_shardings(nn.get_partition_spec(boxed), nn.meta.unbox(boxed), mesh))
    # Dense_0 is the outer (96-wide) layer: flax numbers modules as they are constructed.
    assert specs["Dense_1"]["kernel"] == P(None, "fsdp")  # [48, 256]: the largest divisible dim
    assert specs["Dense_0"]["kernel"] == P("fsdp", None)  # [256, 96]
    assert specs["Dense_1"]["bias"] == P()  # too small to be worth splitting

    rules = dict(rules_for(MeshConfig(rules={"mlp": None, "embed": ["fsdp", "tensor"]})))
    assert rules["mlp"] is None and rules["embed"] == ("fsdp", "tensor") and rules["heads"] == "tensor"


def test_unknown_mesh_axis_in_rules_is_rejected():
    from jaxlm.config import load_config
    from jaxlm.errors import ConfigError

    with pytest.raises(ConfigError, match="mesh.rules.mlp"):
        load_config(None, ["mesh.rules.mlp=model"])
