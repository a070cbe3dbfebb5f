"""What trains: trainer.trainable freezes the rest exactly; a linear probe on a contrastive encoder."""

import jax
import numpy as np
import pytest

from test_cli import jaxlm, one_line_error
from test_contrastive import simclr
from jaxlm.checkpoint import load_run
from jaxlm.config import load_config
from jaxlm.errors import ConfigError
from jaxlm.train.trainer import setup

PROBE = ["trainer.max_steps=3", "trainer.eval_every=3", "trainer.progress_bar=false", "model.stage_sizes=[1]",
         "model.stage_widths=[8]", "trainer.batch_size=16", "checkpoint.every=3"]


def test_a_linear_probe_trains_only_the_head_of_a_contrastive_encoder(tmp_path):
    assert jaxlm(*simclr(tmp_path / "simclr", **{"trainer.max_steps": 1})).returncode == 0
    out = jaxlm("train", "configs/linear-probe-digits.yaml", f"run.out_dir={tmp_path / 'probe'}",
                f"model.init_from={tmp_path / 'simclr'}", *PROBE)
    assert out.returncode == 0, out.stderr
    assert "skipped: projection_0" in out.stderr and "afresh: classifier" in out.stderr
    _, encoder, _ = load_run(tmp_path / "simclr")
    _, probe, _ = load_run(tmp_path / "probe")
    assert set(probe) == {"stem_conv", "stem_bn", "stage1_block1", "classifier"}
    for name in ("stem_conv", "stem_bn", "stage1_block1"):  # frozen: bitwise what was loaded
        jax.tree.map(np.testing.assert_array_equal, probe[name], encoder[name])
    s = setup(load_config("configs/linear-probe-digits.yaml", [f"run.out_dir={tmp_path / 'x'}", *PROBE]))
    leaves = jax.tree_util.tree_leaves_with_path(s.abstract_state.opt_state)
    assert leaves and all("classifier" in jax.tree_util.keystr(p) for p, leaf in leaves if leaf.ndim)


def test_trainable_patterns_that_match_nothing(tmp_path):
    with pytest.raises(ConfigError, match="'head' matches no parameter.*classifier/kernel"):
        setup(load_config("configs/linear-probe-digits.yaml", [f"run.out_dir={tmp_path}", *PROBE,
                                                               "model.init_from=null", "trainer.trainable=[head]"]))
    one_line_error(jaxlm("train", "configs/regression-linear.yaml", f"run.out_dir={tmp_path}",
                         "optimizer.groups.output.learning_rat=1"), "optimizer.groups.output.learning_rat")
