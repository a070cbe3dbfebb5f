"""The worker side of ``jaxlm data prepare``: encode one unit of a source into its train and
validation shards (imports only what encoding needs, so spawned workers start fast)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from jaxlm.data import sources
from jaxlm.data.corpus import is_held_out, line_chunks
from jaxlm.data.shards import SPLITS, ShardWriter, write_json
from jaxlm.data.tokenizer import load_tokenizer

ENCODE_BATCH_CHARS = 1 << 20


def stamp(directory: Path, i: int) -> Path:
    return directory / f"unit-{i:05d}.json"


def quiet_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker: the workers are the parallelism


UNIT_PHASE = 1_000_003  # a prime: units of one or a few chunks still hold out their share between them


def training_chunks(unit, spec, fraction: float, unit_index: int):
    """``(chunk, held_out, ends_document)`` for every ~2,000-character chunk of a unit's text.
    Chunks are counted within the unit (workers need no global order), from a phase that
    differs per unit."""
    index = unit_index * UNIT_PHASE
    for text, ends in sources.read_unit(unit, spec):
        pieces = list(line_chunks(text))
        if not pieces:  # an empty piece only ends its document
            yield "", False, ends
        for k, chunk in enumerate(pieces):
            yield chunk, is_held_out(index, fraction), ends and k == len(pieces) - 1
            index += 1


def encode_unit(job) -> dict:
    """Worker: encode one unit into its train / valid shards and stamp it done."""
    directory, index, unit, spec, fraction, tok_file, sha, dtype = job
    directory, start, cpu_start = Path(directory), time.perf_counter(), time.process_time()
    tok = load_tokenizer(tok_file)
    eos = [] if tok.eos_id is None else [tok.eos_id]
    writers = {s: ShardWriter(directory, s, index, np.dtype(dtype)) for s in SPLITS}
    pending, size = [], 0  # (split, text, ends_document), encoded in batches

    def flush():
        ids = tok.encode_batch([text for _, text, _ in pending])
        for (split, text, ends), piece in zip(pending, ids):
            writers[split].add(piece + eos if ends else piece, len(text.encode("utf-8")), ends)
        pending.clear()

    train_open = False  # a training document has text not yet closed by an end-of-text
    for chunk, held_out, ends in training_chunks(unit, spec, fraction, index):
        if not chunk:
            if ends and train_open:
                pending.append(("train", "", True))
            train_open = train_open and not ends
            continue
        if held_out:
            if train_open:  # the held-out chunk cuts the training document, as split_documents does
                pending.append(("train", "", True))
            pending.append(("valid", chunk, True))
            train_open = False
        else:
            pending.append(("train", chunk, ends))
            train_open = not ends
        size += len(chunk)
        if size >= ENCODE_BATCH_CHARS:
            flush()
            size = 0
    flush()
    record = {s: w.close() for s, w in writers.items()}
    record.update(unit=[unit.kind, unit.where, unit.start, unit.stop], tokenizer_sha256=sha,
                  seconds=round(time.perf_counter() - start, 3), cpu_seconds=round(time.process_time() - cpu_start, 3))
    write_json(stamp(directory, index), record)
    return record
