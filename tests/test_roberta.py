"""RoBERTa: its positions (``pad_token_id + 1`` onwards, padding at ``pad_token_id``), its byte-level BPE
framing, masked-LM pretraining and classification through the BERT tasks, fill-mask and (``torch``) its
tokenizer files against transformers'. Output / gradient / export parity per head: tests/test_interop.py."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import small_corpus, tiny_overrides
from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.data.bert_inputs import frame_texts
from jaxlm.data.tokenizer import load_tokenizer, train_roberta_bpe
from jaxlm.models.roberta import RobertaConfig, RobertaModel, roberta_position_ids
from jaxlm.tasks.encoder import framer
from jaxlm.train.trainer import train

TEXTS = ["The cat sat on the mat.", "Hello, world! Dogs running under big hats", "jax and torch"]
TINY = dict(vocab_size=320, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=34, type_vocab_size=1)


def test_positions_count_real_tokens_from_the_pad_id_plus_one():
    ids = jnp.array([[0, 7, 8, 2, 1, 1], [0, 9, 2, 1, 1, 1]])  # <s> ... </s> then <pad> = 1
    np.testing.assert_array_equal(roberta_position_ids(ids, 1), [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]])
    config = RobertaConfig(**TINY)
    assert config.max_positions == 32  # 34 rows less the two below pad + 1
    model = RobertaModel(config)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), ids)["params"]
    hidden = jax.jit(lambda x, mask: model.apply({"params": params}, x, mask).last_hidden_state)
    padded = hidden(ids, (ids != 1).astype(jnp.int32))
    alone = hidden(ids[1:, :3], jnp.ones((1, 3), jnp.int32))
    np.testing.assert_allclose(padded[1, :3], alone[0], atol=1e-5)


def test_roberta_framing_of_single_texts_and_pairs():
    tok = train_roberta_bpe(TEXTS * 10, 300)
    assert [tok.token_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    a, b = tok.encode("The cat"), tok.encode("a dog")
    rows, cut = frame_texts([a], [b], framer(tok, 12))
    row = [0, *a, 2, 2, *b, 2]
    np.testing.assert_array_equal(rows["input_ids"][0], row + [1] * (12 - len(row)))
    assert not rows["token_type_ids"].any() and not cut.any()
    assert tok.encode("The cat", add_special_tokens=True) == [0, *a, 2]


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    """A RoBERTa pretrained for a few steps on a small text (its byte-level BPE trained on it)."""

    root = tmp_path_factory.mktemp("roberta")
    small_corpus(root)
    overrides = [o for o in tiny_overrides(root / "run") if not o.startswith("model.")]
    overrides += [f"model.{k}={v}" for k, v in TINY.items()] + [
        "model.type=roberta", "task=mlm", f"data.paths={root / 'corpus.txt'}", "data.tokenizer.vocab_size=320",
        "data.seq_len=32"]
    metrics = train(load_config(None, overrides))
    return root / "run", metrics


def test_mlm_pretraining_and_fill_mask(mlm_run, capsys):
    run, metrics = mlm_run
    assert np.isfinite(metrics["eval_loss"])
    tok = load_tokenizer(run / "tokenizer")
    assert tok.token_id("<mask>") == 4
    capsys.readouterr()
    assert main(["fill-mask", "--run", str(run), "the <mask> statement", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(float(line.split()[0]) > 0 for line in lines)


def test_classification_from_the_pretrained_run(mlm_run, tmp_path, capsys):
    run, _ = mlm_run
    overrides = [o for o in tiny_overrides(tmp_path / "cls", **{"trainer.max_steps": 2, "trainer.eval_every": 2,
                                                               "checkpoint.every": 2})
                 if not o.startswith("model.")]
    overrides += [f"model.{k}={v}" for k, v in TINY.items()] + [
        "model.type=roberta", "task.type=classification", "task.dataset=sentiment_en", f"model.init_from={run}",
        f"data.tokenizer.path={run / 'tokenizer'}", "data.seq_len=32", "model.num_labels=2",
        "model.id2label={0: negative, 1: positive}"]
    metrics = train(load_config(None, overrides))
    assert 0 <= metrics["eval_accuracy"] <= 1
    capsys.readouterr()
    assert main(["predict", "--run", str(tmp_path / "cls"), "a great film", "and a good one"]) == 0
    probabilities = [float(line.split()[0]) for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert len(probabilities) == 2 and abs(sum(probabilities) - 1) < 1e-5


def test_next_sentence_prediction_is_refused_for_roberta(tmp_path):
    from jaxlm.errors import JaxlmError
    from jaxlm.models import build_model

    config = load_config(None, [f"model.{k}={v}" for k, v in TINY.items()] + ["model.type=roberta", "data.seq_len=32"])
    with pytest.raises(JaxlmError, match="model type 'roberta' has no 'pretraining' head"):
        build_model(config.model, "pretraining")


@pytest.mark.torch
def test_tokenizer_files_match_transformers(tmp_path):
    """vocab.json + merges.txt and the tokenizer.json transformers writes: RobertaTokenizer's ids, pairs and <mask>."""
    transformers = pytest.importorskip("transformers")
    tok = train_roberta_bpe(TEXTS * 20, 300)
    tok.tok.model.save(str(tmp_path))  # vocab.json + merges.txt
    want = transformers.RobertaTokenizer.from_pretrained(tmp_path)
    got = load_tokenizer(tmp_path)
    for text, pair in [(TEXTS[0], None), (TEXTS[1], TEXTS[2]), ("the <mask> sat", None), ("  spaced\nout", "x")]:
        assert got.tok.encode(text, pair).ids == want(text, pair)["input_ids"], (text, pair)
    want.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["eos_token"] == "</s>"
    again = load_tokenizer(tmp_path / "saved")
    assert again.tok.encode("the <mask> sat").ids == want("the <mask> sat")["input_ids"]
    assert again.eos_id == want.eos_token_id


@pytest.mark.torch
def test_fill_mask_matches_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxlm.interop import from_pretrained
    from jaxlm.interop.commands import fill_mask
    from jaxlm.interop.parity import random_checkpoint

    tok = train_roberta_bpe(TEXTS * 20, 300)
    directory = random_checkpoint("RobertaForMaskedLM", tmp_path, vocab_size=tok.vocab_size)
    tok.tok.model.save(str(directory))
    hf_tok = transformers.RobertaTokenizer.from_pretrained(directory)
    text = "the cat <mask> on the mat."
    got = fill_mask(*from_pretrained(directory), load_tokenizer(directory), text, top_k=3)
    ids = hf_tok(text, return_tensors="pt")["input_ids"]
    hf = transformers.RobertaForMaskedLM.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = hf(ids).logits[0, (ids[0] == hf_tok.mask_token_id).nonzero()[0, 0]]
    probs, best = logits.softmax(-1).topk(3)
    assert [t for t, _ in got] == [hf_tok.decode([int(i)]) for i in best]
    np.testing.assert_allclose([p for _, p in got], probs.numpy(), atol=1e-6)
