"""Text cleaning for English and Chinese: small named steps, composed in order, each counted.

A :class:`Cleaner` runs its steps on every text; a step maps a text to a new text, or drops
the row (``None``: the length and script filters, and any text a step leaves empty). It
counts, per step, the rows it changed, the characters it removed (net: masking can add some)
and the rows it dropped; :meth:`Cleaner.report` returns them for the report written beside a
cleaned file. ``jaxlm data clean`` (:mod:`jaxlm.data.clean_files`) runs one over text, CSV
and JSONL files.

Steps (``STEPS``; ``DEFAULT_STEPS`` per language):

``html``            tags dropped (script / style with their content), entities unescaped
``urls`` ``emails`` ``phones``   removed, or with ``mask=True`` replaced by ``<URL>`` ``<EMAIL>`` ``<PHONE>``
``nfkc``            Unicode NFKC (compatibility forms, full-width letters and digits, ligatures)
``fullwidth``       full-width ASCII forms and the ideographic space to half-width, nothing else
``t2s``             traditional -> simplified Chinese (OpenCC ``t2s``)
``zh_punctuation``  Chinese punctuation (``zhon.hanzi.punctuation``) replaced by a space
``punctuation``     any Unicode punctuation (categories P*) replaced by a space
``symbols``         Unicode symbols (S*: currency, maths, emoji, ...) replaced by a space
``digits``          numbers removed, or masked as ``<NUM>``
``lowercase``       case-folded
``repeated_chars``  runs of one character longer than ``max_repeat`` cut to it (``soooo`` -> ``soo``)
``repeated_words``  a word (English) or a 2-4 character Han sequence (Chinese) repeated back to back, once
``stopwords``       stop words removed (scikit-learn's English list; ``stop-words``' Chinese list,
                    words found by jieba)
``whitespace``      runs of whitespace to one space, ends stripped
``length``          rows outside ``[min_chars, max_chars]`` characters dropped (empty rows, outliers)
``script``          rows whose letters are less than ``min_script`` Latin (en) / Han (zh) dropped
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Callable, Literal

from jaxlm.errors import DataError

Lang = Literal["en", "zh"]

URL = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"'，。！？、；：（）《》【】]+", re.IGNORECASE)
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<![A-Za-z0-9+])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}(?![A-Za-z0-9])"
                   r"|(?<!\d)1[3-9]\d{9}(?!\d)")  # (international) landlines; mainland Chinese mobiles
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
WHITESPACE = re.compile(r"\s+")
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")


class _TextOfHTML(HTMLParser):
    """The text of an HTML fragment: tags removed (block tags and ``<br>`` leave a space),
    entities decoded, ``<script>`` / ``<style>`` content dropped."""

    SKIP = {"script", "style"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skipping = [], 0

    def handle_starttag(self, tag, attrs):
        self.skipping += tag in self.SKIP
        self.parts.append(" ")

    def handle_endtag(self, tag):
        self.skipping -= tag in self.SKIP and self.skipping > 0
        self.parts.append(" ")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def strip_html(text: str) -> str:
    if "<" not in text and "&" not in text:
        return text
    parser = _TextOfHTML()
    parser.feed(text)
    parser.close()
    return html.unescape("".join(parser.parts))  # entities the parser left (inside odd markup)


def fullwidth_to_halfwidth(text: str) -> str:
    return "".join(chr(ord(c) - 0xFEE0) if "\uff01" <= c <= "\uff5e" else " " if c == "\u3000" else c for c in text)


def remove_categories(text: str, prefix: str) -> str:
    """Characters whose Unicode category starts with ``prefix`` (``P`` punctuation, ``S`` symbols) -> space."""
    return "".join(" " if unicodedata.category(c).startswith(prefix) else c for c in text)


def script_share(text: str, lang: Lang) -> float:
    """Share of the text's letters (and Han characters) in the language's script."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    pattern = HAN if lang == "zh" else LATIN
    return sum(1 for c in letters if pattern.match(c)) / len(letters)


@dataclass
class Options:
    """Settings of the steps that take any."""

    lang: Lang = "en"
    mask: bool = False
    """urls / emails / phones / digits: replace by a placeholder instead of removing (sensitive data)."""
    max_repeat: int = 2
    min_chars: int = 1
    max_chars: int | None = None
    min_script: float = 0.5

    def __post_init__(self):
        if self.lang not in ("en", "zh"):
            raise DataError(f"language {self.lang!r} has no cleaning steps; choose en or zh")
        if self.max_repeat < 1:
            raise DataError(f"--max-repeat {self.max_repeat}: keep runs of at least 1 character")
        if self.min_chars < 0 or (self.max_chars is not None and self.max_chars < self.min_chars):
            raise DataError(f"--min-chars {self.min_chars} / --max-chars {self.max_chars}: give 0 <= min <= max")
        if not 0 <= self.min_script <= 1:
            raise DataError(f"--min-script {self.min_script}: give a share between 0 and 1")


def _stopwords(lang: Lang) -> Callable[[str], str]:
    if lang == "en":
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        words = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, ENGLISH_STOP_WORDS), key=len, reverse=True))
                           + r")\b", re.IGNORECASE)
        return lambda text: words.sub("", text)
    stop = set(_import("stop_words", "stop-words").get_stop_words("zh"))
    return lambda text: "".join(w for w in segment_zh(text) if w not in stop)


def segment_zh(text: str) -> list[str]:
    """Chinese words by jieba (its bundled dictionary; logging quietened)."""
    jieba = _import("jieba", "jieba")
    import logging

    jieba.setLogLevel(logging.WARNING)
    return jieba.lcut(text)


def _import(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"this step needs the {package!r} package: pip install 'jaxlm[text]'") from None


def _t2s() -> Callable[[str], str]:
    converter = _import("opencc", "opencc").OpenCC("t2s")
    return converter.convert


def _zh_punctuation() -> Callable[[str], str]:
    punctuation = re.compile(f"[{re.escape(_import('zhon.hanzi', 'zhon').punctuation)}]")
    return lambda text: punctuation.sub(" ", text)


def _repeated_words(lang: Lang) -> Callable[[str], str]:
    if lang == "zh":
        han = HAN.pattern[1:-1]
        pattern = re.compile(f"([{han}]{{2,4}}?)\\1+")
    else:
        pattern = re.compile(r"\b(\w+)(?:\s+\1\b)+", re.IGNORECASE)
    return lambda text: pattern.sub(r"\1", text)


def _placeholder(pattern: re.Pattern, token: str, o: Options) -> Callable[[str], str]:
    replacement = f" {token} " if o.mask else " "
    return lambda text: pattern.sub(replacement, text)


def _filter(keep: Callable[[str], bool]) -> Callable[[str], str | None]:
    return lambda text: text if keep(text) else None


STEPS: dict[str, Callable[[Options], Callable[[str], str | None]]] = {
    "html": lambda o: strip_html,
    "urls": lambda o: _placeholder(URL, "<URL>", o),
    "emails": lambda o: _placeholder(EMAIL, "<EMAIL>", o),
    "phones": lambda o: _placeholder(PHONE, "<PHONE>", o),
    "nfkc": lambda o: lambda text: unicodedata.normalize("NFKC", text),
    "fullwidth": lambda o: fullwidth_to_halfwidth,
    "t2s": lambda o: _t2s(),
    "zh_punctuation": lambda o: _zh_punctuation(),
    "punctuation": lambda o: lambda text: remove_categories(text, "P"),
    "symbols": lambda o: lambda text: remove_categories(text, "S"),
    "digits": lambda o: lambda text: NUMBER.sub("<NUM>" if o.mask else "", text),
    "lowercase": lambda o: str.casefold,
    "repeated_chars": lambda o: (lambda p: lambda text: p.sub(lambda m: m.group(1) * o.max_repeat, text))(
        re.compile(r"(.)\1{%d,}" % o.max_repeat, re.DOTALL)),
    "repeated_words": lambda o: _repeated_words(o.lang),
    "stopwords": lambda o: _stopwords(o.lang),
    "whitespace": lambda o: lambda text: WHITESPACE.sub(" ", text).strip(),
    "length": lambda o: _filter(lambda t: o.min_chars <= len(t) and (o.max_chars is None or len(t) <= o.max_chars)),
    "script": lambda o: _filter(lambda t: script_share(t, o.lang) >= o.min_script),
}

DEFAULT_STEPS: dict[str, list[str]] = {
    "en": ["html", "urls", "emails", "phones", "nfkc", "repeated_chars", "repeated_words", "whitespace", "length"],
    "zh": ["html", "urls", "emails", "phones", "fullwidth", "t2s", "repeated_chars", "repeated_words", "whitespace",
           "length"],
}


def check_steps(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], STEPS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise DataError(f"unknown cleaning step {unknown[0]!r}; {hint}steps: {', '.join(STEPS)}")
    return names


@dataclass
class StepCount:
    rows_changed: int = 0
    chars_removed: int = 0
    rows_dropped: int = 0


@dataclass
class Cleaner:
    """Runs ``steps`` (names from ``STEPS``, in order) on texts, counting what each does."""

    steps: list[str]
    options: Options = field(default_factory=Options)

    def __post_init__(self):
        check_steps(self.steps)
        self._fns = [(name, STEPS[name](self.options)) for name in self.steps]
        self.counts = {name: StepCount() for name in self.steps}
        self.empty = 0
        """Texts that were empty (or blank) before any step."""

    def __call__(self, text: str) -> str | None:
        """The cleaned text, or ``None`` when a step drops it (or leaves nothing)."""
        if not text.strip():
            self.empty += 1
            return None
        for name, fn in self._fns:
            new = fn(text)
            count = self.counts[name]
            if new is None or not new.strip():
                count.rows_dropped += 1
                count.chars_removed += len(text)
                return None
            if new != text:
                count.rows_changed += 1
                count.chars_removed += len(text) - len(new)
            text = new
        return text

    def report(self) -> dict[str, dict[str, int]]:
        return {name: vars(c).copy() for name, c in self.counts.items()}


def clean_text(text: str, steps: list[str] | None = None, **options) -> str | None:
    """One text through ``steps`` (default: ``DEFAULT_STEPS`` of ``lang``)."""
    o = Options(**options)
    return Cleaner(steps if steps is not None else DEFAULT_STEPS[o.lang], o)(text)
