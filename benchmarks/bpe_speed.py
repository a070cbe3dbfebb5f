"""Learning BPE merges: jaxlm.data.bpe (from scratch, pure Python) against subword-nmt and HF
``tokenizers`` (Rust) on the embedded corpus, the same number of merges, side by side in one run.

    python benchmarks/bpe_speed.py [--merges 500 2000] [--repeats 3]

Each learner gets the same space-split words; HF's vocabulary is its starting symbols plus the
merges (``end_of_word_suffix="</w>"``, minimum frequency 2), so all three learn as many merges.
Prints the best of ``--repeats`` wall times and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

from jaxlm.data.bpe import learn_bpe, word_counts
from jaxlm.data.corpus import embedded_corpus


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def hf_learner(text: str, merges: int):
    """HF tokenizers' BPE trainer on the same words, its vocabulary sized to learn ``merges`` merges."""
    import json

    import tokenizers
    from tokenizers import models, pre_tokenizers, trainers

    def learn(vocab_size):
        tok = tokenizers.Tokenizer(models.BPE(end_of_word_suffix="</w>"))
        tok.pre_tokenizer = pre_tokenizers.Split(" ", "removed")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                      end_of_word_suffix="</w>")
        tok.train_from_iterator(text.splitlines(), trainer=trainer)
        return len(json.loads(tok.to_str())["model"]["merges"]), tok.get_vocab_size()

    _, alphabet = learn(0)  # the symbols it starts from
    learned, _ = learn(alphabet + merges)
    assert learned == merges, (learned, merges)
    return lambda: learn(alphabet + merges)


def subword_nmt_learner(text: str, merges: int):
    from subword_nmt.learn_bpe import learn_bpe as reference

    def learn():
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
            reference(io.StringIO(text), io.StringIO(), merges)

    return learn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merges", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text = "\n".join(embedded_corpus())
    print(f"embedded corpus: {len(text)} characters, {sum(word_counts([text]).values())} words")
    print(f"{'merges':>7} {'jaxlm':>9} {'subword-nmt':>12} {'tokenizers':>11} {'jaxlm/subword-nmt':>18} "
          f"{'jaxlm/tokenizers':>17}")
    for merges in args.merges:
        ours = best_of(lambda: learn_bpe([text], merges), args.repeats)
        ref = best_of(subword_nmt_learner(text, merges), args.repeats)
        hf = best_of(hf_learner(text, merges), args.repeats)
        print(f"{merges:>7} {ours:>8.2f}s {ref:>11.2f}s {hf:>10.3f}s {ours / ref:>17.2f}x {ours / hf:>16.1f}x")


if __name__ == "__main__":
    main()
