"""Model registry: ``type`` in a config -> its config class and one Flax module per head.

A task asks for the head it needs (``causal_lm``, ``masked_lm``, ``classification``, ...)
and the registry answers with the module, so adding a model is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn

from jaxlm.errors import JaxlmError
from jaxlm.models import bert, distilbert, gpt2, vit, lstm_seq2seq, seq2seq
from jaxlm.models import dcgan, mlp, resnet, rnn, text_cnn, word2vec
from jaxlm.models.base import ModelConfig, TorchKeyMap
from jaxlm.models.contrastive import ContrastiveModel


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
    "resnet": ModelFamily(resnet.ResNetConfig, {"base": resnet.ResNetModel,
                                                "image_classification": resnet.ResNetForImageClassification}),
    "mlp": ModelFamily(mlp.MLPConfig, {"regression": mlp.MLPForRegression}),
    "dcgan": ModelFamily(dcgan.DCGANConfig, {"gan": dcgan.DCGAN}),
    "transformer_seq2seq": ModelFamily(seq2seq.TransformerSeq2SeqConfig, {"seq2seq": seq2seq.TransformerSeq2Seq}),
    "lstm_seq2seq": ModelFamily(lstm_seq2seq.LSTMSeq2SeqConfig, {"seq2seq": lstm_seq2seq.LSTMSeq2Seq}),
    "word2vec": ModelFamily(word2vec.Word2VecConfig, {"word2vec": word2vec.Word2Vec}),
}


class ModelError(JaxlmError):
    pass


def build_model(config: ModelConfig, head: str, **module_kwargs) -> nn.Module:
    family = MODEL_FAMILIES[config.type]
    if head == "contrastive":
        return ContrastiveModel(config, *contrastive_trunk(config), **module_kwargs)
    if head not in family.heads:
        raise ModelError(f"model type {config.type!r} has no {head!r} head; it has: "
                         f"{', '.join(sorted(family.heads))}")
    return family.heads[head](config, **module_kwargs)


def contrastive_trunk(config: ModelConfig) -> tuple[type[nn.Module], str | None]:
    """The base model class a contrastive model wraps, and its trunk's param name in the family's
    head models (``None``: flat); a family without a base model has no embedding output."""
    family = MODEL_FAMILIES[config.type]
    if "base" not in family.heads:
        usable = ", ".join(sorted(n for n, f in MODEL_FAMILIES.items() if "base" in f.heads))
        raise ModelError(f"model type {config.type!r} has no embedding output (no base model) to train "
                         f"contrastively; use one of: {usable}")
    return family.heads["base"], family.torch_keys.prefix if family.torch_keys else None


def head_of(model: nn.Module) -> str:
    """The registry name of a built model's head (``causal_lm``, ``masked_lm``, ...)."""
    heads = MODEL_FAMILIES[model.config.type].heads
    module = getattr(model, "module", model)  # a StatefulModel's module
    if isinstance(module, ContrastiveModel):
        return "contrastive"
    return next(h for h, cls in heads.items() if cls is type(module))
