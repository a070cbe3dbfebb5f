"""``jaxlm memory``'s activation estimate against XLA's memory analysis of the compiled train step on CPU.

For each case: the estimated activations (what the backward pass keeps, ``jaxlm.parallel.memory.
activation_memory``) plus the gradients, against the compiled step's temporary bytes; batch 16,
sequence 64, one device. Prints a markdown table (the one in docs/scaling.md)::

    python benchmarks/activation_memory.py
"""

from __future__ import annotations

import datetime
import platform
import tempfile
from pathlib import Path

from jaxlm.config import load_config
from jaxlm.data.corpus import embedded_corpus
from jaxlm.parallel.memory import activation_memory, compiled_step_memory, state_memory

TEXT = ["data.seq_len=64"]
SMALL = ["data.tokenizer.vocab_size=512", "model.vocab_size=512"]
CASES = [  # (name, config, overrides, layers)
    ("gpt2-tiny", "configs/gpt2-tiny.yaml", TEXT + SMALL, "unrolled"),
    ("gpt2-tiny", "configs/gpt2-tiny.yaml", TEXT + SMALL + ["model.scan_layers=true"], "scanned"),
    ("llama-tiny", "configs/llama-tiny.yaml", TEXT + SMALL, "unrolled"),
    ("llama-tiny", "configs/llama-tiny.yaml", TEXT + SMALL + ["model.scan_layers=true"], "scanned"),
    ("bert-tiny-mlm", "configs/bert-tiny-mlm.yaml",
     TEXT + ["model.scan_layers=true", "data.tokenizer.vocab_size=800", "model.vocab_size=800"], "scanned"),
    ("vit-digits", "configs/vit-digits.yaml", [], "unrolled"),
    ("bilstm-sentiment", "configs/bilstm-sentiment.yaml", [], "—"),
    ("lstm-seq2seq-reverse", "configs/lstm-seq2seq-reverse.yaml", ["task.num_train_examples=256"], "—"),
]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def main() -> None:
    root = Path(tempfile.mkdtemp())
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(embedded_corpus()[:6]))
    print(f"`python benchmarks/activation_memory.py`, {datetime.date.today().isoformat()}, {cpu_model()}\n")
    print("| model | layers | model.remat | estimate: activations + gradients (MiB) | XLA temp (MiB) | estimate / XLA |")
    print("|---|---|---|---:|---:|---:|")
    for name, path, overrides, layers in CASES:
        text = [f"data.paths={corpus}"] if "data.seq_len=64" in overrides else []
        for remat in ("none", "dots", "full"):
            config = load_config(path, [f"run.out_dir={root / name}", "trainer.batch_size=16", f"model.remat={remat}",
                                        *text, *overrides])
            head = config.task.head
            estimate = activation_memory(config, head, 1)[remat] + state_memory(config, head, 1)["grads"]
            actual = compiled_step_memory(config).temp_size_in_bytes
            print(f"| {name} | {layers} | {remat} | {mib(estimate)} | {mib(actual)} | {estimate / actual:.2f} |",
                  flush=True)
            if layers == "—":  # no layer stack: remat does not apply
                break


if __name__ == "__main__":
    main()
