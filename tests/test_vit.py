"""ViT and the image pipeline: the model (scan / remat, shapes), image sets, augmentation,
the image_classification task through the one trainer (resume included), attention
statistics, and the CLI (train / eval / predict / attention / export to transformers).
Parity of outputs, gradients and the export round trip with transformers' ViTModel and
ViTForImageClassification runs in tests/test_interop.py (every importable architecture)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.analysis.attention import attention_statistics, cls_grid, colorize, entropy
from jaxlm.cli import main
from jaxlm.config import load_config
from jaxlm.data.augment import SEED_KEY, AugmentSeeds, augment
from jaxlm.data.images import digits, load_image, load_images, shapes
from jaxlm.data.pipeline import BatchIterator
from jaxlm.errors import DataError, JaxlmError
from jaxlm.models import build_model
from jaxlm.models.layout import stack_layers
from jaxlm.models.vit import ViTConfig
from jaxlm.train.logging import read_metrics
from jaxlm.train.trainer import train

TINY = dict(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, num_labels=10)


def overrides(out_dir, **extra):
    """A seconds-long ViT run on the digits, augmented."""
    settings = {"run.out_dir": out_dir, "task.crop_padding": 1, "trainer.max_steps": 4, "trainer.batch_size": 16,
                "trainer.log_every": 1, "trainer.eval_every": 4, "trainer.progress_bar": False, "checkpoint.every": 2,
                "model.hidden_dropout_prob": 0.1, **{f"model.{k}": v for k, v in TINY.items()}, **extra}
    return [f"{k}={v}" for k, v in settings.items()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny run: (its directory, its metrics)."""
    out = tmp_path_factory.mktemp("vit") / "run"
    train(load_config("configs/vit-digits.yaml", overrides(out)))
    return out, read_metrics(out)


def test_scanned_vit_equals_the_plain_one():
    config = ViTConfig(**TINY)
    plain = build_model(config, "image_classification")
    images = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
    params = nn.meta.unbox(plain.init(jax.random.PRNGKey(0), images))["params"]
    want = plain.apply({"params": params}, images, output_attentions=True)
    scanned = build_model(config.model_copy(update={"scan_layers": True}), "image_classification")
    got = scanned.apply({"params": stack_layers(params, config)}, images, output_attentions=True)
    np.testing.assert_allclose(got.logits, want.logits, atol=1e-6)
    np.testing.assert_allclose(got.attentions[-1], want.attentions[-1], atol=1e-6)
    assert want.logits.shape == (3, 10) and want.attentions[0].shape == (3, 2, 5, 5)
    with pytest.raises(ValueError, match=r"pixel_values are \(8, 8, 3\) images but this ViT takes \(8, 8, 1\)"):
        plain.apply({"params": params}, jnp.zeros((1, 8, 8, 3)))


def test_vit_config_checks():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViTConfig(image_size=10, patch_size=4)
    with pytest.raises(ValueError, match="not divisible by num_attention_heads"):
        ViTConfig(hidden_size=30, num_attention_heads=4)


def test_image_sets(monkeypatch):
    d = digits()
    assert d.pixels.shape == (1797, 8, 8, 1) and d.pixels.dtype == np.uint8 and d.pixels.max() == 255
    assert sorted(set(d.labels)) == list(range(10))
    s = shapes(n=40, seed=3)
    assert s.pixels.shape == (40, 32, 32, 3) and np.bincount(s.labels).tolist() == [10] * 4
    assert np.array_equal(s.pixels, shapes(n=40, seed=3).pixels) and not np.array_equal(s.pixels, shapes(40).pixels)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as the CLI runs: a name that is neither on disk nor cached
    with pytest.raises(DataError, match="could not load split 'train'.*save_to_disk directory"):
        load_images("surely_not_a_dataset_name")


def test_load_image_files_and_builtin_indices(tmp_path):
    from PIL import Image

    assert np.array_equal(load_image("digits:5", 8, 1), digits().pixels[5])
    Image.fromarray(np.full((20, 10, 3), 200, np.uint8)).save(tmp_path / "x.png")
    grey = load_image(str(tmp_path / "x.png"), 8, 1)
    assert grey.shape == (8, 8, 1) and abs(int(grey[0, 0, 0]) - 200) <= 1
    assert load_image(str(tmp_path / "x.png"), None, 3).shape == (20, 10, 3)
    for spec, message in (("digits:5000", "index must be 0..1796"), (str(tmp_path / "no.png"), "does not exist"),
                          (str(tmp_path), "does not exist")):
        with pytest.raises(DataError, match=message):
            load_image(spec, 8, 1)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(DataError, match="not an image Pillow can read"):
        load_image(str(tmp_path / "bad.png"), 8, 1)


def test_augmentation_is_a_function_of_the_seeds():
    images = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1) + 1
    seeds = jnp.array([7, 8], jnp.uint32)
    out = jax.jit(augment, static_argnums=(2, 3))(images, seeds, 1, True)
    assert np.array_equal(out, augment(images, seeds, 1, True))
    assert not np.array_equal(out, augment(images, seeds + 2, 1, True))
    assert np.array_equal(augment(images, seeds, 0, False), images)
    for image, result in zip(images, augment(images, jnp.arange(2, dtype=jnp.uint32), 0, True)):
        assert np.array_equal(result, image) or np.array_equal(result, image[:, ::-1])
    for image, result in zip(images, augment(images, seeds, 1, False)):  # a shift by at most one pixel
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
        assert any(np.array_equal(result, padded[y:y + 4, x:x + 4]) for y in range(3) for x in range(3))


def test_augment_seeds_resume_exactly():
    rows = {"x": np.arange(20)}
    first = AugmentSeeds(BatchIterator(rows, 4, seed=1))
    batches = [next(first) for _ in range(8)]  # two epochs
    assert all(b[SEED_KEY].shape == (4,) and b[SEED_KEY].dtype == np.uint32 for b in batches)
    assert len({b[SEED_KEY].tobytes() for b in batches}) == 8
    again = AugmentSeeds(BatchIterator(rows, 4, seed=1))
    for _ in range(3):
        next(again)
    resumed = AugmentSeeds(BatchIterator(rows, 4, seed=1))
    resumed.restore(again.state())
    for want in batches[3:]:
        got = next(resumed)
        assert np.array_equal(got["x"], want["x"]) and np.array_equal(got[SEED_KEY], want[SEED_KEY])


def test_attention_statistics_of_known_maps():
    tokens = 5
    uniform = np.full((1, 2, tokens, tokens), 1 / tokens)
    stats = attention_statistics(uniform)
    np.testing.assert_allclose(stats["entropy"], np.log(tokens))
    np.testing.assert_allclose(stats["mean_entropy"], np.log(tokens))
    np.testing.assert_allclose(stats["mean"], 1 / tokens)
    np.testing.assert_allclose(stats["variance"], 0, atol=1e-15)
    focused = np.zeros((1, 1, tokens, tokens))
    focused[..., 3] = 1  # every query looks at patch 3 only
    stats = attention_statistics(focused)
    assert stats["entropy"][0, 0] == 0 and stats["mean_entropy"][0, 0] == 0
    np.testing.assert_allclose(stats["variance"], np.var([0, 0, 1, 0]))
    assert entropy([0.5, 0.5, 0.0]) == pytest.approx(np.log(2))
    grid = cls_grid(np.concatenate([focused, uniform[:, :1]], 1), layer=-1, head=None)
    assert grid.shape == (2, 2) and grid[1, 0] == pytest.approx((1 + 1 / tokens) / 2)
    with pytest.raises(JaxlmError, match="--head 2 is out of range"):
        cls_grid(uniform, 0, 2)
    assert colorize(np.array([0.0, 1.0])).tolist() == [[0, 0, 4], [252, 255, 164]]


def test_train_eval_and_resume_exactly(run, tmp_path):
    out, metrics = run
    final = {k: v for m in metrics for k, v in m.items()}
    assert final["step"] == 4 and 0 <= final["eval_accuracy"] <= 1 and "eval_confusion_9_9" in final
    # Stopped after 2 steps and resumed: the same augmentation, dropout and data, so the same losses.
    config = overrides(tmp_path / "resumed")
    train(load_config("configs/vit-digits.yaml", [*config, "trainer.max_steps=2"]))
    train(load_config("configs/vit-digits.yaml", config))
    losses = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "resumed") if "loss" in m}
    assert losses == {m["step"]: m["loss"] for m in metrics if "loss" in m}


def test_cli_eval_predict_attention(run, tmp_path, capsys):
    out, metrics = run
    assert main(["eval", "configs/vit-digits.yaml", *overrides(out)]) == 0
    assert '"eval_accuracy"' in capsys.readouterr().out
    assert main(["predict", "--run", str(out), "digits:3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 11 and lines[0] in [str(i) for i in range(10)]
    png = tmp_path / "map.png"
    assert main(["attention", "--run", str(out), "--image", "digits:3", "--head", "1", "--out", str(png)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["layer", "head", "mean", "variance", "entropy", "mean_entropy"]
    assert len(printed.splitlines()) == 1 + 2 * 2 + 1 and f"wrote {png}" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["attention", "--run", str(out), "--image", "digits:3", "--layer", "5"]) == 2
    assert capsys.readouterr().err.strip() == ("jaxlm attention: error: --layer 5 is out of range: the model has 2 "
                                               "layers (0..1, or -1)")


@pytest.mark.parametrize("extra,message", [
    ({"model.image_size": 16}, "dataset 'digits' holds 8x8 images with 1 channel(s) but the model takes 16x16 "
                               "images with 1 channel(s); set model.image_size=8"),
    ({"model.num_channels": 3}, "set model.num_channels=1"),
    ({"task.mean": "[0.5,0.5,0.5]", "task.std": "[1,1,1]"}, "task.mean / task.std have 3 values"),
    ({"task.std": "[0]"}, "with every std above 0"),
    ({"task.dataset": "tfds:cifar10"}, "tfds could not open split 'train'"),  # not built here, never downloaded
])
def test_config_errors_are_one_line(extra, message, tmp_path, capsys):
    assert main(["train", "configs/vit-digits.yaml", *overrides(tmp_path / "run", **extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_cifar10_config_validates_and_trains_on_shapes(tmp_path, capsys):
    config = ["run.out_dir=" + str(tmp_path / "run"), "trainer.progress_bar=false"]
    assert main(["train", "configs/vit-cifar10.yaml", *config]) == 2  # no CIFAR-10 here
    assert "cifar10" in capsys.readouterr().err
    shapes_run = load_config("configs/vit-cifar10.yaml", [*config, "task.dataset=shapes", "model.num_labels=4",
                                                          "model.id2label=null", "trainer.max_steps=2",
                                                          "trainer.batch_size=8", "trainer.eval_every=2",
                                                          "trainer.eval_batches=1", "model.hidden_size=48",
                                                          "model.intermediate_size=96"])
    assert train(shapes_run)["eval_loss"] > 0


def test_exported_run_matches_transformers(run, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out, _ = run
    assert main(["convert", "--to-torch", str(out), "--out", str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    image = digits().pixels[:3].astype(np.float32) / 255 * 2 - 1  # normalised as the run was (mean = std = 0.5)
    reference = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        want = reference(torch.from_numpy(image.transpose(0, 3, 1, 2))).logits.numpy()
    from jaxlm.cli import load_model

    model, params, _ = load_model(str(out), None)
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, jnp.asarray(image)).logits), want,
                               atol=1e-5)
