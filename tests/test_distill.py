"""Distillation: the loss against a hand computation (KL * T^2, cosine, masked-LM positions), the
teacher as a constant of the step, student initialisation (BERT -> BERT / DistilBERT, GPT-2), a
cross-family student, SIGKILL then resume, and one-line errors for mismatched teachers."""

import os
import random
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.cli import load_model, main
from jaxlm.compress.distill import cosine_mean, soft_target_sum
from test_checkpoint import assert_same_losses, losses, run, start, wait_for_step
from test_quantize import bert_overrides


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_soft_targets_are_kl_times_t_squared():
    rng = np.random.default_rng(0)
    student, teacher = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    weights = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
    t = 3.0
    p, log_p, log_q = np.exp(log_softmax(teacher / t)), log_softmax(teacher / t), log_softmax(student / t)
    expected = (np.sum(p * (log_p - log_q), -1) * weights).sum() * t * t
    got = soft_target_sum(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(weights), t)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert float(soft_target_sum(jnp.asarray(teacher), jnp.asarray(teacher), jnp.asarray(weights), t)) == \
        pytest.approx(0.0, abs=1e-6)


def test_cosine_is_averaged_over_real_tokens():
    rng = np.random.default_rng(1)
    s, t = rng.standard_normal((2, 4, 6)), rng.standard_normal((2, 4, 6))
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]])
    cos = (s * t).sum(-1) / np.linalg.norm(s, axis=-1) / np.linalg.norm(t, axis=-1)
    expected = ((1 - cos) * mask).sum() / mask.sum()
    np.testing.assert_allclose(cosine_mean(jnp.asarray(s), jnp.asarray(t), jnp.asarray(mask)), expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The loss inside the step, on a masked LM


@pytest.fixture(scope="module")
def mlm_teacher(tmp_path_factory):
    from jaxlm.data.corpus import embedded_corpus

    root = tmp_path_factory.mktemp("distill-mlm")
    (root / "corpus.txt").write_text("\n\n".join(embedded_corpus()[:20]))
    assert main(["train", "configs/bert-tiny-mlm.yaml", *bert_overrides(root / "teacher", **{
        "data.paths": root / "corpus.txt", "model.num_hidden_layers": 2})]) == 0
    return root


def test_masked_lm_kl_is_taken_at_the_scored_positions_only(mlm_teacher, tmp_path):
    from jaxlm.config import load_config
    from jaxlm.tasks.mlm import ScoredPositions
    from jaxlm.train.setup import setup

    root = mlm_teacher
    config = load_config("configs/bert-tiny-mlm.yaml", bert_overrides(tmp_path / "student", **{
        "data.paths": root / "corpus.txt", "model.num_hidden_layers": 1, "distill.teacher": root / "teacher",
        "data.tokenizer.path": root / "teacher" / "tokenizer", "distill.alpha_kd": 5.0, "distill.alpha_ce": 2.0,
        "distill.alpha_hidden": 1.0}))
    s = setup(config)
    params, _ = s.initial_params()
    batch = jax.tree.map(jnp.asarray, next(s.task.train_iterator(4)))
    total, weight = s.task.loss(s.model, params, batch, None, 0.0, constants=s.constants(params))
    # By hand: the student and teacher logits at the scored positions, their hidden states, the MLM loss.
    scored = ScoredPositions.of(batch["labels"], batch["attention_mask"],
                                s.task.masker.most_selected(batch["labels"].shape[1]))
    inputs = {**s.task.model_inputs(batch), "masked_positions": scored.positions}
    student = s.model.apply({"params": params}, **inputs, output_hidden_states=True)
    teacher = s.task.teacher.apply({"params": s.teacher}, **inputs, output_hidden_states=True)
    w = np.asarray(scored.weights, np.float64)
    p = np.exp(log_softmax(np.asarray(teacher.logits, np.float64) / 2))
    kl = (p * (log_softmax(np.asarray(teacher.logits, np.float64) / 2)
               - log_softmax(np.asarray(student.logits, np.float64) / 2))).sum(-1)
    nll = -np.take_along_axis(log_softmax(np.asarray(student.logits, np.float64)),
                              np.asarray(scored.targets)[..., None], -1)[..., 0]
    s_h, t_h = np.asarray(student.hidden_states[-1]), np.asarray(teacher.hidden_states[-1])
    mask = np.asarray(batch["attention_mask"])
    cos = (s_h * t_h).sum(-1) / np.linalg.norm(s_h, axis=-1) / np.linalg.norm(t_h, axis=-1)
    expected = 5.0 * 4 * (kl * w).sum() + 2.0 * (nll * w).sum() + 1.0 * ((1 - cos) * mask).sum() / mask.sum() * w.sum()
    assert float(weight) == w.sum()
    np.testing.assert_allclose(float(total), expected, rtol=2e-5)


def test_bert_to_distilbert_student_is_exact_and_gpt2_gets_shallower(mlm_teacher, tmp_path, capsys):
    root = mlm_teacher
    out = tmp_path / "distil"
    assert main(["distill", "init", str(root / "teacher"), "--layers", "0,1", "--to", "distilbert",
                 "--out", str(out)]) == 0
    assert "2-layer DistilBertForMaskedLM" in capsys.readouterr().out
    teacher, t_params, _ = load_model(str(root / "teacher"), None)
    student, s_params, s_config = load_model(str(out), None)
    assert s_config.model.type == "distilbert" and s_config.model.n_layers == 2
    ids = jnp.asarray([[2, 17, 4, 29, 3, 0]])
    mask = (ids > 0).astype(jnp.int32)
    # All layers kept: the DistilBERT computes exactly the BERT's masked-LM logits.
    np.testing.assert_allclose(student.apply({"params": s_params}, ids, mask).logits,
                               teacher.apply({"params": t_params}, ids, mask).logits, atol=2e-5)
    assert main(["distill", "init", str(root / "teacher"), "--layers", "1", "--out", str(tmp_path / "bert1")]) == 0
    _, one, one_config = load_model(str(tmp_path / "bert1"), None)
    assert one_config.model.num_hidden_layers == 1
    np.testing.assert_array_equal(one["bert"]["layer_0"]["intermediate"]["kernel"],
                                  t_params["bert"]["layer_1"]["intermediate"]["kernel"])
    assert main(["distill", "init", str(root / "teacher"), "--layers", "0,5", "--out", str(tmp_path / "bad")]) == 2
    assert "must be distinct indices" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Runs: the teacher as a constant, a student of another family, mismatched teachers, SIGKILL


@pytest.fixture(scope="module")
def classifier_teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill-cls")
    assert main(["train", "configs/bert-classify.yaml", *bert_overrides(root / "teacher", **{
        "trainer.early_stopping": "null", "checkpoint.keep_best": 0, "trainer.max_steps": 6})]) == 0
    return root / "teacher"


def test_teacher_is_a_constant_and_another_family_can_learn_from_it(classifier_teacher, tmp_path, capsys):
    from jaxlm.checkpoint import Checkpoints

    student = tmp_path / "textcnn"
    common = ["trainer.max_steps=3", "trainer.eval_every=3", "trainer.log_every=1", "trainer.progress_bar=false",
              "checkpoint.every=3", "trainer.batch_size=8", f"run.out_dir={student}",
              f"distill.teacher={classifier_teacher}", "distill.alpha_kd=0.7", "distill.alpha_ce=0.3"]
    assert main(["train", "configs/textcnn-sentiment.yaml", *common]) == 0  # word ids; the teacher reads WordPiece
    ckpt = Checkpoints(student, read_only=True)
    meta = ckpt.read_meta(3)
    restored = ckpt.manager.item_metadata(3)
    ckpt.close()
    assert meta["teacher"]["source"] == str(classifier_teacher) and len(meta["teacher"]["fingerprint"]) == 16
    names = {"/".join(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(
        restored.params)[0]}
    assert names and not any("bert" in n for n in names)  # the checkpoint holds the student only
    capsys.readouterr()
    assert main(["eval", str(student / "config.yaml")]) == 0
    assert "eval_accuracy" in capsys.readouterr().out
    # Resuming with another teacher is refused.
    other = tmp_path / "other"
    assert main(["train", "configs/bert-classify.yaml", *bert_overrides(other, **{
        "trainer.early_stopping": "null", "checkpoint.keep_best": 0, "trainer.max_steps": 1, "run.seed": 1})]) == 0
    capsys.readouterr()
    assert main(["train", "configs/textcnn-sentiment.yaml", *common[1:], "trainer.max_steps=4",
                 f"distill.teacher={other}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was trained with the teacher" in err, err


def test_mismatched_teachers_are_one_line_errors(classifier_teacher, mlm_teacher, tmp_path, capsys):
    def error(*args):
        assert main(list(map(str, args))) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    three = ["model.num_labels=3", "model.id2label=null", "task.dataset=null",
             f"data.paths={tmp_path / 'three.csv'}"]
    (tmp_path / "three.csv").write_text("text,label\n" + "".join(f"review {i},{i % 3}\n" for i in range(30)))
    assert "predicts 2 labels (negative, positive) but the student 3" in error(
        "train", "configs/textcnn-sentiment.yaml", f"run.out_dir={tmp_path / 'a'}", "trainer.batch_size=2",
        f"distill.teacher={classifier_teacher}", *three)
    assert "has another vocabulary than the student" in error(
        "train", "configs/bert-tiny-mlm.yaml", *bert_overrides(tmp_path / "b", **{
            "data.paths": mlm_teacher / "corpus.txt", "distill.teacher": mlm_teacher / "teacher",
            "data.tokenizer.vocab_size": 280, "model.vocab_size": 280}))
    assert "needs a teacher with a masked_lm head" in error(
        "train", "configs/bert-tiny-mlm.yaml", *bert_overrides(tmp_path / "c", **{
            "data.paths": mlm_teacher / "corpus.txt", "distill.teacher": classifier_teacher}))
    assert "is neither a jaxlm run" in error(
        "train", "configs/bert-classify.yaml", *bert_overrides(tmp_path / "d", **{"distill.teacher": tmp_path}))
    assert "distill and trainer.adversarial cannot be combined" in error(
        "train", "configs/bert-classify.yaml", *bert_overrides(tmp_path / "e", **{
            "distill.teacher": classifier_teacher, "trainer.adversarial.method": "fgm"}))


MAX_STEPS = 16


def distill_command(run_dir, root, **extra):
    settings = {"data.paths": root / "corpus.txt", "trainer.max_steps": MAX_STEPS, "trainer.log_every": 1,
                "trainer.eval_every": 1000, "checkpoint.every": 4, "checkpoint.keep": 3,
                "model.num_hidden_layers": 1, "distill.teacher": root / "teacher",
                "data.tokenizer.path": root / "teacher" / "tokenizer", "distill.alpha_kd": 5.0,
                "distill.alpha_ce": 2.0, "distill.alpha_hidden": 1.0, **extra}
    return ["train", "configs/bert-tiny-mlm.yaml", *bert_overrides(run_dir, **settings)]


def test_sigkill_during_distillation_then_resume(mlm_teacher, tmp_path):
    code, _, err = run(distill_command(tmp_path / "whole", mlm_teacher))
    assert code == 0, err
    expected = losses(tmp_path / "whole")
    kill_at = random.Random(os.getpid()).randint(5, MAX_STEPS - 3)
    p = start(distill_command(tmp_path / "run", mlm_teacher))
    wait_for_step(tmp_path / "run", kill_at, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    code, _, err = run(distill_command(tmp_path / "run", mlm_teacher))
    assert code == 0, err
    assert_same_losses(tmp_path / "run", expected)
