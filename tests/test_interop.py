"""Parity with transformers (PyTorch) for every importable architecture: outputs, hidden
states and attentions, gradients and an AdamW step, the export round trip, ``.bin`` files,
tokenizers and fill-mask. Checkpoints are tiny random-weight models saved to tmp dirs."""

import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxlm.data.tokenizer import load_tokenizer, train_bpe  # noqa: E402
from jaxlm.interop import InteropError, from_pretrained, save_pretrained  # noqa: E402
from jaxlm.interop.commands import fill_mask  # noqa: E402
from jaxlm.interop.hf import architectures  # noqa: E402
from jaxlm.interop.parity import (  # noqa: E402
    compare_outputs, compare_training_step, example_inputs, random_checkpoint)

ARCHITECTURES = sorted(architectures())
WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "hat", "and", "is", "big", "small", ".", ",",
         "##s", "##ing", "##ed", "hello", "world", "!", "jax", "torch"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
VOCAB += [f"[unused{i}]" for i in range(99 - len(VOCAB))]  # the tiny configs have 99 tokens
TEXTS = ["The cat sat on the mat.", "Hello, world! Dogs running under big hats", "jax and torch"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A cached tiny random checkpoint per architecture."""
    made = {}

    def get(architecture):
        if architecture not in made:
            made[architecture] = random_checkpoint(architecture, tmp_path_factory.mktemp(architecture))
        return made[architecture]

    return get


def inputs_for(directory):
    return example_inputs(transformers.AutoConfig.from_pretrained(directory))


def torch_model(directory):
    cls = getattr(transformers, transformers.AutoConfig.from_pretrained(directory).architectures[0])
    return cls.from_pretrained(directory, attn_implementation="eager").eval()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_outputs_hidden_states_and_attentions_match(architecture, checkpoint):
    directory = checkpoint(architecture)
    diffs = compare_outputs(directory, inputs_for(directory))
    assert {"hidden_states", "attentions"} <= diffs.keys() and len(diffs) >= 3
    assert max(diffs.values()) <= 1e-5, diffs


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gradients_and_one_adamw_step_match(architecture, checkpoint):
    directory = checkpoint(architecture)
    diffs = compare_training_step(directory, inputs_for(directory))
    assert diffs["gradients (max relative)"] <= 1e-4, diffs
    assert diffs["zero-gradient noise (relative)"] <= 1e-6, diffs
    assert diffs["params after one AdamW step"] <= 1e-6, diffs


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_export_round_trip_loads_in_transformers_with_identical_outputs(architecture, checkpoint, tmp_path):
    directory = checkpoint(architecture)
    model, params = from_pretrained(directory)
    exported = save_pretrained(model, params, tmp_path / "exported")
    cls = getattr(transformers, architecture)
    reloaded, info = cls.from_pretrained(exported, attn_implementation="eager", output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    inputs = {k: torch.from_numpy(v) for k, v in inputs_for(directory).items()}
    with torch.no_grad():
        want, got = torch_model(directory)(**inputs), reloaded.eval()(**inputs)
    tensors = {name for name, value in want.items() if torch.is_tensor(value)}  # not GPT-2's KV cache
    assert tensors and all(torch.equal(want[name], got[name]) for name in tensors)


def test_pytorch_bin_with_tied_copies(checkpoint, tmp_path):
    original = torch_model(checkpoint("BertForPreTraining"))
    original.config.save_pretrained(tmp_path)
    state = original.state_dict()
    assert "cls.predictions.decoder.weight" in state  # the tied copy an old .bin carries
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert max(compare_outputs(tmp_path, inputs_for(tmp_path)).values()) <= 1e-5


def test_truncated_pytorch_bin(checkpoint, tmp_path):
    original = torch_model(checkpoint("GPT2Model"))
    original.config.save_pretrained(tmp_path)
    torch.save(original.state_dict(), tmp_path / "pytorch_model.bin")
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(InteropError, match="pytorch_model.bin is truncated or corrupt") as info:
        from_pretrained(tmp_path)
    assert "\n" not in str(info.value)


def test_wordpiece_tokenizer_matches_transformers(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    want = transformers.BertTokenizer.from_pretrained(tmp_path)
    got = load_tokenizer(tmp_path)
    for text in TEXTS:
        assert got.encode(text, add_special_tokens=True) == want(text)["input_ids"], text
    want.save_pretrained(tmp_path / "saved")  # tokenizer.json
    for text in [*TEXTS, "the [MASK] sat"]:
        assert load_tokenizer(tmp_path / "saved").encode(text, add_special_tokens=True) == want(text)["input_ids"]


def test_gpt2_tokenizer_matches_transformers(tmp_path):
    bpe = train_bpe(TEXTS * 20, vocab_size=300)
    bpe.tok.model.save(str(tmp_path))  # vocab.json + merges.txt
    want = transformers.GPT2Tokenizer.from_pretrained(tmp_path)
    for text in [*TEXTS, "  spaced  out\nnew line"]:
        assert load_tokenizer(tmp_path).encode(text) == want(text)["input_ids"], text


@pytest.mark.parametrize("tokenizer_file", ["vocab.txt", "tokenizer.json"])
def test_fill_mask_matches_transformers(checkpoint, tmp_path, tokenizer_file):
    directory = shutil.copytree(checkpoint("BertForMaskedLM"), tmp_path / "model")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = transformers.BertTokenizer.from_pretrained(directory)
    if tokenizer_file == "tokenizer.json":
        (directory / "vocab.txt").unlink()
        tokenizer.save_pretrained(directory)
    text = "the cat [MASK] on the mat."
    model, params = from_pretrained(directory)
    got = fill_mask(model, params, load_tokenizer(directory), text, top_k=3)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = torch_model(directory)(ids).logits[0, (ids[0] == tokenizer.mask_token_id).nonzero()[0, 0]]
    probs, best = logits.softmax(-1).topk(3)
    assert [t for t, _ in got] == [tokenizer.decode([int(i)]) for i in best]
    np.testing.assert_allclose([p for _, p in got], probs.numpy(), atol=1e-6)
    with pytest.raises(InteropError, match="exactly one"):
        fill_mask(model, params, load_tokenizer(directory), "no mask here")


def test_fill_mask_needs_a_masked_lm(checkpoint, tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    with pytest.raises(InteropError, match="fill-mask needs a masked-LM checkpoint"):
        fill_mask(*from_pretrained(checkpoint("BertModel")), load_tokenizer(tmp_path), "the [MASK]")


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["BertForMaskedLM", "GPT2LMHeadModel"])
def test_full_size_random_weights(architecture, tmp_path):
    """bert-base and gpt2 (124M) at transformers' default sizes: one forward each."""
    directory = random_checkpoint(architecture, tmp_path, tiny=False)
    diffs = compare_outputs(directory, inputs_for(directory))
    assert diffs["logits"] <= 1e-4, diffs
