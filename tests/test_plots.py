"""jaxlm plot (runs' curves, a config's learning rate, confusion matrices) and jaxlm attention on
text models, checked by reading the PNGs back: their size, that they are not blank, and which
run colours they hold (one line per run)."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_overrides
from jaxlm.analysis.attention import attention_maps, attention_statistics, text_inputs
from jaxlm.analysis.plots import COLORS, learning_rates
from jaxlm.cli import load_for_inference, main
from jaxlm.config import load_config
from jaxlm.train.logging import read_metrics

pytest.importorskip("matplotlib")

TINY_BERT = {"model.hidden_size": 32, "model.num_hidden_layers": 2, "model.num_attention_heads": 2,
             "model.intermediate_size": 64, "model.max_position_embeddings": 64, "model.vocab_size": 300,
             "data.seq_len": 32, "data.tokenizer.vocab_size": 300, "trainer.batch_size": 8, "trainer.max_steps": 6,
             "trainer.log_every": 1, "trainer.eval_every": 3, "trainer.progress_bar": False, "checkpoint.every": 3,
             "schedule.warmup_steps": 2, "trainer.early_stopping": "null"}


def classify(out, **extra):
    return ["configs/bert-classify.yaml", *[f"{k}={v}" for k, v in {"run.out_dir": out, **TINY_BERT, **extra}.items()]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny BERT classification runs (different seeds) and a tiny GPT-2 run."""
    from jaxlm.data.corpus import embedded_corpus

    root = tmp_path_factory.mktemp("plots")
    bert = [root / "bert-a", root / "bert-b"]
    for seed, out in enumerate(bert):
        assert main(["train", *classify(out, **{"run.seed": seed})]) == 0
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(embedded_corpus()[:6]))
    gpt2 = root / "gpt2"
    assert main(["train", "configs/gpt2-tiny.yaml", *tiny_overrides(gpt2, **{"data.paths": corpus,
                                                                             "model.positions": "learned"})]) == 0
    return bert, gpt2


def pixels(png, size):
    """The RGB pixels of ``png``, checked to be ``size`` (width, height) and not blank."""
    image = Image.open(png)
    assert image.size == size
    rgb = np.asarray(image.convert("RGB")).astype(int)
    assert (rgb.min(-1) < 200).mean() > 0.01, "the figure is blank"
    return rgb


def colour_count(rgb, colour, tolerance=2):
    want = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - want).max(-1) <= tolerance).sum())


def lines_drawn(rgb, minimum=400):
    """The run colours with at least ``minimum`` pixels: a line across a panel, not only its legend sample."""
    return [k for k, c in enumerate(COLORS) if colour_count(rgb, c) >= minimum]


def test_curves_of_several_runs_share_axes_one_line_each(runs, tmp_path, capsys):
    bert, gpt2 = runs
    png = tmp_path / "curves.png"
    assert main(["plot", *map(str, bert), "--metrics", "loss,eval_accuracy", "--out", str(png)]) == 0
    assert f"wrote {png}: 2 run(s)" in capsys.readouterr().out
    assert lines_drawn(pixels(png, (640, 520))) == [0, 1]
    one = tmp_path / "one.png"
    assert main(["plot", str(bert[0]), "--out", str(one)]) == 0  # default metrics: loss and eval_accuracy
    assert lines_drawn(pixels(one, (640, 520))) == [0]
    three = tmp_path / "three.png"
    assert main(["plot", *map(str, bert), str(gpt2), "--metrics", "loss,grad_norm", "--out", str(three)]) == 0
    assert lines_drawn(pixels(three, (640, 520))) == [0, 1, 2]


def test_schedule_is_what_the_trainer_logged(runs, tmp_path, capsys):
    bert, _ = runs
    config = load_config("configs/bert-classify.yaml", classify(bert[0])[1:])
    logged = [r["learning_rate"] for r in read_metrics(bert[0]) if "learning_rate" in r]
    np.testing.assert_allclose(learning_rates(config), logged, rtol=1e-6)
    png = tmp_path / "lr.png"
    assert main(["plot", "--schedule", "configs/gpt2-tiny.yaml", "trainer.max_steps=300", "schedule.step_size=50",
                 "--vary", "schedule.name=linear,cosine,cyclic", "--out", str(png)]) == 0
    assert "the learning rate of 3 schedule(s) over 300 steps" in capsys.readouterr().out
    assert lines_drawn(pixels(png, (640, 360))) == [0, 1, 2]
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temporary name, then renamed


def test_confusion_matrix_of_the_evaluations_and_of_an_eval_line(runs, tmp_path, capsys):
    bert, _ = runs
    last = [r for r in read_metrics(bert[0]) if "eval_confusion_0_0" in r][-1]
    png = tmp_path / "cm.png"
    assert main(["plot", "--confusion", str(bert[0]), "--out", str(png)]) == 0
    total = sum(v for k, v in last.items() if "confusion" in k)
    assert f"accuracy {last['eval_accuracy']:.4f} of {total:.0f}" in capsys.readouterr().out
    pixels(png, (460, 340))
    assert main(["eval", *classify(bert[0]), "task.eval_split=test"]) == 0
    line = tmp_path / "test.json"
    line.write_text(capsys.readouterr().out)
    test = json.loads(line.read_text().splitlines()[-1])
    assert main(["plot", "--confusion", str(bert[0]), "--eval", str(line), "--out", str(tmp_path / "t.png")]) == 0
    assert f"accuracy {test['eval_accuracy']:.4f}" in capsys.readouterr().out


def test_attention_of_bert_and_gpt2_texts(runs, tmp_path, capsys):
    bert, gpt2 = runs
    png = tmp_path / "bert.png"
    assert main(["attention", "--run", str(bert[0]), "--text", "A wonderful film, I loved it.", "--out", str(png)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["layer", "head", "mean", "variance", "entropy", "mean_entropy"]
    assert len(printed) == 1 + 2 * 2 + 2 and printed[5].startswith("tokens: 0:[CLS]")
    pixels(png, Image.open(png).size)
    model, params, tok = load_for_inference(str(bert[0]), None)
    inputs, tokens, query = text_inputs(tok, "A wonderful film, I loved it.", 64)
    weights = attention_maps(model, params, **inputs)
    assert weights.shape == (2, 2, len(tokens), len(tokens)) and query == 0 and tokens[-1] == "[SEP]"
    np.testing.assert_allclose(weights.sum(-1), 1, atol=1e-5)
    stats = attention_statistics(weights, query)
    row = printed[1].split()
    assert float(row[4]) == pytest.approx(stats["entropy"][0, 0], abs=1e-6)

    one = tmp_path / "gpt2.png"
    assert main(["attention", "--run", str(gpt2), "--text", "The import statement", "--layer", "1", "--head", "3",
                 "--out", str(one)]) == 0
    printed = capsys.readouterr().out
    assert "1 layer(s) x 1 head(s)" in printed and "statistics of the last token's row" in printed
    pixels(one, Image.open(one).size)
    model, params, tok = load_for_inference(str(gpt2), None)
    inputs, tokens, query = text_inputs(tok, "The import statement", 32)
    weights = attention_maps(model, params, **inputs)
    assert query == -1 and np.allclose(np.triu(weights[0, 0], 1), 0)  # causal: no query sees a later token


@pytest.mark.parametrize("args,needles", [
    (["plot", "{tmp}", "--out", "{tmp}/x.png"], ["has no metrics.jsonl"]),
    (["plot", "{bert}", "--metrics", "nope", "--out", "{tmp}/x.png"], ["no run logged 'nope'", "eval_accuracy"]),
    (["plot", "--schedule", "configs/gpt2-tiny.yaml", "--vary", "schedule.name", "--out", "{tmp}/x.png"],
     ["write KEY=V1,V2"]),
    (["plot", "--confusion", "{gpt2}", "--out", "{tmp}/x.png"], ["has no confusion matrix"]),
    (["plot", "--confusion", "{bert}", "--schedule", "configs/gpt2-tiny.yaml"], ["one kind of figure"]),
    (["attention", "--run", "{bert}", "--text", "a film", "--layer", "7"], ["--layer 7 is out of range"]),
    (["attention", "--run", "{bert}", "--image", "digits:0"], ["holds a bert model", "give --text TEXT"]),
])
def test_bad_input_is_one_line(runs, tmp_path, capsys, args, needles):
    bert, gpt2 = runs
    args = [a.format(tmp=tmp_path, bert=bert[0], gpt2=gpt2) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
