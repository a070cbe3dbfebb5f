"""The book's case-study recipes (recipes/*.sh): each prints its header for --help, refuses an
unknown option with one line, and runs every one of its commands end to end at --tiny size,
leaving a results table with a measured number in each row."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (ROOT / "recipes").glob("*.sh") if p.name != "lib.sh")
ROWS = {"ch5-peft-table.sh": 6, "ch8-contrastive.sh": 4, "ch10-prune-digits.sh": 6, "ch11-train-end-to-end.sh": 3,
        "ch12-finetune-compress.sh": 8}


def run_recipe(name: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAXLM": f"{sys.executable} -m jaxlm.cli",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(["bash", f"recipes/{name}", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_book_chapters_have_recipes():
    assert set(RECIPES) == set(ROWS)


@pytest.mark.parametrize("name", RECIPES)
def test_help_and_a_bad_option(name):
    shown = run_recipe(name, "--help")
    assert shown.returncode == 0 and "Usage: recipes/" + name in shown.stdout and "--tiny" in shown.stdout
    bad = run_recipe(name, "--fast")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "usage:" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_at_tiny_size(name, tmp_path):
    done = run_recipe(name, "--tiny", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    lines = table.splitlines()
    rows = lines[lines.index(next(line for line in lines if line.startswith("|---"))) + 1:]
    assert len(rows) == ROWS[name], table
    for row in rows:  # every row holds a measured accuracy, not an empty cell
        assert re.search(r"\| (0|1)\.\d{4} ", row), row
    assert list((tmp_path / "out").rglob("*.png")), "the recipe draws its figures"
