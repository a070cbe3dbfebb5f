"""Decoding with a preallocated KV cache: greedy, sampling and beam search in one jit-compiled loop.

``jaxlm.generate(model, params, input_ids, attention_mask=None, **options)`` (this module's :func:`generate`,
also ``jaxlm.generation.generate``) returns
``[batch, prompt + max_new_tokens]`` token ids; ``generate_stream`` yields the same tokens
chunk by chunk (greedy and sampling). The options are transformers' ``generate`` options with
its defaults (:class:`GenerationOptions`), and their semantics are transformers' too, so that
the same weights give the same tokens: its logits processors in its order (repetition penalty;
then, when sampling, temperature, top-k, top-p) and its beam search (``2 * num_beams``
candidates per step, finished hypotheses scored ``sum log p / length ** length_penalty``,
``early_stopping`` True / False / "never"). Rows that finish early are filled with
``pad_token_id`` up to the full length, where transformers would crop to the longest row.

Prompts are left-padded (``attention_mask`` 0 on the left); positions count real tokens only,
so a padded prompt decodes like the same prompt unpadded.

Encoder-decoder models (the ``seq2seq`` head) run the same loops: ``input_ids`` is the
right-padded source, encoded once (the encoder output rides along in the loop state), and the
decoder starts from ``decoder_start_token_id`` with its own cache (self-attention keys and
values, cross-attention ones computed once; an LSTM's state). They return
``[batch, 1 + max_new_tokens]`` decoder tokens, the start token first, as transformers does. Everything that shapes the compiled
program (shapes, ``max_new_tokens``, ``do_sample``, ``num_beams``, ``top_k``, whether top-p and
the repetition penalty are on, ``early_stopping``, the number of eos ids) is static; the other
values (temperature, top_p, penalties, seed, eos / pad ids) are traced, so calls that differ only
in those reuse the compiled loop. The loop stops early once every row has finished.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from functools import partial
from typing import Any, Iterator, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import JaxlmError
from jaxlm.models import head_of

NEG = -1.0e9  # transformers' "never pick this" score in beam search


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """The options of :func:`generate`, named and defaulted as in transformers' ``GenerationConfig``."""

    max_new_tokens: int = 32
    do_sample: bool = False
    """Sample from the processed distribution instead of taking its argmax (or beam search's top scores)."""
    temperature: float = 1.0
    """Sampling only: divides the logits."""
    top_k: int = 50
    """Sampling only: keep the ``top_k`` most likely tokens (ties with the last included); 0 turns it off."""
    top_p: float = 1.0
    """Sampling only: keep the smallest set of most likely tokens whose probability reaches ``top_p``."""
    repetition_penalty: float = 1.0
    """Scores of tokens already in the row (prompt or generated): negative ones multiplied, positive divided."""
    num_beams: int = 1
    length_penalty: float = 1.0
    """Beam search: a finished hypothesis scores ``sum log p / new_tokens ** length_penalty``."""
    early_stopping: bool | Literal["never"] = False
    """Beam search: True stops a row once ``num_beams`` hypotheses finished; False stops when the
    best running beam (scored at its current length) cannot beat them; "never" when it could not
    at any length."""
    eos_token_id: int | Sequence[int] | None = None
    """A row stops after emitting one of these."""
    pad_token_id: int | None = None
    """Fills a row after it stopped; defaults to the (first) eos id, else 0."""
    seed: int = 0
    """Seeds sampling; the same seed, inputs and options give the same tokens."""
    num_return_sequences: int = 1
    """Sequences returned per prompt, prompt by prompt (row ``i * n + j`` is prompt i's j-th): beam search's
    ``n`` best hypotheses (``n <= num_beams``), or ``n`` independent samples."""
    decoder_start_token_id: int | None = None
    """Encoder-decoder models: the decoder's first token (required for them)."""
    prompt_lookup_num_tokens: int | None = None
    """Greedy decoding only: prompt lookup decoding (transformers' option of this name). Each step proposes up
    to this many tokens, those that followed the latest n-gram's earliest earlier occurrence in the row, and one
    forward pass checks them all; the tokens are exactly greedy decoding's, but a step may write several."""
    max_matching_ngram_size: int = 2
    """Prompt lookup: the longest n-gram matched (shorter ones are tried where it has no earlier occurrence)."""

    def __post_init__(self):
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise JaxlmError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not _is_int(self.num_beams) or self.num_beams < 1:
            raise JaxlmError(f"num_beams must be an integer >= 1, got {self.num_beams!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise JaxlmError(f"top_k must be an integer >= 0 (0 turns it off), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise JaxlmError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.do_sample and not self.temperature > 0:
            raise JaxlmError(f"temperature must be > 0 when sampling, got {self.temperature!r}; for greedy decoding "
                             "set do_sample=False")
        if not self.repetition_penalty > 0:
            raise JaxlmError(f"repetition_penalty must be > 0 (1.0 turns it off), got {self.repetition_penalty!r}")
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise JaxlmError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        n = self.num_return_sequences
        if not _is_int(n) or n < 1:
            raise JaxlmError(f"num_return_sequences must be a positive integer, got {n!r}")
        if n > 1 and self.num_beams == 1 and not self.do_sample:
            raise JaxlmError(f"greedy decoding returns one sequence per prompt, not num_return_sequences={n}; "
                             f"set do_sample=True or num_beams >= {n}")
        if self.num_beams > 1 and n > self.num_beams:
            raise JaxlmError(f"beam search keeps num_beams={self.num_beams} hypotheses per prompt, fewer than "
                             f"num_return_sequences={n}; raise num_beams to at least {n}")
        if not _is_int(self.seed):
            raise JaxlmError(f"seed must be an integer, got {self.seed!r}")
        if self.decoder_start_token_id is not None and not _is_int(self.decoder_start_token_id):
            raise JaxlmError(f"decoder_start_token_id must be an integer, got {self.decoder_start_token_id!r}")
        lookup = self.prompt_lookup_num_tokens
        if lookup is not None:
            if not _is_int(lookup) or lookup < 1:
                raise JaxlmError(f"prompt_lookup_num_tokens must be a positive integer (None turns it off), got "
                                 f"{lookup!r}")
            if not _is_int(self.max_matching_ngram_size) or self.max_matching_ngram_size < 1:
                raise JaxlmError(f"max_matching_ngram_size must be a positive integer, got "
                                 f"{self.max_matching_ngram_size!r}")
            if self.do_sample or self.num_beams > 1:
                raise JaxlmError("prompt_lookup_num_tokens speeds up greedy decoding only; drop it, or set "
                                 "do_sample=False and num_beams=1")
        if not all(_is_int(i) for i in self.eos_ids) or not _is_int(self.pad):
            raise JaxlmError(f"eos_token_id and pad_token_id must be integers, got {self.eos_token_id!r} and "
                             f"{self.pad_token_id!r}")

    @property
    def eos_ids(self) -> tuple[int, ...]:
        e = self.eos_token_id
        return () if e is None else tuple(e) if isinstance(e, (list, tuple)) else (e,)

    @property
    def pad(self) -> int:
        return self.pad_token_id if self.pad_token_id is not None else (self.eos_ids or (0,))[0]

    def plan(self, vocab_size: int) -> _Plan:
        beam = self.num_beams > 1
        # transformers keeps at least n_eos + 1 tokens per beam when beam sampling (2 without eos)
        min_keep = max(2, len(self.eos_ids) + 1) if beam else 1
        return _Plan(
            max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=bool(self.do_sample),
            top_k=min(max(self.top_k, min_keep), vocab_size) if self.do_sample and self.top_k else 0,
            top_p=bool(self.do_sample and self.top_p < 1), min_keep=min_keep,
            repetition_penalty=self.repetition_penalty != 1, early_stopping=self.early_stopping if beam else False,
            lookahead=self.prompt_lookup_num_tokens or 0,
            ngram=self.max_matching_ngram_size if self.prompt_lookup_num_tokens else 0)

    def knobs(self) -> _Knobs:
        # transformers divides float32 scores by Python floats (float64 math, rounded to float32): so do we.
        divisor = np.float32([float(n) ** self.length_penalty for n in range(1, self.max_new_tokens + 1)])
        best = divisor
        if self.early_stopping == "never" and self.length_penalty > 0:  # the best running score, at max length
            best = np.full_like(divisor, divisor[-1])
        return _Knobs(key=jax.random.PRNGKey(self.seed), temperature=np.float32(self.temperature),
                      top_p_floor=np.float32(1 - self.top_p), repetition_penalty=np.float32(self.repetition_penalty),
                      length_divisor=divisor, best_divisor=best, eos=np.int32(self.eos_ids).reshape(-1),
                      pad=np.int32(self.pad), start=np.int32(self.decoder_start_token_id or 0))


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything that shapes the compiled loop: a change here compiles a new one."""

    max_new_tokens: int
    num_beams: int
    do_sample: bool
    top_k: int  # 0: off; else already clamped to [min_keep, vocab]
    top_p: bool
    min_keep: int
    repetition_penalty: bool
    early_stopping: bool | str
    lookahead: int = 0  # prompt lookup: the tokens proposed per step (0: off); the buffers have this many more
    ngram: int = 0  # prompt lookup: the longest n-gram matched

    def prompt_length(self, tokens: jax.Array) -> int:
        """The prompt's length in a ``[rows, prompt + max_new_tokens + lookahead]`` token buffer."""
        return tokens.shape[1] - self.max_new_tokens - self.lookahead


class _Knobs(NamedTuple):
    """Traced option values: changing them reuses the compiled loop."""

    key: jax.Array
    temperature: np.ndarray
    top_p_floor: np.ndarray  # 1 - top_p: sorted tokens whose cumulative probability stays <= this are dropped
    repetition_penalty: np.ndarray
    length_divisor: np.ndarray  # [max_new_tokens]: (n + 1) ** length_penalty for n + 1 new tokens
    best_divisor: np.ndarray  # the same for the early-stopping estimate of the best running beam
    eos: np.ndarray  # [n_eos]
    pad: np.ndarray
    start: np.ndarray  # encoder-decoder models: the decoder's first token


class _Beams(NamedTuple):
    scores: jax.Array  # [batch, beams] running beams' summed log-probs, best first
    tokens: jax.Array  # [batch, beams, total] finished hypotheses, best first
    finished_scores: jax.Array  # [batch, beams] their length-penalised scores (NEG: empty slot)
    finished: jax.Array  # [batch, beams] which slots hold a finished hypothesis
    improvable: jax.Array  # [batch, 1] may a running beam still beat the finished ones?


class _State(NamedTuple):
    step: jax.Array  # new tokens written so far
    passes: jax.Array  # the loop's forward passes so far (fewer than ``step`` where prompt lookup kept several)
    halt: jax.Array  # nothing can change any more (every row finished)
    tokens: jax.Array  # [rows, total]: prompt, new tokens, pad (and lookahead slots); rows = batch * num_beams
    cache: Any
    first: jax.Array  # [rows] index of the first real prompt token (left padding before it)
    done: jax.Array | None  # [batch] greedy / sampling: rows that emitted eos
    beams: _Beams | None
    encoded: Any = None  # encoder-decoder models: the encoder's output for each row


def init_cache(model, batch: int, length: int):
    """A zeroed KV cache for ``length`` total tokens (prompt + new), after the ``cache_offset`` slots
    a parameter-efficient model fills first (its virtual tokens or prefix)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((batch, length), jnp.int32),
                                               decode=True))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def _offset(model) -> int:
    """Cache slots before the first token: a prompt- or prefix-tuned model's virtual tokens (0 otherwise)."""
    return getattr(model, "cache_offset", 0)


def _cache_batch_axis(model) -> int:
    """Where the batch is in the cache's K/V arrays: after the layer axis when layers are scanned
    (``model.scan_layers``; the write index is then one per layer, ``[layers]``, left as is)."""
    return 1 if model.config.scan_layers else 0


def _mask(first, total: int) -> jax.Array:
    return (jnp.arange(total)[None, :] >= first[:, None]).astype(jnp.int32)


def _process(scores, tokens, first, length, plan: _Plan, knobs: _Knobs) -> jax.Array:
    """transformers' logits processors, in its order, on ``[rows, vocab]`` float32 scores.

    ``tokens[:, first:length]`` are the row's tokens so far (the repetition penalty's memory).
    """
    if plan.repetition_penalty:
        rows, vocab = scores.shape
        position = jnp.arange(tokens.shape[1])[None, :]
        seen = jnp.where((position >= first[:, None]) & (position < length), tokens, vocab)  # vocab: ignored
        seen = jnp.zeros((rows, vocab + 1), bool).at[jnp.arange(rows)[:, None], seen].set(True)[:, :vocab]
        p = knobs.repetition_penalty
        scores = jnp.where(seen, jnp.where(scores < 0, scores * p, scores / p), scores)
    if plan.do_sample:
        scores = scores / knobs.temperature
        if plan.top_k:
            kth = jax.lax.top_k(scores, plan.top_k)[0][:, -1:]
            scores = jnp.where(scores < kth, -jnp.inf, scores)
        if plan.top_p:
            ascending = jnp.sort(scores, axis=-1)
            dropped = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1) <= knobs.top_p_floor
            dropped = dropped.at[:, -plan.min_keep:].set(False)
            # The dropped tokens are a prefix of the ascending order: keep everything from its end up
            # (tokens tied with the smallest kept one stay, where transformers' unstable sort may drop some).
            smallest_kept = jnp.take_along_axis(ascending, dropped.sum(-1, keepdims=True), axis=-1)
            scores = jnp.where(scores < smallest_kept, -jnp.inf, scores)
    return scores


def _forward(model, params, s: _State, index, count: int = 1):
    """Feed ``tokens[:, index:index + count]`` (their K/V land in the cache): the logits after each,
    ``[rows, count, vocab]`` float32, and the cache."""
    fed = jax.lax.dynamic_slice_in_dim(s.tokens, index, count, axis=1)
    if s.encoded is not None:
        out, variables = model.apply({"params": params, "cache": s.cache}, fed, s.encoded, decode=True,
                                     mutable=["cache"], method="decode")
        return out.logits.astype(jnp.float32), variables["cache"]
    positions = (index - s.first)[:, None] + jnp.arange(count)
    if model.config.max_positions:  # lookahead slots past the last position: any real one (their logits are unused)
        positions = jnp.minimum(positions, model.config.max_positions - 1 - _offset(model))
    out, variables = model.apply({"params": params, "cache": s.cache}, fed,
                                 attention_mask=_mask(s.first, s.tokens.shape[1]), position_ids=positions,
                                 decode=True, mutable=["cache"])
    return out.logits.astype(jnp.float32), variables["cache"]


def _is_eos(token, knobs: _Knobs) -> jax.Array:
    return jnp.any(token[..., None] == knobs.eos, axis=-1)


def _token_step(model, params, plan: _Plan, knobs: _Knobs, s: _State) -> _State:
    """Greedy / sampling: one token per row (transformers' ``_sample``)."""
    prompt, i = plan.prompt_length(s.tokens), s.step
    logits, cache = _forward(model, params, s, prompt - 1 + i)
    scores = _process(logits[:, -1], s.tokens, s.first, prompt + i, plan, knobs)
    if plan.do_sample:
        token = jax.random.categorical(jax.random.fold_in(knobs.key, i), scores)
    else:
        token = jnp.argmax(scores, axis=-1)
    token = jnp.where(s.done, knobs.pad, token).astype(s.tokens.dtype)
    done = s.done | _is_eos(token, knobs)
    tokens = jax.lax.dynamic_update_slice(s.tokens, token[:, None], (0, prompt + i))
    return s._replace(step=i + 1, halt=jnp.all(done), tokens=tokens, cache=cache, done=done)


def _beam_step(model, params, plan: _Plan, knobs: _Knobs, s: _State) -> _State:
    """One step of transformers' vectorised ``_beam_search`` (its steps b-g, same float32 arithmetic)."""
    b = s.beams
    batch, beams = b.scores.shape
    total = s.tokens.shape[1]
    prompt, i = total - plan.max_new_tokens, s.step
    logits, cache = _forward(model, params, s, prompt - 1 + i)
    log_probs = _process(jax.nn.log_softmax(logits[:, -1]), s.tokens, s.first, prompt + i, plan, knobs)
    vocab = log_probs.shape[-1]
    scores = (log_probs.reshape(batch, beams, vocab) + b.scores[..., None]).reshape(batch, beams * vocab)

    # c. the top (1 + n_eos, at least 2) * num_beams continuations, or as many sampled without replacement
    n = max(2, 1 + knobs.eos.shape[0]) * beams
    if plan.do_sample:  # Gumbel top-k: ordered sampling without replacement, like torch.multinomial
        _, index = jax.lax.top_k(scores + jax.random.gumbel(jax.random.fold_in(knobs.key, i), scores.shape), n)
        candidate_scores = jnp.take_along_axis(scores, index, axis=-1)
    else:
        candidate_scores, index = jax.lax.top_k(scores, n)
    source, token = index // vocab, (index % vocab).astype(s.tokens.dtype)
    candidates = jnp.take_along_axis(s.tokens.reshape(batch, beams, total), source[..., None], axis=1)
    candidates = jax.lax.dynamic_update_slice(candidates, token[..., None], (0, 0, prompt + i))
    hits = _is_eos(token, knobs) | (i == plan.max_new_tokens - 1)  # d. finished (eos or max length)

    # e. the best num_beams unfinished candidates run on, with their ancestors' cache
    running_scores, keep = jax.lax.top_k(candidate_scores + hits.astype(jnp.float32) * NEG, beams)
    tokens = jnp.take_along_axis(candidates, keep[..., None], axis=1).reshape(batch * beams, total)
    cache = _inherit(cache, _cache_batch_axis(model), jnp.take_along_axis(source, keep, axis=1),
                     _offset(model) + prompt - 1 + i)

    # f. finished candidates among the top num_beams join the finished hypotheses if they rank
    just_finished = hits & (jnp.arange(n) < beams)
    full = jnp.all(b.finished, axis=-1, keepdims=True) & (plan.early_stopping is True)
    finished_scores = candidate_scores / knobs.length_divisor[i]
    finished_scores += full.astype(jnp.float32) * NEG
    finished_scores += (~b.improvable).astype(jnp.float32) * NEG
    finished_scores += (~just_finished).astype(jnp.float32) * NEG
    finished_scores, pick = jax.lax.top_k(jnp.concatenate([b.finished_scores, finished_scores], axis=1), beams)
    finished_tokens = jnp.take_along_axis(jnp.concatenate([b.tokens, candidates], axis=1), pick[..., None], axis=1)
    finished = jnp.take_along_axis(jnp.concatenate([b.finished, just_finished], axis=1), pick, axis=1)

    # g. can the best running beam still beat the worst finished hypothesis?
    best = running_scores[:, :1] / knobs.best_divisor[i]
    worst = jnp.where(finished, jnp.min(finished_scores, axis=1, keepdims=True), NEG)
    improvable = b.improvable & jnp.any(best > worst, axis=-1, keepdims=True)
    go_on = jnp.any(improvable) & ~(jnp.all(finished) & (plan.early_stopping is True)) & ~jnp.all(hits)
    return s._replace(step=i + 1, halt=~go_on, tokens=tokens, cache=cache,
                      beams=_Beams(running_scores, finished_tokens, finished_scores, finished, improvable))


_SHARED = ("cross_key", "cross_value")  # a prompt's beams read one row of these
_HELD = ("cached_key", "cached_value")  # a row per beam, read by the prompt's beams through their ancestry


def _inherit(cache, axis: int, parent, position):
    """The cache of the beams that descend from ``parent`` ``[batch, beams]`` (a beam of the same prompt),
    whose tokens so far end with the one fed at ``position``: a beam's ancestry is its parent's, with
    position ``position`` held in the parent's row. Attention keys / values stay where they were written
    (:func:`jaxlm.layers.attention.attend_beams`); other per-row state (an LSTM's) is gathered."""
    batch, beams = parent.shape
    origin = (parent + jnp.arange(batch)[:, None] * beams).reshape(-1)

    def inherit(path, x):
        name = getattr(path[-1], "key", None)
        if x.ndim <= axis or name in _SHARED + _HELD:
            return x
        if name == "ancestry":  # [..., batch, beams, length]
            inherited = jnp.take_along_axis(x, jnp.broadcast_to(parent[..., None], x.shape[:-1] + (1,)), axis=-2)
            return jnp.where(jnp.arange(x.shape[-1]) == position, parent[..., None], inherited)
        return jnp.take(x, origin, axis)
    return jax.tree_util.tree_map_with_path(inherit, cache)


def _with_ancestry(cache, axis: int, beams: int):
    """Each attention cache of ``batch * beams`` rows with an ``ancestry`` ``[..., batch, beams, length]``
    where every beam holds its own keys / values: what beam search starts from."""
    if not isinstance(cache, Mapping):
        return cache
    out = {name: _with_ancestry(x, axis, beams) for name, x in cache.items()}
    if _HELD[0] in cache:
        shape = cache[_HELD[0]].shape
        out["ancestry"] = jnp.broadcast_to(jnp.arange(beams, dtype=jnp.int32)[:, None],
                                           (*shape[:axis], shape[axis] // beams, beams, shape[-1]))
    return out


def _lookup_step(model, params, plan: _Plan, knobs: _Knobs, s: _State, stop) -> _State:
    """Greedy decoding by prompt lookup: up to ``lookahead`` proposed tokens fed with the last one; the
    longest run of them that greedy decoding would have chosen is kept, plus the token after it (transformers'
    ``_assisted_decoding`` with its ``PromptLookupCandidateGenerator``). Rows share the cache's write index,
    so each keeps as many tokens as the row that agreed least (rows that finished do not count); the keys and
    values of the rest stay in the cache past its index, unread, until later tokens overwrite them."""
    k, i = plan.lookahead, s.step
    last = plan.prompt_length(s.tokens) - 1 + i  # the last token written, not yet in the cache
    proposed, real = _proposals(s.tokens, s.first, last, plan)
    fed = jax.lax.dynamic_update_slice(s.tokens, proposed, (0, last + 1))
    logits, cache = _forward(model, params, s._replace(tokens=fed), last, 1 + k)
    lengths = last + 1 + jnp.arange(1 + k)  # the row's length when each logit's token is chosen
    scores = jax.vmap(lambda x, n: _process(x, fed, s.first, n, plan, knobs), in_axes=(1, 0), out_axes=1)(
        logits, lengths)
    chosen = jnp.argmax(scores, axis=-1).astype(s.tokens.dtype)  # [rows, 1 + k]: greedy after each fed token
    agreed = jnp.cumprod((chosen[:, :-1] == proposed) & (jnp.arange(k) < real[:, None]), axis=1).sum(1)
    kept = jnp.minimum(jnp.min(jnp.where(s.done, k, agreed)), stop - 1 - i)  # tokens written: kept + 1
    eos = _is_eos(chosen, knobs)
    ended = s.done[:, None] | (jnp.cumsum(eos, axis=1) - eos > 0)  # an eos came before (exclusive)
    written = jnp.arange(1 + k) <= kept
    new = jnp.where(written & ~ended, chosen, knobs.pad)
    done = s.done | jnp.any(written & eos, axis=1)
    tokens = jax.lax.dynamic_update_slice(s.tokens, new, (0, last + 1))
    return s._replace(step=i + kept + 1, halt=jnp.all(done), tokens=tokens, cache=_rewind(cache, _offset(model) + last + 1 + kept),
                      done=done)


def _proposals(tokens, first, last, plan: _Plan) -> tuple[jax.Array, jax.Array]:
    """Prompt lookup's proposals for each row: the ``lookahead`` tokens after the earliest earlier occurrence
    of the row's last n tokens (``n = ngram ... 1``, the longest that occurs), ``[rows, lookahead]``, and how
    many of them are real tokens of the row ``[rows]`` (0 where nothing matched); ``last`` is the last token's
    index."""
    rows, length = tokens.shape
    position = jnp.arange(length)[None, :]
    end = jnp.full((rows,), -1)  # where the chosen occurrence ends
    for n in range(plan.ngram, 0, -1):
        gram = jax.lax.dynamic_slice_in_dim(tokens, last - n + 1, n, axis=1)
        # an occurrence ending at e < last covers tokens e - n + 1 ... e, all real ones
        match = (position < last) & (position >= first[:, None] + n - 1)
        for d in range(n):
            match &= jnp.roll(tokens, d, axis=1) == gram[:, n - 1 - d:n - d]
        end = jnp.where((end < 0) & jnp.any(match, axis=1), jnp.argmax(match, axis=1), end)
    ahead = jnp.arange(plan.lookahead)
    real = jnp.where(end >= 0, jnp.minimum(plan.lookahead, last - end), 0)
    index = jnp.where(ahead < real[:, None], end[:, None] + 1 + ahead, last)  # the rest: the last token (a real id)
    return jnp.take_along_axis(tokens, index, axis=1), real


def _rewind(cache, index):
    """The cache with every attention layer's write index set to ``index``: keys and values past it are
    never read (attention sees positions below the index only) and later tokens overwrite them."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, index) if getattr(path[-1], "key", None) == "index" else x, cache)


@partial(jax.jit, static_argnames=("model", "plan"))
def _prefill(model, params, input_ids, first, plan: _Plan, knobs: _Knobs) -> _State:
    """Cache the prompt's K/V but for its last token, which the first step feeds."""
    batch, prompt = input_ids.shape
    total = prompt + plan.max_new_tokens + plan.lookahead
    tokens = jnp.concatenate([input_ids, jnp.full((batch, total - prompt), knobs.pad, input_ids.dtype)], 1)
    cache = init_cache(model, batch, total)
    if _offset(model):  # the virtual tokens (prompt tuning) go into the cache before the prompt
        cache = model.apply({"params": params, "cache": cache}, batch, total, method="prime_cache",
                            mutable=["cache"])[1]["cache"]
    if prompt > 1:
        positions = jnp.maximum(jnp.arange(prompt - 1)[None, :] - first[:, None], 0)
        _, variables = model.apply({"params": params, "cache": cache}, input_ids[:, :-1],
                                   attention_mask=_mask(first, total), position_ids=positions, decode=True,
                                   mutable=["cache"])
        cache = variables["cache"]
    state = _State(step=jnp.zeros((), jnp.int32), passes=jnp.zeros((), jnp.int32), halt=jnp.zeros((), bool),
                   tokens=tokens, cache=cache, first=first, done=jnp.zeros((batch,), bool), beams=None)
    return _with_beams(model, state, plan)


@partial(jax.jit, static_argnames=("model", "plan"))
def _prefill_seq2seq(model, params, input_ids, attention_mask, plan: _Plan, knobs: _Knobs) -> _State:
    """Encode the sources once and start the decoder's cache (its first call computes the
    cross-attention keys / values, or takes the encoder's final state); the first step feeds the start token."""
    batch = input_ids.shape[0]
    encoded = model.apply({"params": params}, input_ids, attention_mask, method="encode")
    tokens = jnp.concatenate([jnp.full((batch, 1), knobs.start, input_ids.dtype),
                              jnp.full((batch, plan.max_new_tokens), knobs.pad, input_ids.dtype)], axis=1)
    _, variables = model.apply({"params": params}, tokens, encoded, decode=True, mutable=["cache"], method="decode")
    state = _State(step=jnp.zeros((), jnp.int32), passes=jnp.zeros((), jnp.int32), halt=jnp.zeros((), bool),
                   tokens=tokens, cache=variables["cache"], first=jnp.zeros((batch,), jnp.int32),
                   done=jnp.zeros((batch,), bool), beams=None, encoded=encoded)
    return _with_beams(model, state, plan)


def _with_beams(model, state: _State, plan: _Plan) -> _State:
    """Beam search: each row's tokens and cache repeated ``num_beams`` times, but for what all beams of a
    prompt share and only read: the encoder's output and the cross-attention keys / values (the
    attention reads one row of them for all ``num_beams`` rows of queries). Each attention cache gets
    the ancestry that lets its beams read each other's rows (:func:`_with_ancestry`, :func:`_inherit`)."""
    if plan.num_beams == 1:
        return state
    k = plan.num_beams
    batch, total = state.tokens.shape
    tokens, first = jnp.repeat(state.tokens, k, axis=0), jnp.repeat(state.first, k, axis=0)
    axis = _cache_batch_axis(model)
    cache = jax.tree_util.tree_map_with_path(
        lambda path, x: x if x.ndim <= axis or getattr(path[-1], "key", None) in _SHARED else jnp.repeat(x, k, axis),
        state.cache)
    cache = _with_ancestry(cache, axis, k)
    beams = _Beams(scores=jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(NEG),  # only beam 0 may start
                   tokens=tokens.reshape(batch, k, total), finished_scores=jnp.full((batch, k), NEG, jnp.float32),
                   finished=jnp.zeros((batch, k), bool), improvable=jnp.ones((batch, 1), bool))
    return state._replace(tokens=tokens, cache=cache, first=first, done=None, beams=beams)


@partial(jax.jit, static_argnames=("model", "plan"), donate_argnames=("state",))
def _advance(model, params, state: _State, stop, plan: _Plan, knobs: _Knobs) -> _State:
    """Decode until ``stop`` new tokens are written or nothing can change (the cache is updated in place)."""
    step = _beam_step if plan.num_beams > 1 else partial(_lookup_step, stop=stop) if plan.lookahead else _token_step
    return jax.lax.while_loop(lambda s: (s.step < stop) & ~s.halt,
                              lambda s: step(model, params, plan, knobs, s)._replace(passes=s.passes + 1), state)


def _is_seq2seq(model) -> bool:
    return head_of(model) == "seq2seq"


def _prepare(model, input_ids, attention_mask, options: dict):
    """Check inputs and options (one-line :class:`JaxlmError` s): ``(ids, mask, plan, knobs, options)``, the
    prompts repeated ``num_return_sequences`` times when sampling."""
    names = [f.name for f in dataclasses.fields(GenerationOptions)]
    for name in options:
        if name not in names:
            close = difflib.get_close_matches(name, names, 1)
            raise JaxlmError(f"unknown option {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
    opts = GenerationOptions(**options)
    if head_of(model) not in ("causal_lm", "seq2seq"):
        raise JaxlmError(f"{type(model).__name__} is not a causal language model; generate needs one "
                         f"(e.g. GPT2LMHeadModel) or an encoder-decoder (a seq2seq head)")
    if _is_seq2seq(model) and opts.prompt_lookup_num_tokens:
        raise JaxlmError("prompt_lookup_num_tokens needs a decoder-only model; drop it for an encoder-decoder")
    if _is_seq2seq(model) and opts.decoder_start_token_id is None:
        raise JaxlmError("an encoder-decoder needs decoder_start_token_id (the id of <s>, say) to start decoding")
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise JaxlmError(f"input_ids must be a non-empty [batch, length] integer array, got shape "
                         f"{ids.shape} of {ids.dtype}")
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
        raise JaxlmError(f"attention_mask must be 0/1 of input_ids' shape {ids.shape}, got {mask.shape}")
    if _is_seq2seq(model) and ((np.diff(mask, axis=1) > 0).any() or not mask[:, 0].all()):
        raise JaxlmError("sources must be right-padded (attention_mask 1s, at least one, then 0s, per row)")
    if not _is_seq2seq(model) and ((np.diff(mask, axis=1) < 0).any() or not mask[:, -1].all()):
        raise JaxlmError("prompts must be left-padded (attention_mask 0s, then at least one 1, per row)")
    vocab = model.config.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
        bad = ids.min() if ids.min() < 0 else ids.max()
        raise JaxlmError(f"input_ids must be in [0, {vocab}) (the model's vocab_size), found {bad}")
    limit = model.config.max_positions and model.config.max_positions - _offset(model)
    if limit is not None and _is_seq2seq(model) and max(ids.shape[1], 1 + opts.max_new_tokens) > limit:
        raise JaxlmError(f"the source ({ids.shape[1]} tokens) or 1 + max_new_tokens ({opts.max_new_tokens}) exceeds "
                         f"the model's {limit} positions; shorten the source or lower max_new_tokens")
    if limit is not None and not _is_seq2seq(model) and ids.shape[1] + opts.max_new_tokens > limit:
        raise JaxlmError(f"prompt ({ids.shape[1]} tokens) + max_new_tokens ({opts.max_new_tokens}) exceeds "
                         f"the model's {limit} positions; shorten the prompt or lower max_new_tokens")
    if opts.num_beams == 1:  # independent samples: each prompt repeated, as transformers expands them
        ids, mask = (np.repeat(a, opts.num_return_sequences, axis=0) for a in (ids, mask))
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), opts.plan(vocab), opts.knobs(), opts


def _start(model, params, ids, mask, plan: _Plan, knobs: _Knobs) -> _State:
    if _is_seq2seq(model):
        return _prefill_seq2seq(model, params, ids, mask, plan, knobs)
    return _prefill(model, params, ids, ids.shape[1] - mask.sum(1), plan, knobs)


def generate(model, params, input_ids, attention_mask=None, **options) -> jax.Array:
    """Continue left-padded prompts: ``[batch, prompt]`` -> ``[batch, prompt + max_new_tokens]`` token ids.

    ``options`` are :class:`GenerationOptions` (transformers' names and defaults): greedy by default,
    ``do_sample`` with ``temperature`` / ``top_k`` / ``top_p``, ``repetition_penalty``, beam search with
    ``num_beams`` / ``length_penalty`` / ``early_stopping``, ``eos_token_id`` / ``pad_token_id``, ``seed``.
    Beam search returns each prompt's best hypothesis, or its ``num_return_sequences`` best (several samples
    per prompt likewise), as consecutive rows. After a row's eos the rest of it is ``pad_token_id``.
    """
    ids, mask, plan, knobs, opts = _prepare(model, input_ids, attention_mask, options)
    state = _advance(model, params, _start(model, params, ids, mask, plan, knobs), plan.max_new_tokens, plan, knobs)
    return _sequences(state, opts.num_return_sequences, plan)


def decode_seq2seq(model, params, input_ids: jax.Array, attention_mask: jax.Array,
                   options: GenerationOptions) -> jax.Array:
    """:func:`generate` for an encoder-decoder, traceable (no checks on the arrays' values), so
    that a jitted eval step can decode: ``[batch, 1 + max_new_tokens]`` decoder tokens."""
    plan, knobs = options.plan(model.config.vocab_size), options.knobs()
    state = _prefill_seq2seq(model, params, input_ids, attention_mask, plan, knobs)
    state = _advance(model, params, state, plan.max_new_tokens, plan, knobs)
    return _sequences(state, 1, plan)


def _sequences(state: _State, n: int, plan: _Plan) -> jax.Array:
    """The decoded rows: each prompt's best ``n`` finished hypotheses (best first) after beam search."""
    if state.beams is None:
        return state.tokens[:, :state.tokens.shape[1] - plan.lookahead]
    return state.beams.tokens[:, :n].reshape(-1, state.tokens.shape[1])


def generate_stream(model, params, input_ids, attention_mask=None, *, chunk_size: int = 8,
                    **options) -> Iterator[np.ndarray]:
    """An iterator over the new tokens of greedy / sampled decoding as ``[batch, n <= chunk_size]`` arrays, as soon
    as each chunk is decoded; together they are exactly :func:`generate` 's new tokens (the same
    compiled loop runs, stopping every ``chunk_size`` tokens). Beam search cannot stream: its best
    hypothesis is known only at the end.
    """
    if not _is_int(chunk_size) or chunk_size < 1:
        raise JaxlmError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    ids, mask, plan, knobs, _ = _prepare(model, input_ids, attention_mask, options)
    if plan.num_beams > 1:
        raise JaxlmError("beam search cannot stream (the best beam is known only at the end); "
                         "call generate() instead")
    return _chunks(model, params, _start(model, params, ids, mask, plan, knobs), chunk_size, plan, knobs)


def _chunks(model, params, state: _State, chunk_size: int, plan: _Plan, knobs: _Knobs) -> Iterator[np.ndarray]:
    prompt, written = plan.prompt_length(state.tokens), 0
    while written < plan.max_new_tokens:
        state = _advance(model, params, state, min(written + chunk_size, plan.max_new_tokens), plan, knobs)
        step = int(state.step)
        yield np.asarray(state.tokens)[:, prompt + written:prompt + step]  # sliced on the host: no compile
        written = plan.max_new_tokens if bool(state.halt) else step
