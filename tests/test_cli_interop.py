"""The interop commands end to end: generate --model, convert both ways, init_from a converted run."""

import numpy as np
import pytest

from jaxlm.cli import main

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """A tiny random transformers GPT-2 with a byte-level BPE tokenizer.json beside it."""
    from jaxlm.data.corpus import embedded_corpus
    from jaxlm.data.tokenizer import train_bpe

    directory = tmp_path_factory.mktemp("hf-gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    train_bpe(embedded_corpus()[:5], 300).save(directory)
    return directory


def output(capsys):
    return capsys.readouterr().out.strip()


def test_generate_convert_and_back(hf_gpt2, tmp_path, capsys):
    prompt = ["--prompt", "The import statement", "--max-new-tokens", "8"]
    assert main(["generate", "--model", str(hf_gpt2), *prompt]) == 0
    from_hf = output(capsys)
    assert from_hf.startswith("The import statement")

    run = tmp_path / "converted"
    assert main(["convert", "--from-torch", str(hf_gpt2), "--out", str(run)]) == 0
    assert "model.init_from" in output(capsys)
    assert main(["generate", "--run", str(run), *prompt]) == 0
    assert output(capsys) == from_hf

    exported = tmp_path / "exported"
    assert main(["convert", "--to-torch", str(run), "--out", str(exported)]) == 0
    capsys.readouterr()
    ids = torch.tensor([[5, 17, 250, 3, 99]])
    with torch.no_grad():
        want = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2)(ids).logits
        got = transformers.GPT2LMHeadModel.from_pretrained(exported)(ids).logits
    np.testing.assert_array_equal(want.numpy(), got.numpy())
    assert (exported / "tokenizer.json").is_file()


def test_converted_weights_start_a_run_but_cannot_be_resumed(hf_gpt2, tmp_path, capsys):
    run = tmp_path / "converted"
    assert main(["convert", "--from-torch", str(hf_gpt2), "--out", str(run)]) == 0
    common = [f"data.tokenizer.path={hf_gpt2}", "data.seq_len=32", "trainer.batch_size=2", "trainer.max_steps=2",
              "trainer.eval_batches=1", "trainer.progress_bar=false", "checkpoint.every=2"]
    assert main(["train", str(run / "config.yaml"), f"run.out_dir={tmp_path / 'tuned'}", f"model.init_from={run}",
                 *common]) == 0
    capsys.readouterr()
    assert main(["train", str(run / "config.yaml"), *common]) == 2
    assert "holds weights only" in capsys.readouterr().err
    assert main(["convert", "--from-torch", str(hf_gpt2), "--out", str(run)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
