"""``jaxlm data prepare``: train (or load) the tokenizer, then encode the sources into token
shards in parallel worker processes, once; ``jaxlm train`` streams them.

That is pretraining text (``task: causal_lm`` / ``mlm``). A ``task: classification`` config
prepares labelled rows instead: the encoded train / validation / test rows of its stratified
split as memory-mapped ``.npy`` files (:mod:`jaxlm.tasks.classification_prepare`), in the same
cache, found and checked the same way (:func:`prepare`, :func:`load_prepared` dispatch on the task).

The shards go to ``data.cache_dir/<name>-<key>/``, the key a hash of everything that
determines them (the sources' files with sizes and times, or the dataset and its settings;
the tokenizer's file or training settings; the validation share; the shard size), so every
run of the same data finds them, and a run that changes any of it gets its own. A run's
``seq_len``, batch size and seed do not enter: windows are cut while training.

Each unit of the source becomes one shard pair (train, valid) written under temp names and
stamped done by ``unit-NNNNN.json``; an interrupted prepare skips the stamped units when rerun.
Validation text is held out as in :func:`jaxlm.data.corpus.split_documents` (every
``1 / validation_fraction``-th chunk of about 2,000 characters), counted within each unit so
workers need no global order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jaxlm.config import Config
from jaxlm.data import sources
from jaxlm.data.encode import encode_unit, quiet_worker, stamp, training_chunks
from jaxlm.data.npy_rows import ROWS_FORMAT
from jaxlm.data.shards import (FORMAT, MANIFEST, SPLITS, check_tokenizer, file_sha256, read_manifest, token_dtype,
                               write_json)
from jaxlm.data.tokenizer import FILE, Tokenizer, configured_path, load_tokenizer, train_to_size
from jaxlm.errors import ConfigError, DataError

log = logging.getLogger("jaxlm")
TOKENIZER_KINDS = {"causal_lm": "bpe", "mlm": "wordpiece"}


def cache_root(config: Config) -> Path:
    default = os.environ.get("JAXLM_CACHE_DIR") or Path.home() / ".cache" / "jaxlm"
    return Path(config.data.cache_dir or default)


def tokenizer_kind(config: Config) -> str:
    kind = TOKENIZER_KINDS.get(config.task.type)
    if kind is None:
        raise ConfigError(f"jaxlm data prepare encodes pretraining text (task causal_lm or mlm) or labelled rows "
                          f"(task classification), not task {config.task.type}")
    if kind == "wordpiece" and config.model.type == "roberta":  # RoBERTa's byte-level BPE and specials
        return "roberta_bpe"
    return kind


def configured_tokenizer_sha256(config: Config) -> str | None:
    """The sha256 of the tokenizer ``data.tokenizer.path`` names (the run's copy once the path has
    moved), or ``None`` when the run trains its own."""
    path = configured_path(config.data.tokenizer.path, Path(config.run.out_dir) / "tokenizer")
    return None if path is None else hashlib.sha256(load_tokenizer(path).tok.to_str().encode()).hexdigest()


def key_of(config: Config) -> dict:
    """Everything that determines the prepared shards."""
    data, t = config.data, config.data.tokenizer
    sha = configured_tokenizer_sha256(config)
    if sha is not None:
        tokenizer = {"sha256": sha}
    else:
        tokenizer = {"kind": tokenizer_kind(config), "vocab_size": t.vocab_size, "sample_bytes": t.sample_bytes,
                     "sample_seed": t.sample_seed}
    return {"format": FORMAT, "sources": sources.fingerprint(sources.SourceSpec.of(data)), "tokenizer": tokenizer,
            "validation_fraction": data.validation_fraction, "shard_mb": data.prepare.shard_mb}


def prepared_dir(config: Config) -> Path:
    spec = sources.SourceSpec.of(config.data)
    if spec.is_embedded:
        raise ConfigError("the embedded corpus trains without a prepare step; set data.paths or data.dataset to "
                          "prepare a corpus")
    tokenizer_kind(config)
    return keyed_dir(config, spec, key_of(config))


def keyed_dir(config: Config, spec: sources.SourceSpec, key: dict) -> Path:
    """``data.cache_dir/<name>-<hash of key>``, named after the first source."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    first = spec.dataset or Path(sources.matched_files(spec.paths)[0]).stem
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(first.removeprefix("tfds:")).name)[:40]
    return cache_root(config) / f"{name}-{digest}"


def prepare(config: Config, workers: int | None = None, progress: bool = True) -> Path:
    """The prepared directory of ``config``'s data, encoding whatever is not done yet."""
    if config.task.type == "classification":  # labelled rows, not token shards
        from jaxlm.tasks.classification_prepare import prepare_rows

        return prepare_rows(config)
    directory = prepared_dir(config)
    return once(directory, lambda: _prepare(config, directory, workers or config.data.prepare.workers
                                            or os.cpu_count() or 1, progress))


def once(directory: Path, build) -> Path:
    """``directory`` once it has a manifest: ``build()`` writes it (the manifest last) unless another
    process holds the lock, in which case this one waits, then reads theirs."""
    if (directory / MANIFEST).is_file():
        return directory
    from filelock import FileLock

    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):  # one prepare per directory at a time; others wait, then read it
        if not (directory / MANIFEST).is_file():
            build()
    return directory


def describe(config: Config, directory: Path) -> str:
    """What a prepared directory holds, in a few words (``jaxlm data prepare`` prints it)."""
    if config.task.type == "classification":
        m = read_manifest(directory, ROWS_FORMAT)
        counts = ", ".join(f"{m['splits'][s]['examples']:,} {s}" for s in ("train", "validation", "test"))
        return f"{counts} examples of {m['where']} as memory-mapped .npy rows"
    m = read_manifest(directory)
    train, valid = m["splits"]["train"], m["splits"]["valid"]
    return (f"{train['tokens']:,} train tokens ({train['text_bytes'] / 1e6:.1f} MB of text), {valid['tokens']:,} "
            f"validation tokens, {len(train['shards'])} shards")


def _prepare(config: Config, directory: Path, workers: int, progress: bool) -> None:
    data = config.data
    spec = sources.SourceSpec.of(data)
    start = time.perf_counter()
    directory.mkdir(exist_ok=True)
    units = sources.units(spec, data.prepare.shard_mb << 20)
    plan = {"key": key_of(config), "units": [list(map(str, (u.kind, u.where, u.start, u.stop))) for u in units]}
    plan_file = directory / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
        raise DataError(f"{plan_file} lists other units than these sources give now (they changed during an "
                        f"interrupted prepare); delete {directory} and rerun jaxlm data prepare")
    write_json(plan_file, plan)
    tok_start = time.perf_counter()
    tok_file = _tokenizer(config, directory, units, spec, progress)
    tokenizer_seconds = time.perf_counter() - tok_start
    sha = file_sha256(tok_file)
    tok = load_tokenizer(tok_file)
    dtype = token_dtype(tok.vocab_size)
    done = {i for i in range(len(units)) if stamp(directory, i).is_file()}
    for i in done:
        if json.loads(stamp(directory, i).read_text())["tokenizer_sha256"] != sha:
            raise DataError(f"{stamp(directory, i)} was encoded with another tokenizer than {tok_file}; delete "
                            f"{directory} and rerun jaxlm data prepare")
    todo = [i for i in range(len(units)) if i not in done]
    if done:
        log.info("prepare: %d of %d shards already done in %s; encoding the other %d", len(done), len(units),
                 directory, len(todo))
    jobs = [(str(directory), i, units[i], spec, data.validation_fraction, str(tok_file), sha, dtype.str) for i in todo]
    bar = tqdm(total=len(units), initial=len(done), unit="shard", disable=not progress, dynamic_ncols=True,
               desc="encoding")
    encoded_bytes, encode_start = 0, time.perf_counter()
    try:
        if workers == 1 or len(jobs) <= 1:
            results = map(encode_unit, jobs)
        else:
            pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                                       initializer=quiet_worker)
            results = pool.map(encode_unit, jobs)
        for record in results:
            encoded_bytes += sum(record[s]["text_bytes"] for s in SPLITS)
            bar.update(1)
            bar.set_postfix(MB_s=f"{encoded_bytes / 1e6 / (time.perf_counter() - encode_start):.1f}")
    finally:
        bar.close()
        if workers > 1 and len(jobs) > 1:
            pool.shutdown(cancel_futures=True)
    records = [json.loads(stamp(directory, i).read_text()) for i in range(len(units))]
    splits = {s: {"tokens": sum(r[s]["tokens"] for r in records), "documents": sum(r[s]["documents"] for r in records),
                  "text_bytes": sum(r[s]["text_bytes"] for r in records), "shards": [r[s] for r in records]}
              for s in SPLITS}
    if not splits["train"]["tokens"] or not splits["valid"]["tokens"]:
        raise DataError("the corpus is too small to split into train and validation text; add text or change "
                        "data.validation_fraction")
    text_mb = sum(s["text_bytes"] for s in splits.values()) / 1e6
    worker_seconds, cpu_seconds = (sum(r.get(k, 0.0) for r in records) for k in ("seconds", "cpu_seconds"))
    manifest = {"format": FORMAT, "key": plan["key"], "sources": plan["key"]["sources"],
                "tokenizer": {"file": f"tokenizer/{FILE}", "sha256": sha, "vocab_size": tok.vocab_size,
                              "eos_id": tok.eos_id},
                "dtype": dtype.name, "split": {"validation_fraction": data.validation_fraction,
                                               "rule": "every 1/fraction-th ~2000-character chunk, counted within each unit "
                                                       "from a phase of unit index x 1000003"},
                "splits": splits,
                "prepare": {"workers": workers, "seconds": round(time.perf_counter() - start, 3),
                            "tokenizer_seconds": round(tokenizer_seconds, 3),
                            "encode_seconds": round(time.perf_counter() - encode_start, 3),
                            # per worker: MB of text over the seconds workers spent (wall clock / on a CPU)
                            "text_mb_per_worker_second": round(text_mb / max(worker_seconds, 1e-9), 3),
                            "text_mb_per_worker_cpu_second": round(text_mb / max(cpu_seconds, 1e-9), 3)}}
    write_json(directory / MANIFEST, manifest)
    log.info("prepared %s: %d train and %d validation tokens in %d shards (%s)", directory,
             splits["train"]["tokens"], splits["valid"]["tokens"], len(units), tok_file)


def _tokenizer(config: Config, directory: Path, units, spec, progress: bool) -> Path:
    """The prepared directory's tokenizer: a copy of ``data.tokenizer.path``, or one trained on a
    seeded sample of at most ``data.tokenizer.sample_bytes`` of training text."""
    t, out = config.data.tokenizer, directory / "tokenizer"
    if (out / FILE).is_file():
        return out / FILE
    if t.path is not None:
        load_tokenizer(configured_path(t.path, Path(config.run.out_dir) / "tokenizer")).save(out)
        return out / FILE
    sample = sample_training_text(units, spec, config.data.validation_fraction, t.sample_bytes, t.sample_seed, progress)
    log.info("training a %s tokenizer on %.1f MB of sampled training text", tokenizer_kind(config),
             sum(map(len, sample)) / 1e6)
    train_to_size(tokenizer_kind(config), sample, t.vocab_size).save(out)
    return out / FILE


def sample_training_text(units, spec, fraction: float, budget: int, seed: int, progress: bool) -> list[str]:
    """A seeded uniform sample (reservoir sampling) of the training chunks, at most ``budget``
    characters in all: the whole corpus never sits in memory."""
    rng = np.random.default_rng(seed)
    capacity = max(1, budget // 2000)
    reservoir, seen = [], 0
    for i, unit in enumerate(tqdm(units, desc="sampling tokenizer text", unit="shard", disable=not progress,
                                  dynamic_ncols=True)):
        for chunk, held_out, _ in training_chunks(unit, spec, fraction, i):
            if held_out or not chunk.strip():
                continue
            if len(reservoir) < capacity:
                reservoir.append(chunk)
            else:
                j = int(rng.integers(seen + 1))
                if j < capacity:
                    reservoir[j] = chunk
            seen += 1
    if not reservoir:
        raise DataError(f"the corpus is empty ({', '.join(spec.paths or [spec.dataset])} holds no training text); "
                        "point data.paths / data.dataset at non-empty text")
    return reservoir


def load_prepared(config: Config, run_dir: Path, progress: bool = True, segmenter: str | None = None
                  ) -> tuple[Path, dict, Tokenizer]:
    """Prepare if needed (process 0 of a multi-process job; the others wait), check the shards'
    tokenizer, and keep it with the run (``run_dir/tokenizer``): ``(directory, manifest, tokenizer)``
    (a word vocabulary's texts go through ``segmenter`` first)."""
    from jaxlm.parallel.distributed import main_process_first

    directory = main_process_first(lambda: prepare(config, progress=progress))
    manifest = read_manifest(directory, ROWS_FORMAT if config.task.type == "classification" else FORMAT)
    check_tokenizer(directory, manifest, directory / manifest["tokenizer"]["file"])
    run_tok = run_dir / "tokenizer" / FILE

    def keep_with_run():  # every process calls it (it synchronises them): no file test may come first
        if run_tok.is_file():
            check_tokenizer(directory, manifest, run_tok)
        else:
            run_tok.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(directory / manifest["tokenizer"]["file"], run_tok)
    main_process_first(keep_with_run)
    return directory, manifest, load_tokenizer(directory / manifest["tokenizer"]["file"], segmenter)
