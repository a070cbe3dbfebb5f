"""Model registry: ``type`` in a config -> its config class and one Flax module per head.

A task asks for the head it needs (``causal_lm``, ``masked_lm``, ``classification``, ...)
and the registry answers with the module, so adding a model is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn

from jaxlm.errors import JaxlmError
from jaxlm.models import bert, distilbert, gpt2, vit, lstm_seq2seq, seq2seq
from jaxlm.models import resnet, rnn, text_cnn
from jaxlm.models.base import ModelConfig, TorchKeyMap


@dataclass(frozen=True)
class ModelFamily:
    config: type[ModelConfig]
    heads: dict[str, type[nn.Module]]
    torch_keys: TorchKeyMap | None = None
    """How its params are named in PyTorch checkpoints (None: no PyTorch counterpart)."""


MODEL_FAMILIES: dict[str, ModelFamily] = {
    "gpt2": ModelFamily(gpt2.GPT2Config, {"base": gpt2.GPT2Model, "causal_lm": gpt2.GPT2LMHeadModel},
                        gpt2.TORCH_KEY_MAP),
    "bert": ModelFamily(bert.BertConfig, {
        "base": bert.BertModel,
        "masked_lm": bert.BertForMaskedLM,
        "pretraining": bert.BertForPreTraining,
        "next_sentence": bert.BertForNextSentencePrediction,
        "classification": bert.BertForSequenceClassification,
        "token_classification": bert.BertForTokenClassification,
        "question_answering": bert.BertForQuestionAnswering,
    }, bert.TORCH_KEY_MAP),
    "distilbert": ModelFamily(distilbert.DistilBertConfig, {
        "base": distilbert.DistilBertModel,
        "masked_lm": distilbert.DistilBertForMaskedLM,
        "classification": distilbert.DistilBertForSequenceClassification,
    }, distilbert.TORCH_KEY_MAP),
    "vit": ModelFamily(vit.ViTConfig, {
        "base": vit.ViTModel,
        "image_classification": vit.ViTForImageClassification,
    }, vit.TORCH_KEY_MAP),
    "text_cnn": ModelFamily(text_cnn.TextCNNConfig, {"classification": text_cnn.TextCNNForSequenceClassification}),
    "rnn": ModelFamily(rnn.RNNConfig, {"classification": rnn.RNNForSequenceClassification}),
    "resnet": ModelFamily(resnet.ResNetConfig, {"image_classification": resnet.ResNetForImageClassification}),
    "transformer_seq2seq": ModelFamily(seq2seq.TransformerSeq2SeqConfig, {"seq2seq": seq2seq.TransformerSeq2Seq}),
    "lstm_seq2seq": ModelFamily(lstm_seq2seq.LSTMSeq2SeqConfig, {"seq2seq": lstm_seq2seq.LSTMSeq2Seq}),
}


class ModelError(JaxlmError):
    pass


def build_model(config: ModelConfig, head: str, **module_kwargs) -> nn.Module:
    family = MODEL_FAMILIES[config.type]
    if head not in family.heads:
        raise ModelError(f"model type {config.type!r} has no {head!r} head; it has: "
                         f"{', '.join(sorted(family.heads))}")
    return family.heads[head](config, **module_kwargs)


def head_of(model: nn.Module) -> str:
    """The registry name of a built model's head (``causal_lm``, ``masked_lm``, ...)."""
    heads = MODEL_FAMILIES[model.config.type].heads
    module = getattr(model, "module", model)  # a StatefulModel's module
    module = getattr(module, "base", module)  # a PeftModel's
    # isinstance: a quantized model is a subclass of its head class (jaxlm.compress.quantize)
    return next(h for h, cls in heads.items() if isinstance(module, cls))
