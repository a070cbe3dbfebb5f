"""``jaxlm memory``'s activation estimate: against XLA's own memory analysis of the compiled train step on
CPU, for every ``model.remat`` setting, and printed for every shipped config (every model family)."""

import glob

import pytest

from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.parallel.memory import activation_memory, compiled_step_memory, device_rows, state_memory

TOLERANCE = 0.25
"""Activations + gradients against XLA's temporary bytes: XLA also holds short-lived buffers (attention
masks, dropout bits) and may fuse an elementwise residual into the backward pass instead of keeping it."""


# XLA:CPU honours model.remat only for scanned layers (unrolled, it schedules the recomputation early and keeps
# as much as without remat), so the Transformers are compared with scan_layers.
CASES = {
    "gpt2 remat=none": ("configs/gpt2-tiny.yaml", ["model.scan_layers=true", "model.remat=none"]),
    "gpt2 remat=full": ("configs/gpt2-tiny.yaml", ["model.scan_layers=true", "model.remat=full"]),
    "llama remat=dots": ("configs/llama-tiny.yaml", ["model.scan_layers=true", "model.remat=dots"]),
    "bert mlm": ("configs/bert-tiny-mlm.yaml", ["model.scan_layers=true", "data.tokenizer.vocab_size=800",
                                                "model.vocab_size=800"]),
    "bilstm classifier": ("configs/bilstm-sentiment.yaml", []),
    "lstm seq2seq": ("configs/lstm-seq2seq-reverse.yaml", ["task.num_train_examples=256"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_activation_estimate_matches_the_compiled_train_step(case, corpus_file, tmp_path):
    path, overrides = CASES[case]
    text = [f"data.paths={corpus_file}", "data.seq_len=64"] if "gpt2" in path or "llama" in path or "bert" in path \
        else []
    small = ["data.tokenizer.vocab_size=512", "model.vocab_size=512"] if "gpt2" in path or "llama" in path else []
    config = load_config(path, [f"run.out_dir={tmp_path}", "trainer.batch_size=16", *text, *small, *overrides])
    head = config.task.head
    estimate = activation_memory(config, head, 1)[config.model.remat] + state_memory(config, head, 1)["grads"]
    actual = compiled_step_memory(config).temp_size_in_bytes
    assert abs(estimate - actual) <= TOLERANCE * actual, (estimate, actual)


def test_remat_and_the_mesh_shrink_the_estimate():
    config = load_config("configs/llama-tiny.yaml", ["trainer.batch_size=16"])
    one = activation_memory(config, "causal_lm", 1)
    assert one["none"] > one["dots"] > one["full"] > 0
    eight = activation_memory(load_config("configs/llama-tiny.yaml", ["trainer.batch_size=16", "mesh.fsdp=2"]),
                              "causal_lm", 8)
    assert device_rows(config, 8) == 2 and abs(eight["none"] * 8 - one["none"]) <= 0.01 * one["none"]
    accumulated = load_config("configs/llama-tiny.yaml", ["trainer.batch_size=16", "trainer.grad_accum_steps=4"])
    assert device_rows(accumulated, 1) == 4


@pytest.mark.parametrize("path", sorted(glob.glob("configs/*.yaml")))
def test_memory_prints_activations_for_every_shipped_config(path, capsys):
    assert main(["memory", "--devices", "1", path]) == 0
    out = capsys.readouterr().out
    assert "activations" in out and "remat=full" in out and "total" in out, out


@pytest.mark.parametrize("model", [
    {"type": "roberta", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
     "intermediate_size": 37, "max_position_embeddings": 40},
    {"type": "distilbert", "vocab_size": 99, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37},
    {"type": "qwen2", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
     "num_key_value_heads": 2, "intermediate_size": 37, "max_position_embeddings": 64},
    {"type": "mistral", "vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
     "num_key_value_heads": 2, "intermediate_size": 37, "max_position_embeddings": 64},
], ids=lambda m: m["type"])
def test_families_without_a_shipped_config(model):
    task = "causal_lm" if model["type"] in ("qwen2", "mistral") else "mlm"
    config = load_config(None, [f"model.{k}={v}" for k, v in model.items()] + [f"task={task}", "data.seq_len=32"])
    act = activation_memory(config, config.task.head, 1)
    assert act["none"] > act["full"] > 0
