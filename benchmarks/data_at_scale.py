"""Pretraining data at scale: prepare throughput, time to the first training step and peak host
memory on prepared shards, for corpora of several sizes.

The text is Python source from this environment's site-packages (real, varied text that every
install has), copied in file order into ``--work/text-<MB>/`` until each size is reached (in
files of about 8 MB). For each size:
  1. ``jaxlm data prepare configs/gpt2-tiny.yaml data.paths=...`` with ``--workers`` processes:
     wall time, the tokenizer's share (sampling ``--sample-mb`` of text and training it), and the
     encoding throughput in MB of text per second per worker (the manifest's record), over the
     workers' wall-clock seconds and over their CPU seconds (the two differ when the machine is
     busy with other work);
  2. ``jaxlm train`` on the prepared shards for one step (evaluation limited to one batch):
     time from launch to the first step's metrics line and the process's peak resident memory.
Then the floor: the same one-step run on the embedded corpus (0.46 MB, encoded in memory).
Each command runs in its own child process; its peak memory is ``ru_maxrss`` of that child
(for prepare: the largest of its processes, the parent or one worker).

Usage: python benchmarks/data_at_scale.py [--sizes 50 250] [--workers 2] [--sample-mb 20]
       [--work /tmp/jaxlm-data-bench] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_corpus(directory: Path, megabytes: int) -> Path:
    """``megabytes`` of UTF-8 Python source in files of about 8 MB (reused when present)."""
    done = directory / "done"
    if done.is_file():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    target, written, part, out = megabytes * 10**6, 0, 0, None
    for path in sorted(Path(sysconfig.get_paths()["purelib"]).rglob("*.py")):
        if written >= target:
            break
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if out is None or out.tell() > 8 * 10**6:
            out = open(directory / f"part-{part:03d}.txt", "w", encoding="utf-8")
            part += 1
        data = text[: target - written] + "\n"
        out.write(data)
        written += len(data.encode("utf-8"))
    out.close()
    done.write_text(str(written))
    return directory


def measured(command: list[str], first_line_in: Path | None = None) -> dict:
    """Run ``command``; its wall time, peak RSS, and (``first_line_in``) when that file first had a line."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and first_line_in is not None and first_line_in.is_file() and first_line_in.stat().st_size:
            first = time.perf_counter() - start
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    return {"seconds": time.perf_counter() - start, "first": first, "stdout": out, "stderr": err}


def child_peak_mb(command: list[str], first_line_in: Path | None = None) -> dict:
    """:func:`measured` in a fresh helper process (this script with ``--child``), so that its
    ``ru_maxrss`` over children is the command's own peak."""
    job = json.dumps({"command": command, "first_line_in": first_line_in and str(first_line_in)})
    out = subprocess.run([sys.executable, __file__, "--child", job], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(job: str) -> None:
    job = json.loads(job)
    result = measured(job["command"], job["first_line_in"] and Path(job["first_line_in"]))
    result["peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 250], help="corpus sizes in MB")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sample-mb", type=int, default=20, help="data.tokenizer.sample_bytes in MB")
    parser.add_argument("--work", default="/tmp/jaxlm-data-bench")
    parser.add_argument("--keep", action="store_true", help="keep the text, shards and runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    work = Path(args.work)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, {os.cpu_count()} cores, "
          f"workers={args.workers}, tokenizer sample {args.sample_mb} MB")
    jaxlm = [sys.executable, "-m", "jaxlm.cli"]
    rows = []
    for size in args.sizes:
        text = write_corpus(work / f"text-{size}", size)
        common = [f"data.paths={text}/*.txt", f"data.cache_dir={work}/cache-{size}",
                  f"data.tokenizer.sample_bytes={args.sample_mb * 10**6}"]
        shutil.rmtree(work / f"cache-{size}", ignore_errors=True)
        prep = child_peak_mb([*jaxlm, "data", "prepare", "configs/gpt2-tiny.yaml", *common,
                              "--workers", str(args.workers)])
        manifest = json.loads(next((work / f"cache-{size}").glob("*/manifest.json")).read_text())
        stamps = [json.loads(p.read_text()) for p in (work / f"cache-{size}").glob("*/unit-*.json")]
        text_mb = sum(s["text_bytes"] for s in manifest["splits"].values()) / 1e6
        run = work / f"run-{size}"
        shutil.rmtree(run, ignore_errors=True)
        train = child_peak_mb([*jaxlm, "train", "configs/gpt2-tiny.yaml", *common, f"run.out_dir={run}",
                               "trainer.max_steps=1", "trainer.log_every=1", "trainer.eval_batches=1",
                               "trainer.progress_bar=false"], first_line_in=run / "metrics.jsonl")
        p = manifest["prepare"]
        row = {"MB": size, "text_MB": round(text_mb, 1), "train_tokens": manifest["splits"]["train"]["tokens"],
               "shards": len(stamps), "prepare_s": round(prep["seconds"], 1), "tokenizer_s": p["tokenizer_seconds"],
               "encode_s": p["encode_seconds"], "prepare_peak_MB": round(prep["peak_mb"]),
               "MB_per_s_per_worker": p["text_mb_per_worker_second"],
               "MB_per_cpu_s_per_worker": p["text_mb_per_worker_cpu_second"],
               "first_step_s": round(train["first"], 1), "train_peak_MB": round(train["peak_mb"])}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)
    # The floor: the same model on the embedded corpus (0.46 MB, encoded in memory), with the last tokenizer.
    tokenizer = next((work / f"cache-{args.sizes[-1]}").glob("*/tokenizer"))
    run = work / "run-embedded"
    shutil.rmtree(run, ignore_errors=True)
    floor = child_peak_mb([*jaxlm, "train", "configs/gpt2-tiny.yaml", f"data.tokenizer.path={tokenizer}",
                           f"run.out_dir={run}", "trainer.max_steps=1", "trainer.log_every=1", "trainer.eval_batches=1",
                           "trainer.progress_bar=false"], first_line_in=run / "metrics.jsonl")
    print(json.dumps({"embedded_corpus_first_step_s": round(floor["first"], 1),
                      "embedded_corpus_train_peak_MB": round(floor["peak_mb"])}))
    if len(rows) > 1:
        peaks = [r["train_peak_MB"] for r in rows]
        print(f"# train peak memory {min(peaks)}-{max(peaks)} MB: the largest is {max(peaks) / min(peaks) - 1:+.1%} "
              f"over the smallest")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
