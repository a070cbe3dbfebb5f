"""Contrastive losses over a batch of embeddings, as per-anchor (or per-pair) losses with weights,
so a task sums them and the step divides by the total weight once (exact under sharding and
padding: rows with ``valid`` False are neither anchors nor negatives).

- :func:`ntxent`: NT-Xent (SimCLR) over views labelled by ``labels`` (same label = positive); one
  term per (anchor, positive) pair against that positive and every negative, as ``optax.ntxent``
  (written here because optax's takes no padding mask and no negative subsampling).
- :func:`info_nce`: one-directional InfoNCE of queries against keys (SimCSE: the i-th key is the
  i-th query's positive, the other keys its negatives).
- :func:`triplet`: the triplet loss with batch-hard (Hermans et al., 2017) or semi-hard
  (Schroff et al., 2015) mining; the mined triplets go through ``optax.triplet_margin_loss``.
- :func:`margin_contrastive`: Hadsell, Chopra & LeCun (2006) over all pairs of the batch.

Embeddings are compared by cosine similarity (NT-Xent / InfoNCE) or by Euclidean distance
(triplet / margin; normalise them first for a bounded scale).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

NEG_INF = -1e9  # a finite "minus infinity": masked logits then give exact zeros, never NaN gradients


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def pairwise_distances(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Euclidean distances ``[n, n]``; the square root of ``max(d^2, eps)`` keeps gradients finite at 0."""
    x = x.astype(jnp.float32)
    sq = jnp.sum((x[:, None] - x[None]) ** 2, -1)
    return jnp.sqrt(jnp.maximum(sq, eps))


def _pair_masks(labels: jax.Array, valid: jax.Array):
    same = labels[:, None] == labels[None]
    both = valid[:, None] & valid[None]
    eye = jnp.eye(len(labels), dtype=bool)
    return same & both & ~eye, ~same & both


def sample_negatives(negatives: jax.Array, num: int | None, key) -> jax.Array:
    """``negatives`` ``[n, n]`` thinned to ``num`` random ones per row (all when ``num`` is None)."""
    if num is None:
        return negatives
    scores = jnp.where(negatives, jax.random.uniform(key, negatives.shape), -1.0)
    kth = jnp.sort(scores, axis=1)[:, -num][:, None]
    return negatives & (scores >= kth)


def ntxent(embeddings: jax.Array, labels: jax.Array, valid: jax.Array, temperature: float,
           num_negatives: int | None = None, key=None) -> tuple[jax.Array, jax.Array]:
    """Summed NT-Xent over every (anchor, positive) pair and the number of pairs.

    With two views per example labelled by the example, this is SimCLR's loss (each of the 2N
    views against its other view and the 2N - 2 others); with class labels it also treats
    same-class views as positives, as ``optax.ntxent`` does.
    """
    z = l2_normalize(embeddings)
    logits = (z @ z.T) / temperature
    positives, negatives = _pair_masks(labels, valid)
    negatives = sample_negatives(negatives, num_negatives, key)
    neg_lse = jax.nn.logsumexp(jnp.where(negatives, logits, NEG_INF), axis=1, keepdims=True)
    # -log(e^{s_ap} / (e^{s_ap} + sum_n e^{s_an})) = logaddexp(s_ap, lse_n) - s_ap
    per_pair = jnp.logaddexp(logits, neg_lse) - logits
    return jnp.sum(jnp.where(positives, per_pair, 0.0)), jnp.sum(positives).astype(jnp.float32)


def info_nce(queries: jax.Array, keys: jax.Array, valid: jax.Array, temperature: float,
             num_negatives: int | None = None, key=None) -> tuple[jax.Array, jax.Array]:
    """Summed InfoNCE of each valid query against its own key (the positive) and the other valid
    keys (the negatives), and the number of valid queries."""
    logits = (l2_normalize(queries) @ l2_normalize(keys).T) / temperature
    eye = jnp.eye(len(queries), dtype=bool)
    negatives = sample_negatives(~eye & valid[:, None] & valid[None], num_negatives, key)
    logits = jnp.where(negatives | eye, logits, NEG_INF)
    per = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(len(queries)))
    return jnp.sum(jnp.where(valid, per, 0.0)), jnp.sum(valid).astype(jnp.float32)


def mine_triplets(distances: jax.Array, labels: jax.Array, valid: jax.Array, mining: str):
    """``(anchor, positive, negative)`` index arrays and each triplet's weight (0: no triplet).

    batch_hard: one triplet per anchor, its farthest positive and nearest negative.
    semi_hard: one triplet per (anchor, positive) pair (flattened ``[n * n]``), with the nearest
    negative farther than the positive; if there is none, the farthest negative (as TF-Addons'
    ``triplet_semihard_loss``).
    """
    positives, negatives = _pair_masks(labels, valid)
    n = len(labels)
    if mining == "batch_hard":
        pos = jnp.argmax(jnp.where(positives, distances, -jnp.inf), 1)
        neg = jnp.argmin(jnp.where(negatives, distances, jnp.inf), 1)
        weight = positives.any(1) & negatives.any(1)
        return jnp.arange(n), pos, neg, weight.astype(jnp.float32)
    d_ap = distances[:, :, None]  # [anchor, positive, negative]
    d_an = distances[:, None, :]
    farther = negatives[:, None, :] & (d_an > d_ap)
    nearest_farther = jnp.argmin(jnp.where(farther, d_an, jnp.inf), 2)
    farthest = jnp.argmax(jnp.where(negatives, distances, -jnp.inf), 1)
    neg = jnp.where(farther.any(2), nearest_farther, farthest[:, None])
    weight = positives & negatives.any(1)[:, None]
    anchor, pos = jnp.meshgrid(jnp.arange(n), jnp.arange(n), indexing="ij")
    return anchor.ravel(), pos.ravel(), neg.ravel(), weight.ravel().astype(jnp.float32)


def triplet(embeddings: jax.Array, labels: jax.Array, valid: jax.Array, margin: float,
            mining: str = "batch_hard") -> tuple[jax.Array, jax.Array]:
    """Summed triplet hinge ``max(0, d(a, p) - d(a, n) + margin)`` over the mined triplets, and
    their number. The mining is non-differentiable (indices); the distances are."""
    x = embeddings.astype(jnp.float32)
    a, p, n, weight = mine_triplets(jax.lax.stop_gradient(pairwise_distances(x)), labels, valid, mining)
    per = optax.losses.triplet_margin_loss(x[a], x[p], x[n], margin=margin)
    return jnp.sum(per * weight), jnp.sum(weight)


def margin_contrastive(embeddings: jax.Array, labels: jax.Array, valid: jax.Array,
                       margin: float) -> tuple[jax.Array, jax.Array]:
    """Hadsell et al.'s loss over all pairs ``i < j``: ``d^2 / 2`` for similar pairs (same label),
    ``max(0, margin - d)^2 / 2`` for dissimilar ones; summed, and the number of pairs."""
    d = pairwise_distances(embeddings)
    positives, negatives = _pair_masks(labels, valid)
    upper = jnp.triu(jnp.ones_like(positives), 1)
    per = jnp.where(positives, 0.5 * d**2, 0.5 * jnp.maximum(margin - d, 0.0) ** 2)
    pairs = (positives | negatives) & upper
    return jnp.sum(jnp.where(pairs, per, 0.0)), jnp.sum(pairs).astype(jnp.float32)


def alignment_uniformity(a: jax.Array, b: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """Sums for Wang & Isola's (2020) measures on normalised embeddings of positive pairs
    ``(a_i, b_i)``: alignment ``E ||a - b||^2`` and uniformity ``log E exp(-2 ||x - y||^2)`` over
    the distinct pairs of ``a`` (summed per batch as its mean exp term, so the eval averages
    batches); and ``top1``: how often ``b_i`` is the nearest ``b`` to ``a_i``."""
    a, b = l2_normalize(a), l2_normalize(b)
    w = valid.astype(jnp.float32)
    align = jnp.sum(jnp.sum((a - b) ** 2, -1) * w)
    sq = jnp.sum((a[:, None] - a[None]) ** 2, -1)
    distinct = valid[:, None] & valid[None] & ~jnp.eye(len(a), dtype=bool)
    mean_exp = jnp.sum(jnp.where(distinct, jnp.exp(-2 * sq), 0.0)) / jnp.maximum(jnp.sum(distinct), 1)
    sims = jnp.where(valid[None], a @ b.T, -jnp.inf)
    top1 = jnp.sum((jnp.argmax(sims, 1) == jnp.arange(len(a))) * w)
    return {"alignment": align, "uniformity_exp": mean_exp * (jnp.sum(distinct) > 0), "top1": top1,
            "pairs": jnp.sum(w), "batches": (jnp.sum(distinct) > 0).astype(jnp.float32)}
