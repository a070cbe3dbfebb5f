"""Sequence to sequence: synthetic data, the LSTM / GRU and Transformer encoder-decoders (padding, scheduled
sampling, KV-cache decoding, beam search), a tiny training run with resume, parallel-text files and the CLI."""

import json
from functools import partial

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxlm.cli import main
from jaxlm.config import load_config, validate_config
from jaxlm.errors import ConfigError, DataError, JaxlmError
from jaxlm.generation import generate
from jaxlm.models.lstm_seq2seq import LSTMSeq2Seq, LSTMSeq2SeqConfig
from jaxlm.models.seq2seq import TransformerSeq2Seq, TransformerSeq2SeqConfig
from jaxlm.tasks.seq2seq import SPECIALS, Seq2SeqTask, frame_pairs, synthetic_pairs
from jaxlm.train.trainer import train

VOCAB = 14
SOURCES = np.array([[5, 6, 7, 8, 9], [4, 11, 0, 0, 0], [13, 12, 10, 0, 0]])  # right-padded with 0 (<PAD>)
MASK = (SOURCES > 0).astype(np.int32)
TARGETS = np.array([[2, 9, 8, 7, 6, 5], [2, 11, 4, 0, 0, 0], [2, 10, 12, 13, 0, 0]])  # <s> + target


def init(model):
    return nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), SOURCES, MASK, TARGETS))["params"]


@partial(jax.jit, static_argnums=0)
def forward(model, params, sources, mask, targets, rng=None):
    """Teacher-forced logits (training mode, with scheduled sampling, when ``rng`` is given)."""
    return model.apply({"params": params}, sources, mask, targets,
                       rngs=None if rng is None else {"dropout": rng}).logits


@partial(jax.jit, static_argnums=0)
def encode(model, params, sources, mask):
    return model.apply({"params": params}, sources, mask, method="encode")


@pytest.fixture(scope="module")
def lstm():
    model = LSTMSeq2Seq(LSTMSeq2SeqConfig(vocab_size=VOCAB, embedding_size=8, hidden_size=16, num_layers=2,
                                          teacher_forcing_ratio=1.0))
    return model, init(model)


@pytest.fixture(scope="module")
def gru():
    model = LSTMSeq2Seq(LSTMSeq2SeqConfig(cell="gru", vocab_size=VOCAB, embedding_size=8, hidden_size=16,
                                          num_layers=2, teacher_forcing_ratio=1.0))
    return model, init(model)


@pytest.fixture(scope="module")
def transformer():
    model = TransformerSeq2Seq(TransformerSeq2SeqConfig(
        vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, dropout=0.0, max_position_embeddings=16,
        positions="learned", share_embeddings=False, tie_word_embeddings=False))
    return model, init(model)


def test_synthetic_pairs_are_deterministic_and_correct():
    for kind, make in (("copy", list), ("reverse", lambda s: s[::-1]), ("sort", sorted)):
        sources, targets = synthetic_pairs(kind, 50, 2, 6, 5, seed=3)
        assert (sources, targets) == synthetic_pairs(kind, 50, 2, 6, 5, seed=3)
        assert all(t == make(s) for s, t in zip(sources, targets))
        assert {len(s) for s in sources} == {2, 3, 4, 5, 6} and {x for s in sources for x in s} == set(range(5))
    assert synthetic_pairs("copy", 50, 2, 6, 5, seed=4)[0] != synthetic_pairs("copy", 50, 2, 6, 5, seed=3)[0]


def test_rows_shift_the_target_and_cut_long_pairs():
    rows, cut = frame_pairs([[7, 8, 9], [5, 6, 7, 8, 9]], [[9, 8, 7], [1]], 4, (0, 2, 3))
    np.testing.assert_array_equal(rows["input_ids"], [[7, 8, 9, 0], [5, 6, 7, 8]])
    np.testing.assert_array_equal(rows["attention_mask"], [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(rows["decoder_input_ids"], [[2, 9, 8, 7, 0], [2, 1, 0, 0, 0]])
    np.testing.assert_array_equal(rows["labels"], [[9, 8, 7, 3, 0], [1, 3, 0, 0, 0]])
    np.testing.assert_array_equal(rows["decoder_attention_mask"], [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(cut, [False, True])


@pytest.mark.parametrize("which", ["lstm", "gru"])
def test_recurrent_encoder_ignores_padding(which, request):
    model, params = request.getfixturevalue(which)
    padded = np.pad(SOURCES, ((0, 0), (0, 4)), constant_values=3)  # more padding, and not even <PAD> ids
    padded_mask = np.pad(MASK, ((0, 0), (0, 4)))
    a, b = encode(model, params, SOURCES, MASK), encode(model, params, padded, padded_mask)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), a.state, b.state)
    np.testing.assert_allclose(forward(model, params, SOURCES, MASK, TARGETS),
                               forward(model, params, padded, padded_mask, TARGETS), atol=1e-6)
    # a row's state is read at its own last token: row 1 alone, unpadded, gives the same state
    alone = encode(model, params, SOURCES[1:2, :2], MASK[1:2, :2])
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x[1:2], y, atol=1e-6), a.state, alone.state)


def test_scheduled_sampling_at_ratio_one_is_teacher_forcing_and_at_zero_is_greedy(lstm):
    model, params = lstm
    forced = forward(model, params, SOURCES, MASK, TARGETS)
    rng = jax.random.PRNGKey(5)  # training mode: the scheduled-sampling coins are drawn
    ratio_one = forward(model, params, SOURCES, MASK, TARGETS, rng)
    np.testing.assert_allclose(ratio_one, forced, atol=1e-6)

    free = LSTMSeq2Seq(model.config.model_copy(update={"teacher_forcing_ratio": 0.0}))
    logits = forward(free, params, SOURCES, MASK, TARGETS, rng)
    greedy = generate(free, params, SOURCES, MASK, max_new_tokens=TARGETS.shape[1] - 1, decoder_start_token_id=2)
    np.testing.assert_array_equal(np.asarray(logits.argmax(-1))[:, :-1], np.asarray(greedy)[:, 1:])
    assert not np.allclose(logits, forced)


@pytest.mark.parametrize("which", ["lstm", "gru", "transformer"])
def test_cached_decoding_equals_the_full_forward(which, request):
    model, params = request.getfixturevalue(which)
    full = forward(model, params, SOURCES, MASK, TARGETS)
    encoded = encode(model, params, SOURCES, MASK)

    @jax.jit
    def step(cache, tokens):
        variables = {"params": params} if cache is None else {"params": params, "cache": cache}
        out, variables = model.apply(variables, tokens, encoded, decode=True, mutable=["cache"], method="decode")
        return out.logits, variables["cache"]

    _, cache = step(None, TARGETS)  # builds the cache: the cross-attention keys / values, or the encoder's state
    steps = []
    for t in range(TARGETS.shape[1]):
        logits, cache = step(cache, TARGETS[:, t:t + 1])
        steps.append(logits[:, 0])
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=2e-5)


@pytest.mark.parametrize("which", ["lstm", "gru", "transformer"])
def test_greedy_is_the_argmax_and_beam_search_decodes_each_row_alone(which, request):
    model, params = request.getfixturevalue(which)
    options = dict(max_new_tokens=6, decoder_start_token_id=2, eos_token_id=3, pad_token_id=0)
    greedy = np.asarray(generate(model, params, SOURCES, MASK, **options))
    assert (greedy[:, 0] == 2).all()
    # each token is the argmax after the tokens before it (the decoder is causal: one forward checks all)
    predicted = np.asarray(forward(model, params, SOURCES, MASK, greedy[:, :-1]).argmax(-1))
    ended = np.cumsum(greedy[:, 1:] == 3, axis=1) - (greedy[:, 1:] == 3) > 0  # after the row's eos
    np.testing.assert_array_equal(np.where(ended, 0, predicted), greedy[:, 1:])
    beams = np.asarray(generate(model, params, SOURCES, MASK, num_beams=3, **options))
    alone = generate(model, params, SOURCES[1:2, :2], MASK[1:2, :2], num_beams=3, **options)
    np.testing.assert_array_equal(beams[1], np.asarray(alone)[0])
    assert (beams[:, 0] == 2).all()


def test_beam_search_holds_what_a_prompts_beams_share_once(transformer):
    """The encoder output and the cross-attention keys / values stay one row per source under beam search
    (the attention reads them for all of a source's beams); the self-attention cache has a row per beam."""
    from jaxlm import generation as decoding

    model, params = transformer
    ids, mask, plan, knobs, _ = decoding._prepare(model, SOURCES, MASK, dict(max_new_tokens=4, num_beams=3,
                                                                               decoder_start_token_id=2))
    state = decoding._start(model, params, ids, mask, plan, knobs)
    rows = {jax.tree_util.keystr(path): x.shape[0] for path, x in jax.tree_util.tree_leaves_with_path(state.cache)
            if x.ndim}
    assert {n for path, n in rows.items() if "cross_" in path} == {3}
    assert {n for path, n in rows.items() if "cached_" in path} == {9}
    assert {x.shape[0] for x in jax.tree.leaves(state.encoded)} == {3}


@pytest.mark.parametrize("num_beams", [1, 3])
def test_decoding_reads_the_cross_attention_cache_as_stored(transformer, num_beams):
    """The compiled loop neither copies nor transposes the cached cross-attention keys / values (XLA once
    transposed every layer's at every token, and beam search gathered them)."""
    import re

    from jaxlm import generation as decoding

    model, params = transformer
    ids, mask, plan, knobs, _ = decoding._prepare(model, SOURCES, MASK, dict(max_new_tokens=4, num_beams=num_beams,
                                                                               decoder_start_token_id=2))
    state = decoding._start(model, params, ids, mask, plan, knobs)
    cross = {x.size for path, x in jax.tree_util.tree_leaves_with_path(state.cache) if "cross_" in str(path)}
    hlo = decoding._advance.lower(model, params, state, plan.max_new_tokens, plan, knobs).compile().as_text()
    moved = [line.strip() for line in hlo.splitlines() if re.search(r" (copy|transpose|gather)\(", line)
             and (shape := re.search(r"= f32\[([\d,]+)\]", line))
             and np.prod([int(n) for n in shape.group(1).split(",")]) in cross]
    assert len(cross) == 1 and moved == []


def test_generate_checks_seq2seq_inputs(lstm):
    model, params = lstm
    with pytest.raises(JaxlmError, match="needs decoder_start_token_id"):
        generate(model, params, SOURCES, MASK)
    with pytest.raises(JaxlmError, match="sources must be right-padded"):
        generate(model, params, SOURCES, MASK[:, ::-1], decoder_start_token_id=2)


def config_tree(tmp_path, **task):
    return {"run": {"out_dir": str(tmp_path / "run")},
            "task": {"type": "seq2seq", "source": "reverse", "num_train_examples": 64, "num_eval_examples": 12,
                     "max_length": 5, **task},
            "model": {"type": "lstm_seq2seq", "vocab_size": VOCAB, "embedding_size": 8, "hidden_size": 16,
                      "num_layers": 1, "teacher_forcing_ratio": 0.5},
            "data": {"seq_len": 5},
            "trainer": {"max_steps": 4, "batch_size": 8, "eval_every": 4, "log_every": 2, "progress_bar": False},
            "checkpoint": {"every": 2}}


def test_training_evaluates_resumes_and_translates_from_the_cli(tmp_path, capsys):
    tree = config_tree(tmp_path)
    metrics = train(validate_config(tree))
    for key in ("eval_loss", "eval_token_accuracy", "eval_exact_match", "eval_bleu", "eval_rouge_l"):
        assert np.isfinite(metrics[key])
    assert 0 <= metrics["eval_exact_match"] <= 1 and 0 <= metrics["eval_bleu"] <= 100
    tree["trainer"]["max_steps"] = 6
    resumed = train(validate_config(tree))  # continues from step 4
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "loss" in m] == [2, 4, 6]
    assert resumed["eval_loss"] != metrics["eval_loss"]

    capsys.readouterr()
    assert main(["generate", "--run", str(tmp_path / "run"), "--prompt", "1 2 3", "--num-beams", "2",
                 "--max-new-tokens", "5"]) == 0
    printed = capsys.readouterr().out.strip().split()
    assert len(printed) <= 5 and all(word in list(map(str, range(10))) for word in printed)


def test_parallel_text_files_build_a_vocabulary_in_the_run_dir(tmp_path):
    (tmp_path / "src.txt").write_text("猫 坐 下\n狗 跑\n鸟 飞 走\n鱼 游\n")
    (tmp_path / "tgt.txt").write_text("cat sits\ndog runs\nbird flies away\nfish swims\n")
    tree = config_tree(tmp_path, source="files", source_file=str(tmp_path / "src.txt"),
                       target_file=str(tmp_path / "tgt.txt"), vocabulary="char")
    tree["data"].update(validation_fraction=0.25, tokenizer={"vocab_size": 300})
    tree["model"]["vocab_size"] = 64
    task = Seq2SeqTask(validate_config(tree), tmp_path / "run")
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").is_file()
    assert len(task.train["input_ids"]) == 3 and len(task.valid["input_ids"]) == 1
    tok = task.tokenizer
    assert [tok.token_id(t) for t in SPECIALS] == [0, 1, 2, 3]
    row = task.train["labels"][0]
    assert tok.decode(row[:task.train["decoder_attention_mask"][0].sum() - 1].tolist()) in tok.decode(
        tok.encode("cat sits dog runs bird flies away fish swims"))
    (tmp_path / "tgt.txt").write_text("cat\n")
    with pytest.raises(DataError, match="aligned line by line"):
        Seq2SeqTask(validate_config(tree), tmp_path / "other")


@pytest.mark.parametrize("change, message", [
    (dict(min_length=6, max_length=5), "task.min_length=6 exceeds task.max_length=5"),
    (dict(source_file="a.txt"), "task.source_file and task.target_file go together"),
])
def test_bad_task_settings_are_one_line_errors(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(config_tree(tmp_path, **change))


def test_task_refuses_targets_beyond_seq_len_and_a_small_vocabulary(tmp_path):
    with pytest.raises(ConfigError, match="set data.seq_len=8"):
        Seq2SeqTask(validate_config(config_tree(tmp_path, max_length=8)), tmp_path)
    tree = config_tree(tmp_path)
    tree["model"]["vocab_size"] = 10
    with pytest.raises(DataError, match="set model.vocab_size=14"):
        Seq2SeqTask(validate_config(tree), tmp_path)


def test_gru_cells_replace_the_lstm_ones(gru, lstm):
    (_, params), (_, lstm_params) = gru, lstm
    assert set(params["decoder"]["layer_0"]) == {"ir", "iz", "in", "hr", "hz", "hn"}
    assert set(lstm_params["decoder"]["layer_0"]) == {"ii", "if", "ig", "io", "hi", "hf", "hg", "ho"}
    state = encode(gru[0], params, SOURCES, MASK).state
    assert len(state) == 2 and state[0].shape == (3, 16)  # a GRU layer's state is h alone
    with pytest.raises(ConfigError, match="model.cell"):
        validate_config({"model": {"type": "lstm_seq2seq", "cell": "rnn"}})


def test_shipped_configs_validate():
    for name in ("seq2seq-reverse", "lstm-seq2seq-reverse"):
        config = load_config(f"configs/{name}.yaml")
        assert config.task.type == "seq2seq" and config.model.vocab_size == 14
