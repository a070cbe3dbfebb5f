import pytest
import yaml

from jaxlm.config import load_config, save_config
from jaxlm.errors import ConfigError


def error(*overrides, path=None):
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    return str(e.value)


def test_defaults_and_overrides():
    c = load_config(None, ["trainer.max_steps=100", "optimizer.learning_rate=1e-3", "model.n_layer=2",
                           "data.paths=a.txt", "optimizer.clip_norm=null"])
    assert c.trainer.max_steps == 100 and c.optimizer.learning_rate == 1e-3
    assert c.model.n_layer == 2 and c.model.type == "gpt2"
    assert c.data.paths == ["a.txt"] and c.optimizer.clip_norm is None


def test_unknown_key_names_the_closest():
    assert error("trainer.max_step=3") == "unknown config key 'trainer.max_step'; did you mean 'trainer.max_steps'?"
    assert "did you mean 'model.n_layer'" in error("model.n_layr=2")
    assert "did you mean 'trainer'" in error("traner.max_steps=2")
    assert "did you mean 'schedule.plateau.factor'" in error("schedule.plateau.factr=0.5")


def test_wrong_type_names_key_value_and_type():
    msg = error("trainer.max_steps=abc")
    assert "'trainer.max_steps'='abc'" in msg and "expected int" in msg
    assert "'trainer.max_steps'=2.5" in error("trainer.max_steps=2.5")
    assert "'adamw'" in error("optimizer.name=adamx")
    assert "model.type='foo' is unknown" in error("model.type=foo")


def test_cross_field_checks():
    assert "exceeds the model's 1024 positions" in error("data.seq_len=2000")
    assert "not divisible by trainer.grad_accum_steps" in error("trainer.batch_size=3", "trainer.grad_accum_steps=2")
    assert "not KEY=VALUE" in error("trainer.max_steps")


def test_yaml_file_and_resolved_copy(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  max_steps: 5\noptimizer:\n  learning_rate: 3e-4\n")
    c = load_config(path, ["trainer.batch_size=8"])
    assert c.optimizer.learning_rate == 3e-4 and c.trainer.batch_size == 8
    save_config(c, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == c
    assert "does not exist" in error(path=tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    assert "must hold a mapping" in error(path=tmp_path / "bad.yaml")


def test_shipped_configs_validate():
    from pathlib import Path

    for path in sorted(Path(__file__).parents[1].glob("configs/*.yaml")):
        assert load_config(path).model_dump(), path
        assert yaml.safe_load(path.read_text())


def test_settings_newer_than_a_checkpoint_take_their_defaults_in_the_resume_check():
    from jaxlm.config import resume_conflicts

    now = load_config("configs/gpt2-tiny.yaml", ["model.positions=learned"])
    saved = now.model_dump(mode="json")
    del saved["model"]["positions"], saved["model"]["num_kv_heads"]  # written before these existed
    assert resume_conflicts(saved, now) == []
    rotary = load_config("configs/gpt2-tiny.yaml")
    assert resume_conflicts(saved, rotary) == ["model.positions: 'learned' in the checkpoint, 'rotary' now"]
