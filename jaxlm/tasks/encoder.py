"""What the BERT-style tasks (``mlm``, ``classification``) share: a tokenizer that fits the model
(WordPiece for BERT, byte-level BPE for RoBERTa), ``[CLS] A [SEP] (B [SEP])`` rows (RoBERTa:
``<s> A </s> (</s> B </s>)``), and the model's inputs."""

from __future__ import annotations

from pathlib import Path


from jaxlm.config import Config
from jaxlm.data.bert_inputs import Framer
from jaxlm.data.tokenizer import Tokenizer, get_tokenizer
from jaxlm.errors import DataError
from jaxlm.tasks.base import ArrayTask

BERT_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[MASK]")
ROBERTA_TOKENS = ("<s>", "</s>", "<pad>", "<mask>")  # the same roles, RoBERTa's names


def encoder_tokenizer(config: Config, train_texts: list[str] | Tokenizer, run_dir: Path, needs: tuple[str, ...]
                      ) -> Tokenizer:
    """The configured tokenizer, or one trained on ``train_texts`` (WordPiece; for RoBERTa a byte-level
    BPE), or the tokenizer given there (prepared data's); it must hold the special tokens ``needs``
    (BERT's names; RoBERTa's counterparts for RoBERTa) and exactly ``model.vocab_size`` tokens."""
    t = config.data.tokenizer
    where = t.path or run_dir / "tokenizer"
    roberta = config.model.type == "roberta"
    tok = train_texts if isinstance(train_texts, Tokenizer) else \
        get_tokenizer(t.path, t.vocab_size, train_texts, run_dir / "tokenizer",
                      kind="roberta_bpe" if roberta else "wordpiece")
    if roberta:
        needs = tuple(ROBERTA_TOKENS[BERT_TOKENS.index(n)] if n in BERT_TOKENS else n for n in needs)
    require_tokens(tok, needs, f"the tokenizer in {where}")
    if tok.vocab_size != config.model.vocab_size:
        raise DataError(f"the tokenizer in {where} has {tok.vocab_size} tokens but model.vocab_size="
                        f"{config.model.vocab_size}; set model.vocab_size={tok.vocab_size}, or use the tokenizer "
                        "the model was trained with")
    return tok


def require_tokens(tok: Tokenizer, names: tuple[str, ...], what: str = "the tokenizer") -> None:
    missing = [name for name in names if tok.token_id(name) is None]
    if missing:
        raise DataError(f"{what} has no {' '.join(missing)}; BERT-style models need a WordPiece vocabulary with "
                        "[PAD] [UNK] [CLS] [SEP] [MASK] (jaxlm tokenizer train --kind wordpiece), RoBERTa a "
                        "byte-level BPE with <s> <pad> </s> <unk> <mask>")


def _is_roberta(tok: Tokenizer) -> bool:
    return tok.token_id("[CLS]") is None and tok.token_id("<s>") is not None


def framer(tok: Tokenizer, length: int) -> Framer:
    """BERT's framing, or RoBERTa's for a tokenizer with ``<s>`` and no ``[CLS]``."""
    cls, sep, pad, _ = ROBERTA_TOKENS if _is_roberta(tok) else BERT_TOKENS
    require_tokens(tok, (cls, sep, pad))
    return Framer(tok.token_id(cls), tok.token_id(sep), tok.token_id(pad), length, roberta=_is_roberta(tok))


def mask_token(tok: Tokenizer) -> str:
    return ROBERTA_TOKENS[3] if _is_roberta(tok) else BERT_TOKENS[3]


class EncoderTask(ArrayTask):
    """Training on ``self.train`` and evaluation on ``self.valid``: dicts of row arrays with
    ``input_ids``, ``token_type_ids`` and ``attention_mask`` (0 on padding, so the all-zero
    rows that pad the last eval batch carry no weight)."""

    def __init__(self, config: Config):
        self.seed = config.run.seed
        self.token_types = hasattr(config.model, "type_vocab_size")  # DistilBERT has none

    def model_inputs(self, batch):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.token_types:
            inputs["token_type_ids"] = batch["token_type_ids"]
        return inputs

    @staticmethod
    def apply(model, params, inputs, dropout_rng):
        return model.apply({"params": params}, **inputs,
                           rngs={"dropout": dropout_rng} if dropout_rng is not None else None)
