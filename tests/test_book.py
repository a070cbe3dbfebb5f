"""docs/book.md maps the book's sections to jaxlm: every config, command, flag, config key, module
and recipe it names must exist, so the map fails here the day one of them is renamed or removed."""

import argparse
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from jaxlm.cli import build_parser
from jaxlm.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "docs" / "book.md"
FOLDERS = ("configs/", "jaxlm/", "recipes/", "docs/", "benchmarks/", "launch/", "tests/")


def named() -> list[str]:
    """Every backticked span of the map's tables."""
    rows = [line for line in BOOK.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    return [span for row in rows for span in re.findall(r"`([^`]+)`", row)]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: p for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, p in action.choices.items()}


def command_problem(span: str) -> str | None:
    """Why ``jaxlm CMD [SUB] [--flag ...]`` does not parse as written, or ``None``."""
    words = span.split()[1:]
    parser, chain = build_parser(), ["jaxlm"]
    while words and words[0] in subparsers(parser):
        parser = subparsers(parser)[words[0]]
        chain.append(words.pop(0))
    if len(chain) == 1:
        return f"no command {words[0] if words else ''!r}"
    if subparsers(parser):
        return f"{' '.join(chain)} needs one of its commands: {', '.join(subparsers(parser))}"
    flags = {s for action in parser._actions for s in action.option_strings}
    missing = [w for w in words if w.startswith("--") and w not in flags]
    return f"{' '.join(chain)} has no {missing[0]}" if missing else None


def _models(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (through Optional, unions, lists, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def key_exists(key: str) -> bool:
    """Whether ``section.name[.sub]`` is a config key of any task / model variant."""
    candidates: list[type[BaseModel]] = [Config]
    for part in key.split("."):
        fields = [c.model_fields[part] for c in candidates if part in c.model_fields]
        if not fields:
            return False
        candidates = [m for f in fields for m in _models(f.annotation)]
        if not candidates:  # a plain value: nothing may follow it
            return part == key.split(".")[-1]
    return True


SECTIONS = set(Config.model_fields)


def kind(span: str) -> str | None:
    if span.startswith("jaxlm ") and not span.startswith("jaxlm/"):
        return "command"
    if span.startswith(FOLDERS) and "<" not in span:
        return "path"
    if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", span) and span.split(".")[0] in SECTIONS:
        return "key"
    return None


def test_the_map_names_things_of_every_kind():
    kinds = [kind(s) for s in named()]
    assert kinds.count("command") > 20 and kinds.count("path") > 20 and kinds.count("key") > 40


@pytest.mark.parametrize("span", sorted({s for s in named() if kind(s)}))
def test_what_the_map_names_exists(span):
    what = kind(span)
    if what == "command":
        problem = command_problem(span)
        assert problem is None, f"docs/book.md names `{span}`: {problem}"
    elif what == "path":
        assert (ROOT / span).exists(), f"docs/book.md names `{span}`, which does not exist"
    else:
        assert key_exists(span), f"docs/book.md names the config key `{span}`, which the schema does not have"


@pytest.mark.parametrize("config", sorted({s for s in named() if s.startswith("configs/")}))
def test_the_configs_it_names_validate(config):
    """A named config must still load under the current schema, not merely exist."""
    load_config(ROOT / config)


def test_a_renamed_config_key_or_flag_is_caught():
    assert not key_exists("trainer.unfreeze_evry") and key_exists("trainer.unfreeze_every")
    assert key_exists("task.long_text") and not key_exists("task.long_txt")  # a key of one task variant
    assert command_problem("jaxlm plot --schedule") is None
    assert "has no --shedule" in command_problem("jaxlm plot --shedule")
    assert "no command 'plott'" in command_problem("jaxlm plott")
