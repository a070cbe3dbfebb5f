"""Prepared token shards on disk: memory-mapped flat NumPy arrays of token ids, a manifest.

Format: flat token arrays read through ``np.memmap`` — what Megatron-LM, GPT-NeoX and OLMo
pretrain from: a training window at any token offset is one slice of the page cache, with
no decoding and no per-record overhead, so windows are cut on the fly in O(1) memory.

A prepared directory holds, per split (``train``, ``valid``) and unit of the source:
``{split}-{i:05d}.tokens`` (the token ids, each document followed by the end-of-text token)
and ``{split}-{i:05d}.docs`` (int64 end offsets of the documents, so boundaries are kept),
``unit-{i:05d}.json`` (written last: the unit is complete), ``tokenizer/`` and, once every
unit is done, ``manifest.json``: the sources, the tokenizer's fingerprint, token counts,
the shard list with sizes and block checksums, and the split settings.

Every ``BLOCK`` bytes of a token file carries a CRC-32 in the manifest; a reader checks each
block the first time it touches it, so a damaged shard fails with its file named, and a
restart costs no upfront pass over the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import numpy as np

from jaxlm.errors import DataError

FORMAT = "jaxlm-token-shards/1"
MANIFEST = "manifest.json"
BLOCK = 1 << 20
SPLITS = ("train", "valid")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def block_crcs(path: Path) -> list[int]:
    with open(path, "rb") as f:
        return [zlib.crc32(b) for b in iter(lambda: f.read(BLOCK), b"")]


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (a temp name, then a rename): a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


class ShardWriter:
    """Appends documents of token ids to one split's files of one unit (under temp names
    until :meth:`close` renames them)."""

    def __init__(self, directory: Path, split: str, unit: int, dtype: np.dtype):
        self.name = f"{split}-{unit:05d}"
        self.directory, self.dtype = directory, dtype
        self.tokens_tmp = directory / f"{self.name}.tokens.tmp"
        self.docs_tmp = directory / f"{self.name}.docs.tmp"
        self.tokens_file, self.docs_file = open(self.tokens_tmp, "wb"), open(self.docs_tmp, "wb")
        self.count, self.documents, self.text_bytes = 0, 0, 0

    def add(self, ids: list[int], text_bytes: int, ends_document: bool) -> None:
        """Token ids of a piece of text; ``ends_document`` closes the document after them."""
        if ids:
            self.tokens_file.write(np.asarray(ids, self.dtype).tobytes())
            self.count += len(ids)
        self.text_bytes += text_bytes
        if ends_document:
            self.docs_file.write(np.int64(self.count).tobytes())
            self.documents += 1

    def close(self) -> dict:
        self.tokens_file.close()
        self.docs_file.close()
        os.replace(self.tokens_tmp, self.directory / f"{self.name}.tokens")
        os.replace(self.docs_tmp, self.directory / f"{self.name}.docs")
        return {"file": f"{self.name}.tokens", "tokens": self.count, "documents": self.documents,
                "text_bytes": self.text_bytes, "crc32": block_crcs(self.directory / f"{self.name}.tokens")}


def read_manifest(directory: Path, fmt: str = FORMAT) -> dict:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is unreadable ({e}); rerun jaxlm data prepare") from None
    if manifest.get("format") != fmt:
        raise DataError(f"{path} is format {manifest.get('format')!r}, not {fmt}; rerun jaxlm data prepare")
    return manifest


def check_tokenizer(directory: Path, manifest: dict, tokenizer_file: Path) -> None:
    """The shards were written with the tokenizer the manifest names, and ``tokenizer_file`` is it."""
    if file_sha256(tokenizer_file) != manifest["tokenizer"]["sha256"]:
        raise DataError(f"{tokenizer_file} is not the tokenizer the shards in {directory} were prepared with "
                        f"(fingerprint {manifest['tokenizer']['sha256'][:12]}); restore it, or rerun jaxlm data "
                        "prepare with a new data.cache_dir or run.out_dir")


class ShardedTokens:
    """One split of a prepared directory as one token stream: the concatenation of its
    shards, read through memory maps (nothing is loaded until sliced)."""

    def __init__(self, directory: Path, manifest: dict, split: str):
        self.directory, self.dtype = directory, np.dtype(manifest["dtype"])
        self.shards = manifest["splits"][split]["shards"]
        sizes = np.asarray([s["tokens"] for s in self.shards], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.text_bytes = sum(s["text_bytes"] for s in self.shards)
        self._maps: dict[int, np.memmap] = {}
        self._checked: dict[int, np.ndarray] = {}
        for s in self.shards:  # truncation or a missing file is caught before training starts
            path = directory / s["file"]
            size = path.stat().st_size if path.is_file() else None
            if size != s["tokens"] * self.dtype.itemsize:
                raise DataError(f"shard {path} is {'missing' if size is None else f'{size} bytes'}, the manifest "
                                f"says {s['tokens'] * self.dtype.itemsize}; delete {directory} and rerun jaxlm "
                                "data prepare")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _map(self, shard: int) -> np.memmap:
        if shard not in self._maps:
            self._maps[shard] = np.memmap(self.directory / self.shards[shard]["file"], self.dtype, "r")
            self._checked[shard] = np.zeros(len(self.shards[shard]["crc32"]), bool)
        return self._maps[shard]

    def _verify(self, shard: int, lo: int, hi: int) -> None:
        """CRC-check the blocks holding tokens ``[lo, hi)`` of ``shard`` that are not checked yet."""
        data, checked, crcs = self._map(shard), self._checked[shard], self.shards[shard]["crc32"]
        per_block = BLOCK // self.dtype.itemsize
        for b in range(lo // per_block, (hi - 1) // per_block + 1):
            if not checked[b]:
                raw = data[b * per_block:(b + 1) * per_block].tobytes()
                if zlib.crc32(raw) != crcs[b]:
                    path = self.directory / self.shards[shard]["file"]
                    raise DataError(f"shard {path} is corrupted (bytes {b * BLOCK}-{b * BLOCK + len(raw)} fail their "
                                    f"checksum); delete {self.directory} and rerun jaxlm data prepare")
                checked[b] = True

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the stream (int32), across shard boundaries."""
        out, pos = [], start
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while pos < stop:
            lo, hi = pos - self.starts[shard], min(stop, self.starts[shard + 1]) - self.starts[shard]
            if hi > lo:
                self._verify(shard, int(lo), int(hi))
                out.append(self._map(shard)[lo:hi])
            pos, shard = self.starts[shard] + hi, shard + 1
        return np.concatenate(out).astype(np.int32) if out else np.zeros(0, np.int32)
