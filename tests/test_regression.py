"""task: regression: the losses against PyTorch, fitting y = 2x + 3, predict, bad input."""

import jax.numpy as jnp
import numpy as np
import pytest

from test_cli import jaxlm, one_line_error
from jaxlm.config import load_config
from jaxlm.tasks.regression import regression_errors


@pytest.mark.torch
@pytest.mark.parametrize("loss,make", [("mse", "MSELoss"), ("mae", "L1Loss"), ("huber", "HuberLoss")])
def test_losses_match_torch(loss, make):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    pred, target = rng.normal(0, 2, 50).astype(np.float32), rng.normal(0, 2, 50).astype(np.float32)
    kwargs = {"delta": 0.7} if loss == "huber" else {}
    ours = regression_errors(jnp.asarray(pred), jnp.asarray(target), loss, 0.7)[0].mean()
    ref = getattr(torch.nn, make)(**kwargs)(torch.tensor(pred), torch.tensor(target))
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)


def overrides(out, **extra):
    return [f"{k}={v}" for k, v in {"run.out_dir": out, "trainer.progress_bar": "false", "trainer.max_steps": 150,
                                    "trainer.eval_every": 150, **extra}.items()]


@pytest.mark.parametrize("optimizer", ["adam", "ftrl"])
def test_fits_the_line_and_predicts(tmp_path, optimizer):
    from jaxlm.checkpoint import load_run
    from jaxlm.train.trainer import train

    extra = {"optimizer.name": optimizer, "optimizer.learning_rate": 0.1 if optimizer == "adam" else 1.0}
    metrics = train(load_config("configs/regression-linear.yaml", overrides(tmp_path / "run", **extra)))
    assert metrics["eval_rmse"] < 0.12 and metrics["eval_r2"] > 0.99  # the noise has std 0.1
    _, params, _ = load_run(tmp_path / "run")
    assert float(params["output"]["kernel"][0, 0]) == pytest.approx(2.0, abs=0.05)
    assert float(params["output"]["bias"][0]) == pytest.approx(3.0, abs=0.05)
    if optimizer == "adam":
        out = jaxlm("predict", "--run", tmp_path / "run", "1.5")
        assert out.returncode == 0 and float(out.stdout) == pytest.approx(6.0, abs=0.1)
        one_line_error(jaxlm("predict", "--run", tmp_path / "run", "1,2"), "takes 1 feature")


def test_csv_rows_and_bad_input(tmp_path):
    rows = ["a,b,y"] + [f"{i},{i % 3},{2 * i - (i % 3) + 1}" for i in range(40)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    (tmp_path / "bad.csv").write_text("a,b,y\n1,2,3\n4,five,6\n" + "\n".join(rows[1:]))
    common = ["configs/regression-linear.yaml", "task.dataset=null", "task.feature_columns=[a,b]",
              "model.num_features=2", "trainer.max_steps=2", f"run.out_dir={tmp_path / 'r'}"]
    one_line_error(jaxlm("train", *common, f"data.paths={tmp_path / 'bad.csv'}"), "row 2", "'b'", "five")
    one_line_error(jaxlm("train", *common[:-3], f"data.paths={tmp_path / 'd.csv'}", f"run.out_dir={tmp_path / 'r'}"),
                   "model.num_features=2")
    one_line_error(jaxlm("train", *common, f"data.paths={tmp_path / 'd.csv'}", "task.target_column=z"), "'z'")
    one_line_error(jaxlm("train", *common), "data.paths")
    out = jaxlm("train", *common, f"data.paths={tmp_path / 'd.csv'}")
    assert out.returncode == 0, out.stderr
