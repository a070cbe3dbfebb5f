"""Is training a tokenizer deterministic? Each kind jaxlm trains is trained on the embedded
corpus in ``--runs`` separate processes (hash-map seeds differ between processes, not within
one); the script counts the distinct tokenizer files (ids included) and the distinct sets of
tokens they hold.

Usage: python benchmarks/tokenizer_determinism.py [--runs 4] [--vocab-size 2048]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time

from activation_memory import cpu_model

KINDS = ("wordpiece", "bpe", "roberta_bpe", "word")

CHILD = """
import hashlib, json, sys
from jaxlm.data.corpus import embedded_corpus
from jaxlm.data.tokenizer import train_tokenizer
out = {}
for kind in sys.argv[2:]:
    tok = train_tokenizer(kind, embedded_corpus(), int(sys.argv[1])).tok
    out[kind] = [hashlib.sha256(tok.to_str().encode()).hexdigest(),
                 hashlib.sha256("\\n".join(sorted(tok.get_vocab())).encode()).hexdigest()]
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_model()}, "
          f"{args.runs} processes, vocab_size {args.vocab_size}, the embedded corpus")
    runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, str(args.vocab_size), *KINDS], check=True,
                                      capture_output=True, text=True).stdout.strip().splitlines()[-1])
            for _ in range(args.runs)]
    for kind in KINDS:
        files = {r[kind][0] for r in runs}
        sets = {r[kind][1] for r in runs}
        print(json.dumps({"kind": kind, "runs": args.runs, "distinct_files": len(files), "distinct_token_sets": len(sets),
                          "deterministic": len(files) == 1}))


if __name__ == "__main__":
    main()
