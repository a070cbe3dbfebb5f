"""Decoding: exact tokens of transformers' ``generate`` (greedy, repetition penalty, beam search) for the
same weights, its logits processors' semantics, sampling, left padding, eos, streaming, no recompilation
and one-line errors. Torch-free tests use a tiny jaxlm GPT-2; ``torch`` ones a tiny random transformers
checkpoint imported with ``jaxlm.from_pretrained``."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlm
from jaxlm.errors import JaxlmError
from jaxlm.generation import GenerationOptions, _process, generate, generate_stream
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel

CFG = GPT2Config(vocab_size=97, n_positions=80, n_embd=32, n_layer=2, n_head=4,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
# Three prompts of lengths 7, 4 and 1, left-padded with 0s (the pad ids must not matter).
PROMPTS = [[5, 17, 62, 3, 88, 41, 9], [33, 2, 71, 50], [11]]


def left_padded(prompts, pad=0):
    width = max(map(len, prompts))
    ids = np.array([[pad] * (width - len(p)) + p for p in prompts])
    mask = np.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.fixture(scope="module")
def lm():
    model = GPT2LMHeadModel(CFG)
    return model, nn.meta.unbox(model.init(jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32)))["params"]


def test_jaxlm_generate_is_generate(lm):
    model, params = lm
    ids, mask = left_padded(PROMPTS[:2])
    np.testing.assert_array_equal(jaxlm.generate(model, params, ids, mask, max_new_tokens=4),
                                  generate(model, params, ids, mask, max_new_tokens=4))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_left_padded_batch_decodes_like_each_prompt_alone(lm, num_beams):
    model, params = lm
    ids, mask = left_padded(PROMPTS)
    batch = np.asarray(generate(model, params, ids, mask, max_new_tokens=12, num_beams=num_beams))
    for row, prompt in enumerate(PROMPTS):
        alone = np.asarray(generate(model, params, np.array([prompt]), max_new_tokens=12, num_beams=num_beams))
        np.testing.assert_array_equal(batch[row, ids.shape[1]:], alone[0, len(prompt):])
        np.testing.assert_array_equal(batch[row, :ids.shape[1]], ids[row])  # the prompt comes back as given


def test_sampling_with_top_k_1_is_greedy(lm):
    model, params = lm
    ids, mask = left_padded(PROMPTS)
    greedy = generate(model, params, ids, mask, max_new_tokens=16)
    sampled = generate(model, params, ids, mask, max_new_tokens=16, do_sample=True, top_k=1, temperature=0.7, seed=3)
    np.testing.assert_array_equal(sampled, greedy)


def test_a_seed_reproduces_a_sample_and_other_seeds_differ(lm):
    model, params = lm
    ids, mask = left_padded(PROMPTS)
    options = dict(max_new_tokens=16, do_sample=True, top_k=0, temperature=1.5)
    a, b, other = (np.asarray(generate(model, params, ids, mask, seed=seed, **options)) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other)
    assert (a >= 0).all() and (a < CFG.vocab_size).all()


def test_num_return_sequences_samples_each_prompt_n_times(lm):
    model, params = lm
    ids, mask = left_padded(PROMPTS)
    options = dict(max_new_tokens=12, do_sample=True, top_k=0, temperature=1.5, seed=2)
    out = np.asarray(generate(model, params, ids, mask, num_return_sequences=3, **options))
    prompt = ids.shape[1]
    assert out.shape == (9, prompt + 12)
    np.testing.assert_array_equal(out[:, :prompt], np.repeat(ids, 3, axis=0))  # prompt i's samples: rows 3i..3i+2
    for row in range(3):
        assert len({tuple(r) for r in out[3 * row:3 * row + 3, prompt:]}) == 3  # independent samples
    greedy = np.asarray(generate(model, params, ids, mask, max_new_tokens=12))
    top1 = generate(model, params, ids, mask, max_new_tokens=12, do_sample=True, top_k=1, num_return_sequences=2)
    np.testing.assert_array_equal(top1, np.repeat(greedy, 2, axis=0))


def test_num_return_sequences_of_beam_search_are_its_best_hypotheses(lm):
    model, params = lm
    ids, mask = left_padded(PROMPTS)
    best = np.asarray(generate(model, params, ids, mask, max_new_tokens=10, num_beams=4))
    top3 = np.asarray(generate(model, params, ids, mask, max_new_tokens=10, num_beams=4, num_return_sequences=3))
    assert top3.shape == (9, best.shape[1])
    np.testing.assert_array_equal(top3[::3], best)  # each prompt's first sequence is its best
    assert all(len({tuple(r) for r in top3[3 * i:3 * i + 3]}) == 3 for i in range(3))


def test_eos_stops_only_its_row_and_pads_it(lm):
    model, params = lm
    ids, mask = left_padded(PROMPTS)
    free = np.asarray(generate(model, params, ids, mask, max_new_tokens=10))
    prompt = ids.shape[1]
    eos = int(free[0, prompt + 3])  # row 0's fourth new token
    stopped = np.asarray(generate(model, params, ids, mask, max_new_tokens=10, eos_token_id=[96, eos], pad_token_id=-1))
    for row in range(len(PROMPTS)):
        new = list(free[row, prompt:])
        end = new.index(eos) + 1 if eos in new else len(new)
        np.testing.assert_array_equal(stopped[row, prompt:prompt + end], new[:end])
        assert (stopped[row, prompt + end:] == -1).all()
    assert (stopped[0, prompt + 4:] == -1).all()


def loop_state(model, params, prompts, **options):
    """The decoding loop's final state (``passes``: its forward passes) for left-padded ``prompts``."""
    from jaxlm import generation as decoding

    ids, mask = left_padded(prompts)
    ids, mask, plan, knobs, _ = decoding._prepare(model, ids, mask, options)
    state = decoding._start(model, params, ids, mask, plan, knobs)
    return decoding._advance(model, params, state, plan.max_new_tokens, plan, knobs)


@pytest.mark.parametrize("options", [
    dict(prompt_lookup_num_tokens=1, max_matching_ngram_size=1),
    dict(prompt_lookup_num_tokens=4),
    dict(prompt_lookup_num_tokens=10, max_matching_ngram_size=3, repetition_penalty=1.3),
    dict(prompt_lookup_num_tokens=4, eos_token_id=2, pad_token_id=-1),
])
def test_prompt_lookup_decodes_the_greedy_tokens_in_fewer_passes(lm, options):
    model, params = lm
    prompts = PROMPTS + [[1, 2, 3, 1, 2, 3, 1, 2]]
    ids, mask = left_padded(prompts)
    greedy = dict(options, prompt_lookup_num_tokens=None)
    np.testing.assert_array_equal(generate(model, params, ids, mask, max_new_tokens=40, **options),
                                  generate(model, params, ids, mask, max_new_tokens=40, **greedy))
    # this tiny model repeats the prompt [11] for a while, so the row's proposals are right
    state = loop_state(model, params, [[11]], max_new_tokens=40, **options)
    assert int(state.step) == 40 and int(state.passes) < (30 if options["prompt_lookup_num_tokens"] == 1 else 20)


def test_prompt_lookup_proposes_what_followed_the_earliest_occurrence_of_the_longest_matching_ngram():
    from jaxlm.generation import _proposals

    plan = GenerationOptions(prompt_lookup_num_tokens=3, max_matching_ngram_size=2).plan(100)
    #              pad pad  ... "7 8" at 2, "8" alone at 5, last tokens "7 8"
    tokens = np.array([[0, 0, 7, 8, 5, 8, 6, 7, 8, 0, 0, 0],
                       [9, 4, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0],   # "4" at 1 and 5 (last): 1-gram, from index 1
                       [9, 9, 1, 2, 3, 5, 0, 0, 0, 0, 0, 0]])  # "5" never occurred before: nothing
    last = np.array(8)
    first = np.array([2, 0, 0])
    # rows 1 and 2 end at index 5: shift them right so that every row's last token is at `last`
    tokens[1:] = np.roll(tokens[1:], 3, axis=1)
    first[1:] += 3
    proposed, real = (np.asarray(x) for x in _proposals(jnp.asarray(tokens), jnp.asarray(first), last, plan))
    np.testing.assert_array_equal(real, [3, 3, 0])
    np.testing.assert_array_equal(proposed[0], [5, 8, 6])  # after the "7 8" at 2-3, not after the "8" at 5
    np.testing.assert_array_equal(proposed[1], [1, 2, 3])  # after the "4" at index 4 (1 before the shift)
    np.testing.assert_array_equal(proposed[2], [5, 5, 5])  # no proposal: the last token, never kept


def test_prompt_lookup_streams_chunks_of_at_most_chunk_size(lm):
    model, params = lm
    ids, mask = left_padded(PROMPTS)
    options = dict(max_new_tokens=30, prompt_lookup_num_tokens=5)
    whole = np.asarray(generate(model, params, ids, mask, **options))[:, ids.shape[1]:]
    chunks = list(generate_stream(model, params, ids, mask, chunk_size=4, **options))
    assert all(c.shape[1] <= 4 for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), whole)


@pytest.mark.parametrize("options", [dict(), dict(do_sample=True, top_p=0.9, temperature=0.8, seed=4),
                                     dict(repetition_penalty=1.5, eos_token_id=7)])
def test_streamed_chunks_are_exactly_generate(lm, options):
    model, params = lm
    ids, mask = left_padded(PROMPTS)
    whole = np.asarray(generate(model, params, ids, mask, max_new_tokens=20, **options))[:, ids.shape[1]:]
    for chunk_size in (1, 6, 20):
        chunks = list(generate_stream(model, params, ids, mask, max_new_tokens=20, chunk_size=chunk_size, **options))
        assert all(c.shape[1] <= chunk_size for c in chunks)
        streamed = np.concatenate(chunks, axis=1)
        np.testing.assert_array_equal(streamed, whole[:, :streamed.shape[1]])
        assert (whole[:, streamed.shape[1]:] == GenerationOptions(**options).pad).all()  # stopped: all rows done


def test_same_shapes_and_options_do_not_compile_again(lm):
    model, params = lm
    compiles = []

    def count(event, duration, **_):
        if event in ("/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_retrieval_time_sec"):
            compiles.append(event)

    def run(prompts, seed, temperature, top_p, eos):
        ids, mask = left_padded(prompts)
        options = dict(max_new_tokens=8, do_sample=True, top_k=10, top_p=top_p, temperature=temperature,
                       repetition_penalty=1.2, eos_token_id=eos, seed=seed)
        np.asarray(generate(model, params, ids, mask, **options))
        for _ in generate_stream(model, params, ids, mask, chunk_size=3, **options):
            pass

    run(PROMPTS, 0, 1.0, 0.9, 5)
    jax.monitoring.register_event_duration_secs_listener(count)
    try:
        # other prompts of the same shape, seed, temperature, top_p, eos id: the same compiled loop
        run([[4, 4, 4, 4, 4, 4, 4], [1, 2], [3, 90, 1]], 1, 0.5, 0.7, 9)
    finally:
        jax.monitoring.unregister_event_duration_listener(count)
    assert compiles == []


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("options", [dict(), dict(prompt_lookup_num_tokens=4), dict(num_beams=3)])
def test_the_decoding_loop_updates_the_kv_cache_in_place(lm, batch, options):
    """Greedy / sampling, prompt lookup and beam search: the compiled loop copies, gathers or transposes no
    layer's K / V cache; each token writes its keys and values into the donated cache in place (XLA once
    copied every cache a few times per token at batch 1, and beam search gathered every cache by its beams'
    parents at every step)."""
    from jaxlm import generation as decoding

    model, params = lm
    ids, mask, plan, knobs, _ = decoding._prepare(model, np.ones((batch, 5), np.int32), None,
                                                  dict(max_new_tokens=8, **options))
    state = decoding._start(model, params, ids, mask, plan, knobs)
    hlo = decoding._advance.lower(model, params, state, plan.max_new_tokens, plan, knobs).compile().as_text()
    cache_shapes = {f"f32[{','.join(map(str, x.shape))}]" for x in jax.tree.leaves(state.cache) if x.ndim == 4}
    copies = [line.strip() for line in hlo.splitlines() if re.search(r" (copy|gather|transpose)\(", line) and
              any(f"= {shape}" in line for shape in cache_shapes)]
    assert len(cache_shapes) == 1 and copies == []


@pytest.mark.parametrize("options, message", [
    (dict(top_p=0.0), "top_p must be in (0, 1]"),
    (dict(top_p=1.5), "top_p must be in (0, 1]"),
    (dict(num_beams=0), "num_beams must be an integer >= 1"),
    (dict(do_sample=True, temperature=0.0), "temperature must be > 0 when sampling"),
    (dict(top_k=-1), "top_k must be an integer >= 0"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (dict(early_stopping="sometimes"), "early_stopping must be True, False or 'never'"),
    (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (dict(max_new_tokens=78), "prompt (3 tokens) + max_new_tokens (78) exceeds the model's 80 positions"),
    (dict(topk=5), "unknown option 'topk'; did you mean 'top_k'?"),
    (dict(attention_mask=[[1, 1, 0]]), "prompts must be left-padded"),
    (dict(input_ids=[[1, 97, 2]]), "input_ids must be in [0, 97)"),
    (dict(num_beams=2, stream=True), "beam search cannot stream"),
    (dict(num_return_sequences=2), "greedy decoding returns one sequence per prompt"),
    (dict(num_return_sequences=3, num_beams=2), "raise num_beams to at least 3"),
    (dict(num_return_sequences=0, do_sample=True), "num_return_sequences must be a positive integer"),
    (dict(prompt_lookup_num_tokens=0), "prompt_lookup_num_tokens must be a positive integer"),
    (dict(prompt_lookup_num_tokens=3, max_matching_ngram_size=0), "max_matching_ngram_size must be a positive"),
    (dict(prompt_lookup_num_tokens=3, do_sample=True), "prompt_lookup_num_tokens speeds up greedy decoding only"),
    (dict(prompt_lookup_num_tokens=3, num_beams=2), "set do_sample=False and num_beams=1"),
])
def test_bad_inputs_and_options_raise_one_line_errors(lm, options, message):
    model, params = lm
    options = dict(options)
    ids, mask = options.pop("input_ids", [[1, 2, 3]]), options.pop("attention_mask", None)
    call = generate_stream if options.pop("stream", False) else generate
    with pytest.raises(JaxlmError) as error:
        call(model, params, np.array(ids), None if mask is None else np.array(mask), **options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_models_without_a_causal_lm_head_are_refused(lm):
    from jaxlm.models.bert import BertConfig, BertForMaskedLM

    _, params = lm
    with pytest.raises(JaxlmError, match="BertForMaskedLM is not a causal language model"):
        generate(BertForMaskedLM(BertConfig()), params, np.array([[1, 2]]))


# ---- transformers parity -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """(jaxlm model, params, transformers model) with the same random weights: tiny GPT-2 with room for 64 new
    tokens after the prompts."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxlm.interop.parity import random_checkpoint

    directory = random_checkpoint("GPT2LMHeadModel", tmp_path_factory.mktemp("gpt2"), n_positions=80)
    model, params = jaxlm.from_pretrained(directory)
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()
    return model, params, hf


def hf_generate(hf, ids, mask, max_new_tokens, **options):
    """transformers' tokens, padded with ``pad_token_id`` to the full length as jaxlm returns them."""
    import torch

    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=max_new_tokens,
                          min_length=0, no_repeat_ngram_size=0, **options).numpy()
    width = ids.shape[1] + max_new_tokens
    return np.pad(out, ((0, 0), (0, width - out.shape[1])), constant_values=options["pad_token_id"])


def jaxlm_generate(model, params, ids, mask, max_new_tokens, **options):
    with jax.default_matmul_precision("highest"):
        return np.asarray(generate(model, params, ids, mask, max_new_tokens=max_new_tokens, **options))


PARITY = {
    "greedy": dict(),
    "repetition_penalty": dict(repetition_penalty=1.3),
    "beams": dict(num_beams=4),
    "beams_early_stopping": dict(num_beams=3, early_stopping=True, length_penalty=0.7),
    "beams_never": dict(num_beams=2, early_stopping="never", length_penalty=2.0, repetition_penalty=1.2),
    "beams_return_3": dict(num_beams=4, num_return_sequences=3, length_penalty=1.3),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", PARITY)
def test_exactly_the_tokens_of_transformers_generate(hf_pair, name):
    model, params, hf = hf_pair
    ids, mask = left_padded([[p % 98 for p in prompt] for prompt in PROMPTS])
    options = dict(PARITY[name], do_sample=False, pad_token_id=1, eos_token_id=98)
    first = jaxlm_generate(model, params, ids, mask, 64, **options)
    np.testing.assert_array_equal(first, hf_generate(hf, ids, mask, 64, **options))
    # Again with an eos that row 0 emits early, so that stopping is exercised whatever the model does.
    options["eos_token_id"] = int(first[0, ids.shape[1] + 6])
    assert options["eos_token_id"] != 1
    np.testing.assert_array_equal(jaxlm_generate(model, params, ids, mask, 64, **options),
                                  hf_generate(hf, ids, mask, 64, **options))


@pytest.mark.torch
@pytest.mark.parametrize("options", [dict(), dict(repetition_penalty=1.3)])
def test_prompt_lookup_gives_exactly_the_tokens_of_transformers(hf_pair, options):
    """Greedy tokens of transformers for a left-padded batch, and of its own prompt lookup (batch 1 only there)."""
    model, params, hf = hf_pair
    ids, mask = left_padded([[p % 98 for p in prompt] for prompt in PROMPTS])
    options = dict(options, do_sample=False, pad_token_id=1, eos_token_id=98)
    lookup = dict(prompt_lookup_num_tokens=5, max_matching_ngram_size=2)
    np.testing.assert_array_equal(jaxlm_generate(model, params, ids, mask, 64, **options, **lookup),
                                  hf_generate(hf, ids, mask, 64, **options))
    one = np.array([PROMPTS[0]])
    np.testing.assert_array_equal(jaxlm_generate(model, params, one, np.ones_like(one), 64, **options, **lookup),
                                  hf_generate(hf, one, np.ones_like(one), 64, **options, **lookup))


def hf_processors(options, prompt_ignore_length):
    """The processors transformers' ``generate`` builds for ``options`` (greedy / sampling, one beam)."""
    from transformers.generation import logits_process as lp

    processors = lp.LogitsProcessorList()
    if options.get("repetition_penalty", 1.0) != 1.0:
        processors.append(lp.RepetitionPenaltyLogitsProcessor(options["repetition_penalty"], prompt_ignore_length))
    if options.get("do_sample"):
        if options.get("temperature", 1.0) != 1.0:
            processors.append(lp.TemperatureLogitsWarper(options["temperature"]))
        if options.get("top_k", 50):
            processors.append(lp.TopKLogitsWarper(options.get("top_k", 50)))
        if options.get("top_p", 1.0) < 1.0:
            processors.append(lp.TopPLogitsWarper(options["top_p"]))
    return processors


@pytest.mark.torch
@pytest.mark.parametrize("options", [
    dict(repetition_penalty=1.7),
    dict(repetition_penalty=0.6, do_sample=True, top_k=0),
    dict(do_sample=True, temperature=0.6, top_k=0),
    dict(do_sample=True, top_p=0.8, top_k=0),
    dict(do_sample=True, top_p=0.3, temperature=1.7),
    dict(do_sample=True, top_k=7, top_p=0.95, temperature=0.9, repetition_penalty=1.25),
])
def test_logits_processors_match_transformers(options):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    vocab = 300
    scores = (3 * rng.standard_normal((4, vocab))).astype(np.float32)
    tokens = rng.integers(0, vocab, (4, 12))
    padding = np.array([0, 3, 11, 5])  # left padding per row: ignored by the repetition penalty
    with torch.no_grad():
        want = hf_processors(options, torch.tensor(padding))(torch.tensor(tokens), torch.tensor(scores)).numpy()
    opts = GenerationOptions(**options)
    got = np.asarray(_process(jnp.asarray(scores), jnp.asarray(tokens), jnp.asarray(padding), tokens.shape[1],
                              opts.plan(vocab), opts.knobs()))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))  # the same tokens survive
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isfinite(got).sum(-1).min() >= 1


@pytest.mark.torch
@pytest.mark.slow
def test_gpt2_124m_greedy_and_beam_match_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from jaxlm.interop.parity import random_checkpoint

    directory = random_checkpoint("GPT2LMHeadModel", tmp_path, tiny=False)
    model, params = jaxlm.from_pretrained(directory)
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()
    ids, mask = left_padded([[464, 1330, 2643, 318, 257], [40, 588]])
    common = dict(do_sample=False, pad_token_id=50256, eos_token_id=50256)
    greedy = hf_generate(hf, ids, mask, 64, **common)
    np.testing.assert_array_equal(jaxlm_generate(model, params, ids, mask, 64, **common), greedy)
    # transformers' prompt lookup takes one row at a time; jaxlm's gives the greedy tokens for the whole batch
    np.testing.assert_array_equal(jaxlm_generate(model, params, ids, mask, 64, prompt_lookup_num_tokens=10, **common),
                                  greedy)
    np.testing.assert_array_equal(jaxlm_generate(model, params, ids, mask, 64, num_beams=2, **common),
                                  hf_generate(hf, ids, mask, 64, num_beams=2, **common))


# ---- the command line ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_checkpoint(tmp_path_factory):
    """A tiny random transformers GPT-2 directory with a byte-level BPE tokenizer.json beside it."""
    pytest.importorskip("torch")
    from jaxlm.data.corpus import embedded_corpus
    from jaxlm.data.tokenizer import train_bpe
    from jaxlm.interop.parity import random_checkpoint

    tokenizer = train_bpe(embedded_corpus()[:5], 300)
    directory = random_checkpoint("GPT2LMHeadModel", tmp_path_factory.mktemp("gpt2-bpe"),
                                  vocab_size=tokenizer.vocab_size, n_positions=80, bos_token_id=tokenizer.eos_id,
                                  eos_token_id=tokenizer.eos_id)
    tokenizer.save(directory)
    return directory, tokenizer


@pytest.mark.torch
@pytest.mark.parametrize("flags, options", [
    ([], {}),
    (["--do-sample", "--top-k", "20", "--top-p", "0.9", "--temperature", "0.8", "--seed", "5"],
     dict(do_sample=True, top_k=20, top_p=0.9, temperature=0.8, seed=5)),
    (["--num-beams", "3", "--early-stopping", "true", "--length-penalty", "0.5", "--repetition-penalty", "1.2"],
     dict(num_beams=3, early_stopping=True, length_penalty=0.5, repetition_penalty=1.2)),
    (["--num-beams", "3", "--num-return-sequences", "2"], dict(num_beams=3, num_return_sequences=2)),
    (["--do-sample", "--num-return-sequences", "3", "--seed", "1"], dict(do_sample=True, num_return_sequences=3, seed=1)),
    (["--prompt-lookup-num-tokens", "4"], {}),
    (["--prompt-lookup-num-tokens", "3", "--max-matching-ngram-size", "1"], {}),
])
def test_cli_prints_the_text_of_generate(bpe_checkpoint, flags, options, capsys):
    from jaxlm.cli import main

    directory, tokenizer = bpe_checkpoint
    text = "The import statement"
    assert main(["generate", "--model", str(directory), "--prompt", text, "--max-new-tokens", "24", *flags]) == 0
    model, params = jaxlm.from_pretrained(directory)
    want = generate(model, params, np.array([tokenizer.encode(text)]), max_new_tokens=24,
                    eos_token_id=tokenizer.eos_id, **options)
    assert capsys.readouterr().out == "\n\n".join(tokenizer.decode(row.tolist()) for row in np.asarray(want)) + "\n"


@pytest.mark.torch
def test_cli_bad_option_is_a_one_line_error(bpe_checkpoint, capsys):
    from jaxlm.cli import main

    directory, _ = bpe_checkpoint
    assert main(["generate", "--model", str(directory), "--prompt", "x", "--do-sample", "--top-p", "1.5"]) == 2
    assert capsys.readouterr().err == "jaxlm generate: error: top_p must be in (0, 1], got 1.5\n"
    assert main(["generate", "--model", str(directory), "--prompt", "x", "--max-matching-ngram-size", "3"]) == 2
    assert capsys.readouterr().err == ("jaxlm generate: error: --max-matching-ngram-size tunes prompt lookup: add "
                                       "--prompt-lookup-num-tokens K, or drop it\n")
    assert main(["generate", "--model", str(directory), "--prompt", "x", "--prompt-lookup-num-tokens", "3",
                 "--max-matching-ngram-size", "0"]) == 2
    assert capsys.readouterr().err.startswith("jaxlm generate: error: max_matching_ngram_size must be a positive")
