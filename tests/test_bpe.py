"""BPE from scratch: merges line for line equal to subword-nmt's, encoding equal to its apply-bpe."""

import inspect
import subprocess
import sys

import pytest
from subword_nmt.apply_bpe import BPE as ReferenceBPE

from jaxlm.cli import main
from jaxlm.data.bpe import BPE, HEADER, learn_bpe, learn_merges, load_merges, save_merges, word_counts
from jaxlm.data.corpus import embedded_corpus


def subword_nmt_codes(text_file, merges, tmp_path):
    out = tmp_path / "reference.txt"
    # the installed `subword-nmt` command, run by this interpreter
    subprocess.run([sys.executable, "-c", "import sys; from subword_nmt.subword_nmt import main; sys.exit(main())",
                    "learn-bpe", "-s", str(merges),
                    "-i", str(text_file), "-o", str(out)], check=True, capture_output=True)
    return out.read_text(encoding="utf-8")


def argparse_source():
    import argparse

    return inspect.getsource(argparse)


@pytest.mark.parametrize("text", [lambda: "\n".join(embedded_corpus()), argparse_source], ids=["corpus", "argparse"])
def test_merges_equal_subword_nmt_line_for_line(text, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(text(), encoding="utf-8")
    assert main(["tokenizer", "train", "--kind", "bpe-scratch", "--merges", "500", "--out", str(tmp_path / "bpe"),
                 str(path)]) == 0
    ours = (tmp_path / "bpe" / "merges.txt").read_text(encoding="utf-8")
    reference = subword_nmt_codes(path, 500, tmp_path)
    assert ours.splitlines()[0] == HEADER and len(ours.splitlines()) == 501
    assert ours.splitlines() == reference.splitlines()


def test_min_frequency_stops_like_subword_nmt(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("low low low low low lower lower newest newest newest widest widest\nzebra\n")
    ours = learn_bpe([path.read_text()], 100)
    assert [f"{a} {b}" for a, b in ours] == subword_nmt_codes(path, 100, tmp_path).splitlines()[1:]
    assert ("z", "e") not in ours  # seen once: below the minimum frequency of 2
    assert len(learn_bpe([path.read_text()], 100, min_frequency=1)) > len(ours)


def test_the_textbook_example():
    # Sennrich et al.'s toy vocabulary. e-s and s-t</w> both occur 9 times: the pair that sorts last wins;
    # after l-o (7), three pairs tie at 6 and w-est</w> sorts last of them.
    counts = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    assert learn_merges(counts, 5) == [("s", "t</w>"), ("e", "st</w>"), ("l", "o"), ("w", "est</w>"), ("n", "e")]
    assert BPE(learn_merges(counts, 5)).encode("lowest newer") == "lo@@ west ne@@ w@@ e@@ r"


def test_encode_equals_subword_nmt_apply_bpe_and_decodes(tmp_path):
    text = "\n".join(embedded_corpus()[:20])
    merges = learn_bpe([text], 300)
    save_merges(merges, tmp_path / "merges.txt")
    assert load_merges(tmp_path / "merges.txt") == merges
    with open(tmp_path / "merges.txt", encoding="utf-8") as codes:
        reference = ReferenceBPE(codes)
    ours = BPE(merges)
    for line in "\n".join(embedded_corpus()[20:30]).splitlines()[:300]:
        encoded = ours.encode(line)
        assert encoded == reference.segment(line)
        assert BPE.decode(encoded) == " ".join(w for w in line.strip("\r\n ").split(" ") if w)
    assert ours.encode_word("a") == ("a",)


def test_word_counts_split_at_spaces_like_subword_nmt():
    assert word_counts(["a  b\ta\r\n", " b "]) == {"a": 1, "b\ta": 1, "b": 1}


def test_bad_input_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert main(["tokenizer", "train", "--kind", "bpe-scratch", "--merges", "5", "--out", str(tmp_path / "o"),
                 str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "latin1.txt is not UTF-8" in err and "byte 3" in err
    assert main(["tokenizer", "train", "--kind", "bpe-scratch", "--out", str(tmp_path / "o")]) == 2
    assert "--merges" in capsys.readouterr().err
    assert not (tmp_path / "o" / "merges.txt").exists()
