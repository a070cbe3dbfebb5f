"""Prepared rows on disk: one NumPy ``.npy`` file per field of each split, opened memory-mapped.

Format: the rows of a labelled set are fixed-width (``input_ids [rows, seq_len]``, ``label
[rows]`` ...), and an ``.npy`` per field is the simplest file NumPy reads lazily
(``np.load(mmap_mode="r")``): a batch gathered by fancy indexing reads only its rows from the
page cache, so a run's memory does not grow with the data set.

A split's files are ``{split}.{field}.npy``, each written under a temp name and renamed; the
manifest (written last by the preparer) records each file's dtype, shape, size and the CRC-32
of every ``BLOCK`` bytes. :func:`open_rows` checks them when it opens the files (one sequential
read, in blocks: no copy is kept), so a truncated or damaged file fails with its name before
training starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxlm.data.shards import BLOCK, block_crcs
from jaxlm.errors import DataError

ROWS_FORMAT = "jaxlm-rows/1"


def write_rows(directory: Path, split: str, arrays: dict[str, np.ndarray]) -> dict:
    """Write one split's arrays (sharing a leading dimension) as ``.npy`` files; its manifest record."""
    fields = {}
    for name, array in arrays.items():
        file = directory / f"{split}.{name}.npy"
        tmp = file.with_name(file.name + ".tmp")
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to the temp name
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, file)
        fields[name] = {"file": file.name, "dtype": array.dtype.str, "shape": list(array.shape),
                        "bytes": file.stat().st_size, "crc32": block_crcs(file)}
    return {"rows": len(next(iter(arrays.values()))), "fields": fields}


def open_rows(directory: Path, record: dict) -> dict[str, np.ndarray]:
    """One split's arrays as read-only memory maps, after checking each file against ``record``."""
    out = {}
    for name, field in record["fields"].items():
        path = directory / field["file"]
        fix = f"delete {directory} and rerun jaxlm data prepare"
        size = path.stat().st_size if path.is_file() else None
        if size != field["bytes"]:
            raise DataError(f"{path} is {'missing' if size is None else f'{size} bytes'}, the manifest says "
                            f"{field['bytes']}; {fix}")
        bad = [b for b, (got, want) in enumerate(zip(block_crcs(path), field["crc32"])) if got != want]
        if bad:
            raise DataError(f"{path} is corrupted (bytes {bad[0] * BLOCK}-{min((bad[0] + 1) * BLOCK, size)} fail "
                            f"their checksum); {fix}")
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.dtype.str != field["dtype"] or list(array.shape) != field["shape"]:
            raise DataError(f"{path} holds {array.dtype} {list(array.shape)}, the manifest says {field['dtype']} "
                            f"{field['shape']}; {fix}")
        out[name] = array
    return out
