"""Classification metrics from a confusion matrix (numpy), matching scikit-learn's definitions.

The eval step sums a ``[true, predicted]`` confusion matrix over batches (exact under
sharding and padding); everything else is computed from it once per evaluation. A class
never predicted has precision 0 and one never present has recall 0 (scikit-learn's
``zero_division=0``).
"""

from __future__ import annotations

import numpy as np


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)


CONFUSION = "confusion_"  # the prefix of the matrix's entries, ``confusion_i_j``


def classification_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy; per-class precision, recall and F1 averaged over classes (``*_macro``); and
    ``precision`` / ``recall`` / ``f1``: of class 1 for two classes (binary), else the macro
    averages. Entry ``confusion_i_j`` counts class ``i`` predicted as ``j``."""
    confusion = np.asarray(confusion, float)
    hits = np.diag(confusion)
    precision = _divide(hits, confusion.sum(0))
    recall = _divide(hits, confusion.sum(1))
    f1 = _divide(2 * precision * recall, precision + recall)
    out = {"accuracy": float(hits.sum() / max(confusion.sum(), 1.0)),
           "precision_macro": float(precision.mean()), "recall_macro": float(recall.mean()),
           "f1_macro": float(f1.mean())}
    if len(confusion) == 2:
        out.update(precision=float(precision[1]), recall=float(recall[1]), f1=float(f1[1]))
    else:
        out.update(precision=out["precision_macro"], recall=out["recall_macro"], f1=out["f1_macro"])
    n = len(confusion)
    out.update({f"{CONFUSION}{i}_{j}": float(confusion[i, j]) for i in range(n) for j in range(n)})
    return out
