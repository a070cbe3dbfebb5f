"""word2vec on the one trainer: its sampling against gensim's definitions, exact resume, the
export gensim loads, neighbours, the plot, vectors into a TextCNN, one-line errors."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.data.corpus import split_documents
from jaxlm.tasks.word2vec import Word2VecTask, build_vocab, kept_positions, sentences_of

CONFIG = "configs/word2vec-skipgram.yaml"


def overrides(out, corpus, **extra):
    base = {"run.out_dir": out, "data.paths": corpus, "task.min_count": 2, "model.embedding_dim": 16,
            "model.vocab_size": 4096, "trainer.max_steps": 12, "trainer.batch_size": 32, "trainer.eval_every": 6,
            "trainer.eval_batches": 2, "trainer.log_every": 6, "trainer.progress_bar": False, "checkpoint.every": 6}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from jaxlm.data.corpus import embedded_corpus

    root = tmp_path_factory.mktemp("w2v")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(embedded_corpus()[:12]))
    assert main(["train", CONFIG, *overrides(root / "run", corpus)]) == 0
    return root, corpus


def test_subsampling_and_vocabulary_follow_gensim(trained):
    from gensim.models import Word2Vec

    root, corpus = trained
    config = load_config(CONFIG, overrides(root / "run", corpus))
    task = Word2VecTask(config, root / "run")
    sentences = sentences_of(split_documents([corpus.read_text()], config.data.validation_fraction)[0], True, None)
    reference = Word2Vec(sentences, min_count=2, sample=1e-3, vector_size=4, epochs=1, workers=1)
    assert sorted(task.words) == sorted(reference.wv.index_to_key)
    assert task.words[:5] == reference.wv.index_to_key[:5]
    for word in task.words[:50]:
        ours = task.keep_probability[task.words.index(word)]
        assert ours == pytest.approx(reference.wv.get_vecattr(word, "sample_int") / (2**32 - 1), abs=1e-6)


def test_windows_stay_in_sentence_and_reach(trained):
    root, corpus = trained
    config = load_config(CONFIG, overrides(root / "run", corpus))
    task = Word2VecTask(config, root / "run")
    c = task.train
    keep = np.random.default_rng(0).random(len(c.tokens)) < 0.7
    kept = kept_positions(c, keep)
    centres = np.arange(200)
    batch = task.examples(c, kept, centres, np.random.default_rng(1))
    order, rank = kept
    for i, p in enumerate(centres):
        valid = batch["attention_mask"][i].astype(bool)
        if not keep[p]:
            assert not valid.any()
            continue
        offsets = np.concatenate([np.arange(-5, 0), np.arange(1, 6)])[valid]
        positions = order[rank[p] + offsets]
        assert (c.sentence[positions] == c.sentence[p]).all()
        assert (batch["input_ids"][i][valid] == c.tokens[positions]).all()
        assert (batch["target_ids"][i][valid][:, 0] == c.tokens[p]).all()
    assert batch["target_ids"].shape == (200, 10, 6) and batch["weight"].sum() == batch["attention_mask"].sum()


def test_resume_gives_the_same_batches(trained):
    root, corpus = trained
    task = Word2VecTask(load_config(CONFIG, overrides(root / "run", corpus)), root / "run")
    data = task.train_iterator(32)
    for _ in range(len(task.train.tokens) // 32 - 1):  # into the next epoch
        next(data)
    state = data.state()
    expected = [next(data) for _ in range(3)]
    again = task.train_iterator(32)
    again.restore(state)
    for a, b in zip(expected, (next(again) for _ in range(3))):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_loss_is_negative_sampling(trained):
    root, corpus = trained
    config = load_config(CONFIG, overrides(root / "run", corpus, **{"model.architecture": "cbow"}))
    task = Word2VecTask(config, root / "run")
    from jaxlm.models import build_model

    model = build_model(config.model, "word2vec")
    n = len(task.train.tokens)
    batch = task.examples(task.train, kept_positions(task.train, np.ones(n, bool)), np.arange(8),
                          np.random.default_rng(0))
    params = nn.meta.unbox(model.init(jax.random.key(0), **task.model_inputs(batch))["params"])
    params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape) * 0.3, params)
    loss, weight = task.loss(model, params, batch, None)
    emb, ctx = np.asarray(params["embeddings"]), np.asarray(params["context"])
    mask = batch["attention_mask"][..., None]
    h = (emb[batch["input_ids"]] * mask).sum(1) / mask.sum(1)
    scores = np.einsum("bd,bkd->bk", h, ctx[batch["target_ids"]])
    sig = 1 / (1 + np.exp(-scores))
    expected = -(np.log(sig[:, 0]) + np.log(1 - sig[:, 1:]).sum(1))
    assert float(loss) == pytest.approx(float((expected * batch["weight"]).sum()), rel=1e-5)
    assert float(weight) == batch["weight"].sum()


def test_export_loads_in_gensim_and_textcnn(trained, capsys):
    from gensim.models import KeyedVectors

    root, _ = trained
    out = root / "vectors.txt"
    assert main(["embed", "--run", str(root / "run"), "--out", str(out)]) == 0
    kv = KeyedVectors.load_word2vec_format(str(out))
    words = json.loads((root / "run" / "vocab.json").read_text())["words"]
    assert kv.index_to_key == words and kv.vector_size == 16
    capsys.readouterr()
    assert main(["embed", "neighbors", "--run", str(root / "run"), "the", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    top_word, top_sim = lines[0].split()[1], float(lines[0].split()[0])
    assert kv.most_similar("the", topn=1)[0][0] == top_word
    assert top_sim == pytest.approx(kv.most_similar("the", topn=1)[0][1], abs=1e-4)
    from jaxlm.models.word_embeddings import pretrained_embedding_init

    init = pretrained_embedding_init(str(out), {"<PAD>": 0, "<UNK>": 1, "the": 2}, 3, 16)
    np.testing.assert_allclose(init(None, (3, 16))[2], kv["the"], atol=1e-5)


def test_plot_writes_a_png(trained):
    root, _ = trained
    out = root / "words.png"
    assert main(["embed", "--run", str(root / "run"), "--plot", "pca", "--top-n", "20", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["embed", "--run", str(root / "run"), "--plot", "tsne", "--top-n", "12",
                 "--out", str(out)]) == 0


def test_bad_input_one_line(trained, tmp_path, capsys):
    root, corpus = trained
    short = tmp_path / "short.txt"
    short.write_text("one two three\n\nfour five six\n\n" * 300)
    assert main(["train", CONFIG, *overrides(tmp_path / "r", short, **{"task.window": 5, "data.validation_fraction": 0.5})]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "task.window=5 is larger than the longest sentence" in err
    assert main(["embed", "neighbors", "--run", str(root / "run"), "zzyzx"]) == 2
    assert "not in the run's vocabulary" in capsys.readouterr().err
    assert main(["train", "configs/textcnn-sentiment.yaml", "task=word2vec"]) == 2
    assert "task: word2vec trains model.type=word2vec" in capsys.readouterr().err


def test_vocab_ties_keep_first_appearance():
    words, counts = build_vocab([["b", "a", "b", "a", "c"]], 1)
    assert words == ["b", "a", "c"] and counts.tolist() == [2, 2, 1]
    assert jnp.asarray(counts).sum() == 5
