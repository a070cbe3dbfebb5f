"""``jaxlm embed``: the embeddings of texts or images under a trained encoder, written as NumPy /
JSON Lines or drawn in two dimensions (scikit-learn's t-SNE or PCA, matplotlib).

The embedding is the model's pooled representation: a contrastive run's ``last_hidden_state``
(before its projection head), or for other runs the first token (``cls``) or the mean of the
real tokens (``mean``) of the last hidden states.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from jaxlm.data.images import BUILTIN, load_images, normalize
from jaxlm.errors import JaxlmError

_RANGE = re.compile(r"^(\w+):(\d+)-(\d+)$")


def expand_inputs(specs: list[str]) -> list[str]:
    """``digits:0-99`` stands for ``digits:0`` ... ``digits:99`` (end included)."""
    out = []
    for spec in specs:
        m = _RANGE.match(spec)
        if m and m.group(1) in BUILTIN:
            start, end = int(m.group(2)), int(m.group(3))
            if end < start:
                raise JaxlmError(f"{spec!r}: the range's end is before its start")
            out += [f"{m.group(1)}:{i}" for i in range(start, end + 1)]
        else:
            out.append(spec)
    return out


def builtin_labels(specs: list[str]) -> list[str] | None:
    """The class names of ``digits:INDEX`` / ``shapes:INDEX`` inputs (None unless all are such)."""
    names = {s.partition(":")[0] for s in specs}
    if not specs or not names <= set(BUILTIN) or not all(s.partition(":")[2].isdigit() for s in specs):
        return None
    sets = {n: load_images(n) for n in names}
    out = []
    for s in specs:
        name, _, index = s.partition(":")
        images = sets[name]
        if int(index) >= len(images.labels):
            raise JaxlmError(f"{s!r}: the index must be 0..{len(images.labels) - 1}")
        label = images.labels[int(index)]
        out.append(images.class_names[label] if images.class_names else str(label))
    return out


def read_labels(values: list[str] | None, count: int) -> list[str] | None:
    """``--labels``: one per input, or a single file holding one per line."""
    if not values:
        return None
    if len(values) == 1 and Path(values[0]).is_file():
        values = [line.strip() for line in Path(values[0]).read_text().splitlines() if line.strip()]
    if len(values) != count:
        raise JaxlmError(f"--labels gives {len(values)} labels for {count} inputs; give one per input (or a file "
                         "with one per line)")
    return values


def embed(model, params, config, tokenizer, inputs: list[str], pooling: str = "cls", batch_size: int = 64
          ) -> np.ndarray:
    """``[len(inputs), features]`` float32 embeddings of texts or image specs."""
    import jax.numpy as jnp

    from jaxlm.models.contrastive import pool

    c = model.config
    images = "pixel_values" in c.dummy_inputs()
    out = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        if images:
            from jaxlm.tasks.image_classification import image_of

            mean, std = _normalization(config)
            batch = {"pixel_values": normalize(np.stack([image_of(s, model) for s in chunk]), mean, std)}
        else:
            batch = _text_inputs(c, tokenizer, chunk)
        result = model.apply({"params": params}, **batch)
        hidden = result.last_hidden_state
        out.append(np.asarray(pool(hidden, batch.get("attention_mask"), pooling).astype(jnp.float32)))
    return np.concatenate(out)


def _normalization(config) -> tuple[list[float], list[float]]:
    task = getattr(config, "task", None)
    if task is not None and hasattr(task, "mean"):
        return task.mean, task.std
    return [0.5], [0.5]


def _text_inputs(model_config, tokenizer, texts: list[str]) -> dict:
    import jax.numpy as jnp

    from jaxlm.data.bert_inputs import frame_texts
    from jaxlm.tasks.encoder import framer

    if tokenizer is None:
        raise JaxlmError("this run has no tokenizer; give images (digits:INDEX, shapes:INDEX or files) instead")
    ids = tokenizer.encode_batch(texts)
    length = min(model_config.max_positions or 512, max(len(i) for i in ids) + 2)
    rows, _ = frame_texts(ids, None, framer(tokenizer, length))
    keep = ("input_ids", "attention_mask") + (("token_type_ids",) if hasattr(model_config, "type_vocab_size") else ())
    return {k: jnp.asarray(rows[k]) for k in keep}


def write_embeddings(path: Path, inputs: list[str], vectors: np.ndarray, labels: list[str] | None) -> None:
    """``.npy`` (the matrix) or ``.jsonl`` (input, label, embedding per line), written under a
    temporary name and renamed, so no half-written file is left behind."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if path.suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, vectors)
        elif path.suffix == ".jsonl":
            with open(tmp, "w") as f:
                for i, (text, v) in enumerate(zip(inputs, vectors)):
                    row = {"input": text, **({"label": labels[i]} if labels else {}), "embedding": v.tolist()}
                    f.write(json.dumps(row) + "\n")
        else:
            raise JaxlmError(f"--out {path}: write embeddings to a .npy or .jsonl file (or add --plot for a figure)")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def plot(vectors: np.ndarray, labels: list[str] | None, method: str, path: Path, title: str, seed: int = 0,
         names: list[str] | None = None) -> None:
    """A 2-D scatter of ``vectors`` by t-SNE or PCA, one colour per label (``names``: written
    beside each point, e.g. words), saved to ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise JaxlmError("--plot draws with matplotlib, which is not installed: pip install 'jaxlm[plot]'") from None
    if len(vectors) < 3:
        raise JaxlmError(f"--plot needs at least 3 inputs, got {len(vectors)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        points = PCA(n_components=2, random_state=seed).fit_transform(vectors)
    else:
        from sklearn.manifold import TSNE

        points = TSNE(n_components=2, perplexity=min(30.0, (len(vectors) - 1) / 3), random_state=seed,
                      init="pca").fit_transform(vectors)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    if labels:
        names = sorted(set(labels), key=lambda n: (len(n), n))
        cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
        for k, name in enumerate(names):
            rows = [i for i, label in enumerate(labels) if label == name]
            ax.scatter(points[rows, 0], points[rows, 1], s=8, color=cmap(k % cmap.N), label=name)
        ax.legend(markerscale=2, fontsize=8, loc="best")
    else:
        ax.scatter(points[:, 0], points[:, 1], s=8)
    for (x, y), name in zip(points, names or []):
        ax.annotate(name, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        fig.savefig(tmp)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
