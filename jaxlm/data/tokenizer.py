"""Tokenizers through HF ``tokenizers``: train a byte-level BPE, a BERT WordPiece or a
word-level vocabulary, or load existing files.

Loadable: a ``tokenizer.json`` (any kind: Llama's, Qwen2's, Mistral's ...), GPT-2's or RoBERTa's
``vocab.json`` + ``merges.txt``, or BERT's WordPiece ``vocab.txt`` (lower-cased when ``tokenizer_config.json`` says so).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from jaxlm.errors import DataError

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
FILE = "tokenizer.json"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORD_SPECIALS = ["<PAD>", "<UNK>"]
ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def segment_words(text: str, segmenter: str | None) -> str:
    """``segmenter="jieba"``: the text with spaces between its Chinese words (jieba's bundled
    dictionary), so a word vocabulary sees words rather than single characters. HF
    ``tokenizers`` cannot hold a Python segmenter in ``tokenizer.json``; the run's config
    (``data.tokenizer.segmenter``) says to apply it."""
    if not segmenter:
        return text
    try:
        import jieba
    except ImportError:
        raise DataError("data.tokenizer.segmenter=jieba needs jieba: pip install 'jaxlm[text]'") from None
    import logging

    jieba.setLogLevel(logging.WARNING)
    return " ".join(w for w in jieba.cut(text) if w.strip())


class Tokenizer:
    """A thin wrapper that knows its end-of-text id: ``eos_token`` when given (a Hugging Face
    directory's ``tokenizer_config.json`` names it), else ``<|endoftext|>``, ``[SEP]`` or ``</s>``;
    and the word segmenter its texts go through first (``None``: none)."""

    def __init__(self, tok: tokenizers.Tokenizer, segmenter: str | None = None, eos_token: str | None = None):
        self.tok = tok
        self.segmenter = segmenter
        for name in (eos_token, EOS, "[SEP]", "</s>"):
            if name is not None and tok.token_to_id(name) is not None:
                self.eos_token, self.eos_id = name, tok.token_to_id(name)
                break
        else:
            self.eos_token, self.eos_id = None, None

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok.encode(segment_words(text, self.segmenter), add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        texts = [segment_words(t, self.segmenter) for t in texts]
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    @property
    def special_ids(self) -> list[int]:
        """Ids of the special tokens (``[CLS]``, ``[PAD]``, ``<|endoftext|>``, ...)."""
        return sorted(i for i, t in self.tok.get_added_tokens_decoder().items() if t.special)

    @property
    def continuation_prefix(self) -> str | None:
        """WordPiece's prefix of word-continuing pieces (``##``); ``None`` for other kinds."""
        model = self.tok.model
        return model.continuing_subword_prefix if isinstance(model, models.WordPiece) else None

    def save(self, directory: Path, vocab_files: bool = False) -> None:
        """Write ``tokenizer.json``; with ``vocab_files`` also the model's own files (WordPiece
        ``vocab.txt`` + ``tokenizer_config.json``, BPE ``vocab.json`` + ``merges.txt``) for
        tools that read those."""
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (FILE + ".tmp")
        self.tok.save(str(tmp))
        tmp.replace(directory / FILE)
        if vocab_files:
            self.tok.model.save(str(directory))
            if self.continuation_prefix is not None:
                lowercase = getattr(self.tok.normalizer, "lowercase", False)
                (directory / "tokenizer_config.json").write_text(json.dumps(
                    {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase}) + "\n")


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE as GPT-2 builds it: no unknown tokens, ``<|endoftext|>`` as the only special."""
    if vocab_size <= 256:
        raise DataError(f"a byte-level BPE of {vocab_size} tokens cannot hold its 256 byte tokens; ask for at least "
                        "257 (data.tokenizer.vocab_size, --vocab-size)")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tok)


def train_roberta_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE as RoBERTa builds it: ``<s> <pad> </s> <unk> <mask>`` as ids 0-4,
    ``<s> A </s></s> B </s>`` framing."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=ROBERTA_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    _roberta_framing(tok)
    return Tokenizer(tok)


def _roberta_framing(tok: tokenizers.Tokenizer) -> None:
    """RoBERTa's special tokens marked as such and ``<s> A </s></s> B </s>`` framing, as transformers 5's
    RobertaTokenizer builds them from vocabulary files (its ``<mask>`` keeps the space before it apart;
    a tokenizer.json carries its own setting)."""
    _mark_special(tok, ROBERTA_SPECIALS)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")), add_prefix_space=False)


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> Tokenizer:
    """BERT's WordPiece: BERT normalisation and pre-tokenization (CJK characters are words of
    their own), ``[PAD] [UNK] [CLS] [SEP] [MASK]`` as ids 0-4, ``[CLS] A [SEP] B [SEP]`` framing."""
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIALS, show_progress=False)
    _bert_pipeline(tok, lowercase)
    tok.train_from_iterator(texts, trainer=trainer)
    _bert_framing(tok)
    return Tokenizer(tok)


def train_wordlevel(texts: Iterable[str], vocab_size: int, min_frequency: int = 1, lowercase: bool = True,
                    segmenter: str | None = None) -> Tokenizer:
    """A word vocabulary for the classic text models: ``<PAD>`` = 0, ``<UNK>`` = 1, then the
    words of ``texts`` seen at least ``min_frequency`` times, most frequent first (ties in
    alphabetical order), at most ``vocab_size`` entries in all. Words are split at spaces
    and punctuation; Chinese, Japanese and Korean characters are words of their own, unless
    ``segmenter="jieba"`` finds the Chinese words first."""
    tok = tokenizers.Tokenizer(models.WordLevel(unk_token="<UNK>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=False,
                                                handle_chinese_chars=segmenter is None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()  # joins words with spaces, no space before punctuation
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=WORD_SPECIALS, show_progress=False)
    tok.train_from_iterator((segment_words(t, segmenter) for t in texts), trainer=trainer)
    return Tokenizer(tok, segmenter)


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int, **options) -> Tokenizer:
    """``options``: ``min_frequency`` and ``lowercase`` of a word vocabulary."""
    return {"bpe": train_bpe, "wordpiece": train_wordpiece, "word": train_wordlevel,
            "roberta_bpe": train_roberta_bpe}[kind](texts, vocab_size, **options)


def load_tokenizer(path: str | Path, segmenter: str | None = None) -> Tokenizer:
    path = Path(path)
    if path.is_file() and path.name.endswith(".json"):
        return Tokenizer(tokenizers.Tokenizer.from_file(str(path)), segmenter)
    if not path.is_dir():
        raise DataError(f"tokenizer path {str(path)!r} does not exist")
    if (path / FILE).is_file():
        return Tokenizer(tokenizers.Tokenizer.from_file(str(path / FILE)), segmenter, _configured_eos(path))
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        return _byte_level_files(path)
    if (path / "vocab.txt").is_file():
        return _wordpiece_files(path)
    raise DataError(f"no tokenizer in {path}: expected tokenizer.json, vocab.json + merges.txt, or vocab.txt")


def same_vocabulary(a: str | Path, b: str | Path) -> bool:
    """Whether the tokenizers at ``a`` and ``b`` give every token the same id (so one model's
    embeddings read the other's ids)."""
    return load_tokenizer(a).tok.get_vocab() == load_tokenizer(b).tok.get_vocab()


def _configured_eos(path: Path) -> str | None:
    """The ``eos_token`` a Hugging Face directory's ``tokenizer_config.json`` names (Llama 3's
    ``<|end_of_text|>``, ...), if any."""
    config = path / "tokenizer_config.json"
    if not config.is_file():
        return None
    eos = json.loads(config.read_text()).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


def _byte_level_files(path: Path) -> Tokenizer:
    """GPT-2's ``vocab.json`` + ``merges.txt``; with ``<s>`` and ``</s>`` in the vocabulary, RoBERTa's:
    its special tokens and ``<s> A </s></s> B </s>`` framing."""
    tok = tokenizers.Tokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    if bos is None or eos is None:
        _mark_special(tok, [EOS])
        return Tokenizer(tok, eos_token=_configured_eos(path))
    _roberta_framing(tok)
    return Tokenizer(tok, eos_token=_configured_eos(path))


def _mark_special(tok: tokenizers.Tokenizer, names: list[str]) -> None:
    """Bare vocabulary files do not say which tokens are special; without this, ``[MASK]``
    typed in a text would be split into pieces."""
    tok.add_special_tokens([n for n in names if tok.token_to_id(n) is not None])


def _wordpiece_files(path: Path) -> Tokenizer:
    lowercase = True
    config = path / "tokenizer_config.json"
    if config.is_file():
        lowercase = json.loads(config.read_text()).get("do_lower_case", True)
    tok = tokenizers.Tokenizer(models.WordPiece.from_file(str(path / "vocab.txt"), unk_token="[UNK]"))
    _bert_pipeline(tok, lowercase)
    _mark_special(tok, BERT_SPECIALS)
    _bert_framing(tok)
    return Tokenizer(tok)


def _bert_pipeline(tok: tokenizers.Tokenizer, lowercase: bool) -> None:
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()


def _bert_framing(tok: tokenizers.Tokenizer) -> None:
    """``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with token types 0 / 1, when both tokens exist."""
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls is not None and sep is not None:
        tok.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))


def configured_path(path: str | Path | None, run_copy: Path) -> str | Path | None:
    """``data.tokenizer.path``, or the run's own copy of it (``run_copy``) once it no longer exists:
    a trained run stays readable after its tokenizer moves."""
    if path is not None and not Path(path).exists() and (run_copy / FILE).is_file():
        log.info("data.tokenizer.path=%s does not exist (moved?): reading the run's copy in %s", path, run_copy)
        return run_copy
    return path


def get_tokenizer(path: str | None, vocab_size: int, train_texts: list[str], cache_dir: Path,
                  kind: str = "bpe", **options) -> Tokenizer:
    """The configured tokenizer, or one of ``kind`` trained on ``train_texts`` (cached in ``cache_dir``).

    In a multi-process job, process 0 trains and saves it; the others then load the file.
    A configured tokenizer is copied into ``cache_dir`` too, so a run directory is self-contained.
    A word vocabulary (``kind="word"``) may come out smaller than ``vocab_size``, its maximum.
    """
    import jax

    path = configured_path(path, cache_dir)
    if path is not None:
        tok = load_tokenizer(path, options.get("segmenter"))
        if jax.process_index() == 0 and Path(path).resolve() != cache_dir.resolve():
            tok.save(cache_dir)  # the run keeps its own copy: it stays usable when ``path`` moves
        return tok
    from jaxlm.parallel.distributed import main_process_first

    return main_process_first(lambda: _cached_or_trained(kind, vocab_size, train_texts, cache_dir, **options))


def _cached_or_trained(kind: str, vocab_size: int, train_texts: list[str], cache_dir: Path, **options) -> Tokenizer:
    def fits(tok):
        return tok.vocab_size <= vocab_size if kind == "word" else tok.vocab_size == vocab_size

    if (cache_dir / FILE).is_file():
        tok = load_tokenizer(cache_dir, options.get("segmenter"))
        if not fits(tok):
            raise DataError(f"{cache_dir / FILE} has {tok.vocab_size} tokens but data.tokenizer.vocab_size="
                            f"{vocab_size}; use a new run.out_dir or delete the cached tokenizer")
        return tok
    tok = train_to_size(kind, train_texts, vocab_size, **options)
    tok.save(cache_dir)
    return tok


def train_to_size(kind: str, texts: Iterable[str], vocab_size: int, **options) -> Tokenizer:
    """:func:`train_tokenizer`, failing with the fix when the text cannot give ``vocab_size`` tokens
    (a word vocabulary may come out smaller: ``vocab_size`` is its maximum)."""
    tok = train_tokenizer(kind, texts, vocab_size, **options)
    if tok.vocab_size > vocab_size or (kind != "word" and tok.vocab_size != vocab_size):
        # a small text has fewer pieces (or a bigger alphabet) than asked for
        raise DataError(f"the training text yields a {kind} vocabulary of {tok.vocab_size} tokens, not "
                        f"data.tokenizer.vocab_size={vocab_size}; set data.tokenizer.vocab_size={tok.vocab_size} "
                        f"(and model.vocab_size to match)")
    return tok
