"""What the BERT-style tasks (``mlm``, ``classification``) share: a WordPiece tokenizer that
fits the model, ``[CLS] A [SEP] (B [SEP])`` rows, and the model's inputs."""

from __future__ import annotations

from pathlib import Path


from jaxlm.config import Config
from jaxlm.data.bert_inputs import Framer
from jaxlm.data.tokenizer import Tokenizer, get_tokenizer
from jaxlm.errors import DataError
from jaxlm.tasks.base import ArrayTask


def encoder_tokenizer(config: Config, train_texts: list[str] | Tokenizer, run_dir: Path, needs: tuple[str, ...]
                      ) -> Tokenizer:
    """The configured tokenizer, or a WordPiece trained on ``train_texts`` (or the tokenizer
    given there: prepared data's); it must hold the special tokens ``needs`` and exactly
    ``model.vocab_size`` tokens."""
    t = config.data.tokenizer
    where = t.path or run_dir / "tokenizer"
    tok = train_texts if isinstance(train_texts, Tokenizer) else \
        get_tokenizer(t.path, t.vocab_size, train_texts, run_dir / "tokenizer", kind="wordpiece")
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
                        "[PAD] [UNK] [CLS] [SEP] [MASK] (jaxlm tokenizer train --kind wordpiece)")


def framer(tok: Tokenizer, length: int) -> Framer:
    require_tokens(tok, ("[CLS]", "[SEP]", "[PAD]"))
    return Framer(tok.token_id("[CLS]"), tok.token_id("[SEP]"), tok.token_id("[PAD]"), length)


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
