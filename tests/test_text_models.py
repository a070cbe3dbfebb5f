"""The classic text classifiers (TextCNN, RNN / GRU / LSTM / BiLSTM) and their word vocabulary:
padding-correct predictions, the vocabulary's ids and <UNK>, Kim's frozen pretrained
embeddings, and training + predict through the classification task and the one trainer."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.checkpoint import load_run
from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.data.tokenizer import load_tokenizer, train_wordlevel
from jaxlm.errors import ConfigError
from jaxlm.models.rnn import RNNConfig, RNNForSequenceClassification
from jaxlm.models.text_cnn import TextCNNConfig, TextCNNForSequenceClassification

SMALL = dict(vocab_size=30, embedding_dim=8)
MODELS = {
    "bilstm": RNNForSequenceClassification(RNNConfig(**SMALL, cell="lstm", bidirectional=True, num_layers=2,
                                                     hidden_size=6)),
    "gru_mean": RNNForSequenceClassification(RNNConfig(**SMALL, cell="gru", hidden_size=6, pooling="mean")),
    "rnn_max": RNNForSequenceClassification(RNNConfig(**SMALL, cell="rnn", hidden_size=6, pooling="max")),
    "text_cnn": TextCNNForSequenceClassification(TextCNNConfig(**SMALL, num_filters=4)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_prediction_unchanged_by_extra_padding(name):
    model = MODELS[name]
    ids = np.asarray([[5, 6, 7, 0, 0, 0, 0], [8, 9, 10, 11, 12, 13, 14], [4, 0, 0, 0, 0, 0, 0]], np.int32)
    mask = (ids > 0).astype(np.int32)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids, mask))["params"]

    def logits(i, m):
        return np.asarray(model.apply({"params": params}, jnp.asarray(i), jnp.asarray(m)).logits)

    base = logits(ids, mask)
    padded = logits(np.pad(ids, ((0, 0), (0, 9)), constant_values=3), np.pad(mask, ((0, 0), (0, 9))))
    np.testing.assert_allclose(padded, base, atol=1e-6)  # padding ids and amount do not matter
    np.testing.assert_allclose(logits(ids[:1, :3], mask[:1, :3]), base[:1], atol=1e-6)  # nor does any padding
    assert np.isfinite(logits(np.zeros_like(ids), np.zeros_like(mask))).all()  # the empty rows of a last batch


def test_word_vocabulary_ids_unk_and_reload(tmp_path):
    tok = train_wordlevel(["The cat sat.", "the dog sat", "a cat", "我爱猫"], vocab_size=100, min_frequency=2)
    vocab = tok.tok.get_vocab()
    assert vocab["<PAD>"] == 0 and vocab["<UNK>"] == 1 and tok.special_ids == [0, 1]
    assert set(vocab) == {"<PAD>", "<UNK>", "the", "cat", "sat"}  # seen at least twice, lower-cased
    assert tok.encode("The bird SAT") == [vocab["the"], 1, vocab["sat"]]
    chars = train_wordlevel(["我爱猫", "我爱狗"], vocab_size=100)
    assert chars.encode("我爱鱼") == [chars.token_id("我"), chars.token_id("爱"), 1]  # one word per character
    assert train_wordlevel(["b a c a b a"], vocab_size=4).tok.get_vocab() == {"<PAD>": 0, "<UNK>": 1, "a": 2, "b": 3}
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode("the bird sat") == tok.encode("the bird sat")


def test_static_embeddings_need_a_pretrained_file():
    with pytest.raises(ConfigError, match="model.pretrained_embeddings"):
        load_config("configs/textcnn-sentiment.yaml", ["model.embedding_mode=static"])


def run_args(out, **extra):
    base = {"run.out_dir": out, "trainer.max_steps": 3, "trainer.eval_every": 3, "trainer.log_every": 1,
            "trainer.progress_bar": False, "trainer.batch_size": 16, "data.seq_len": 24}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_textcnn_trains_and_predicts_with_frozen_pretrained_vectors(tmp_path, capsys):
    vectors = tmp_path / "glove.txt"
    vectors.write_text("wonderful " + " ".join(["0.5"] * 16) + "\nterrible " + " ".join(["-0.5"] * 16) + "\n")
    args = run_args(tmp_path / "run", **{"model.embedding_mode": "multichannel", "model.embedding_dim": 16,
                                         "model.pretrained_embeddings": vectors, "model.num_filters": 8})
    assert main(["train", "configs/textcnn-sentiment.yaml", *args]) == 0
    tok = load_tokenizer(tmp_path / "run" / "tokenizer")
    params = load_run(tmp_path / "run")[1]["embed"]
    good, bad = tok.token_id("wonderful"), tok.token_id("terrible")
    np.testing.assert_allclose(np.asarray(params["static_embeddings"]["embedding"])[[good, bad]],
                               np.repeat([[0.5], [-0.5]], 16, 1))  # frozen copy unchanged by training
    assert not np.allclose(params["embeddings"]["embedding"][good], 0.5)  # the tuned copy moved
    capsys.readouterr()
    assert main(["predict", "--run", str(tmp_path / "run"), "A wonderful film, zzyzx."]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] in ("positive", "negative") and len(lines) == 3


def test_bigru_on_chinese_reviews_trains_evaluates_and_predicts(tmp_path, capsys):
    args = run_args(tmp_path, **{"task.dataset": "sentiment_zh", "model.cell": "gru", "model.hidden_size": 16,
                                 "model.embedding_dim": 16, "trainer.grad_accum_steps": 2})
    assert main(["train", "configs/bilstm-sentiment.yaml", *args]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= trained["eval_accuracy"] <= 1 and np.isfinite(trained["eval_loss"])
    assert main(["eval", "configs/bilstm-sentiment.yaml", *args]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["eval_loss"] == pytest.approx(trained["eval_loss"], rel=1e-5)
    assert main(["predict", "--run", str(tmp_path), "这部电影太精彩了"]) == 0
    assert capsys.readouterr().out.splitlines()[0] in ("positive", "negative")
