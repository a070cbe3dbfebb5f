"""Hugging Face peft is the oracle: its adapters (random non-zero weights) load into jaxlm with its
outputs, export back unchanged, and LoRA merges as ``merge_and_unload`` does (float32, tiny models)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import jaxlm  # noqa: E402
from jaxlm.interop import InteropError  # noqa: E402
from jaxlm.peft.interop import to_adapter  # noqa: E402
from jaxlm.peft.merge import merged_params  # noqa: E402

pytestmark = pytest.mark.torch

GPT2 = dict(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
BERT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32)
T = peft.TaskType
ADAPTERS = {
    "gpt2-lora": ("gpt2", lambda: peft.LoraConfig(task_type=T.CAUSAL_LM, r=4, lora_alpha=8, fan_in_fan_out=True,
                                                  target_modules=["c_attn", "c_proj", "c_fc"])),
    "bert-lora": ("bert", lambda: peft.LoraConfig(task_type=T.SEQ_CLS, r=4, lora_alpha=8, use_rslora=True,
                                                  target_modules=["query", "value", "dense", "word_embeddings"])),
    "bert-prompt": ("bert", lambda: peft.PromptTuningConfig(task_type=T.SEQ_CLS, num_virtual_tokens=3)),
    "bert-p-tuning": ("bert", lambda: peft.PromptEncoderConfig(task_type=T.SEQ_CLS, num_virtual_tokens=3,
                                                               encoder_hidden_size=8)),
    "bert-p-tuning-lstm": ("bert", lambda: peft.PromptEncoderConfig(
        task_type=T.SEQ_CLS, num_virtual_tokens=3, encoder_hidden_size=8, encoder_reparameterization_type="LSTM")),
    "bert-prefix": ("bert", lambda: peft.PrefixTuningConfig(task_type=T.SEQ_CLS, num_virtual_tokens=3)),
    "gpt2-prompt": ("gpt2", lambda: peft.PromptTuningConfig(task_type=T.CAUSAL_LM, num_virtual_tokens=4)),
    "gpt2-prefix": ("gpt2", lambda: peft.PrefixTuningConfig(task_type=T.CAUSAL_LM, num_virtual_tokens=3,
                                                            prefix_projection=True, encoder_hidden_size=8)),
}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """Base models and peft adapters (every trained weight random, non-zero) saved as peft saves them."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    bases = {"gpt2": transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)),
             "bert": transformers.BertForSequenceClassification(transformers.BertConfig(**BERT))}
    for name, model in bases.items():
        model.save_pretrained(root / name)
    for name, (base, make) in ADAPTERS.items():
        model = peft.get_peft_model(load_base(root, base), make())
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.5)
        model.save_pretrained(root / name)
    return root


def load_base(root, base):
    cls = transformers.GPT2LMHeadModel if base == "gpt2" else transformers.BertForSequenceClassification
    return cls.from_pretrained(root / base).eval()


def peft_logits(root, adapter, ids, mask):
    model = peft.PeftModel.from_pretrained(load_base(root, ADAPTERS[adapter][0]), root / adapter).eval()
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()


def inputs():
    ids = np.random.RandomState(0).randint(1, 50, (2, 7))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


def jaxlm_logits(model, params, ids, mask):
    return np.asarray(model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)).logits)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_imported_adapter_gives_peft_outputs(hf, adapter):
    ids, mask = inputs()
    expected = peft_logits(hf, adapter, ids, mask)
    model, params = jaxlm.from_pretrained(hf / adapter)
    got = jaxlm_logits(model, params, ids, mask)
    if expected.ndim == 3:  # peft returns the virtual tokens' positions of prompt tuning too
        expected = expected[:, -got.shape[1]:]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_import_then_export_round_trips(hf, adapter, tmp_path):
    from safetensors.numpy import load_file

    model, params = jaxlm.from_pretrained(hf / adapter)
    out = to_adapter(model, params, tmp_path / "out")
    original, written = load_file(hf / adapter / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert sorted(written) == sorted(original)
    for key in original:
        np.testing.assert_allclose(written[key], original[key], atol=1e-6, rtol=0, err_msg=key)
    kind = json.loads((hf / adapter / "adapter_config.json").read_text())["peft_type"]
    # A P-tuning adapter holds its encoder's output only: it comes back as the prompt it is.
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == \
        {"P_TUNING": "PROMPT_TUNING"}.get(kind, kind)
    # peft itself loads the export, over the base written beside it, with the same outputs.
    ids, mask = inputs()
    base = ADAPTERS[adapter][0]
    cls = transformers.GPT2LMHeadModel if base == "gpt2" else transformers.BertForSequenceClassification
    reloaded = peft.PeftModel.from_pretrained(cls.from_pretrained(out / "base"), out).eval()
    with torch.no_grad():
        again = reloaded(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()
    np.testing.assert_allclose(again, peft_logits(hf, adapter, ids, mask), atol=1e-5, rtol=0)


@pytest.mark.parametrize("adapter", ["gpt2-lora", "bert-lora"])
def test_merged_export_equals_merge_and_unload(hf, adapter, tmp_path):
    ids, mask = inputs()
    base = ADAPTERS[adapter][0]
    reference = peft.PeftModel.from_pretrained(load_base(hf, base), hf / adapter).merge_and_unload().eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()
    model, params = jaxlm.from_pretrained(hf / adapter)
    merged = merged_params(model, params)
    np.testing.assert_allclose(jaxlm_logits(model.base, merged, ids, mask), expected, atol=1e-5, rtol=0)
    jaxlm.save_pretrained(model.base, merged, tmp_path / "merged")
    cls = transformers.GPT2LMHeadModel if base == "gpt2" else transformers.BertForSequenceClassification
    with torch.no_grad():
        exported = cls.from_pretrained(tmp_path / "merged").eval()(
            input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()
    np.testing.assert_allclose(exported, expected, atol=1e-5, rtol=0)


def test_unmerge_restores_the_kernels(hf):
    import jax

    from jaxlm.peft import lora

    model, params = jaxlm.from_pretrained(hf / "bert-lora")
    merged = jax.jit(lambda p: lora.merge(p, model.spec.lora.scale))(params)
    back = lora.unmerge(merged, params, model.spec.lora.scale)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), back, params)


def test_an_adapter_for_another_base_is_one_line(hf, tmp_path):
    other = transformers.BertForSequenceClassification(transformers.BertConfig(**{**BERT, "intermediate_size": 24,
                                                                                   "hidden_size": 24}))
    other.save_pretrained(tmp_path / "other")
    # The first weight that does not fit names its shape and the base's (16 wide against 24).
    with pytest.raises(InteropError, match=r"the adapter does not fit its base: base_model\.model\.bert\.\S+\.lora_"
                                           r"\S+ is \((16, 4|4, 16)\) but bert\.\S+ of the base needs "
                                           r"\((24, 4|4, 24)\)") as e:
        jaxlm.from_pretrained(hf / "bert-lora", base=tmp_path / "other")
    assert "\n" not in str(e.value)
    with pytest.raises(InteropError, match="is not a local Hugging Face model directory: pass base=DIR"):
        jaxlm.from_pretrained(hf / "bert-lora", base=tmp_path / "nothing")


@pytest.mark.parametrize("adapter", ["gpt2-lora", "gpt2-prompt", "gpt2-prefix"])
def test_greedy_generation_matches_peft(hf, adapter):
    prompt = np.asarray([[5, 17, 42, 9, 33]])
    reference = peft.PeftModel.from_pretrained(load_base(hf, "gpt2"), hf / adapter).eval()
    with torch.no_grad():
        expected = reference.generate(input_ids=torch.as_tensor(prompt), attention_mask=torch.ones(1, 5, dtype=torch.long),
                                      max_new_tokens=8, do_sample=False, pad_token_id=0).numpy()[:, -8:]
    model, params = jaxlm.from_pretrained(hf / adapter)
    got = np.asarray(jaxlm.generate(model, params, prompt, max_new_tokens=8))[:, -8:]
    np.testing.assert_array_equal(got, expected)
