"""Text cleaning (every step, English and Chinese), the report's counts, deduplication recall."""

import json
import random

import pytest

from jaxlm.cli import main
from jaxlm.data.clean import DEFAULT_STEPS, STEPS, Cleaner, Options, clean_text
from jaxlm.data.dedup import Deduplicator, shingles
from jaxlm.data.text_commands import clean_file

# (step, lang, options, input, output); None = the row is dropped.
CASES = [
    ("html", "en", {}, "<p>Great <b>film</b>&amp;fun<br/>ok</p><script>x()</script>",
     " Great  film &fun  ok   "),
    ("html", "zh", {}, "<div>好看&lt;推荐&gt;</div>", " 好看<推荐> "),
    ("urls", "en", {}, "see https://a.org/x?y=1 or www.b.com.", "see   or  "),
    ("urls", "en", {"mask": True}, "see https://a.org/x?y=1 now", "see  <URL>  now"),
    ("urls", "zh", {}, "详见http://t.cn/abc，谢谢", "详见 ，谢谢"),
    ("emails", "en", {"mask": True}, "write to jo.doe+x@mail.example.com today", "write to  <EMAIL>  today"),
    ("emails", "zh", {}, "邮箱abc@qq.com联系", "邮箱 联系"),
    ("phones", "en", {"mask": True}, "call (555) 123-4567 or +44 20 7946 0958", "call  <PHONE>  or  <PHONE> "),
    ("phones", "zh", {}, "电话13812345678或010-62345678", "电话 或 "),
    ("nfkc", "en", {}, "ﬁne ＡＢＣ① café", "fine ABC1 café"),
    ("nfkc", "zh", {}, "很好，１２３！", "很好,123!"),
    ("fullwidth", "zh", {}, "ＡＢＣ　１２３，好！", "ABC 123,好!"),
    ("fullwidth", "en", {}, "Ｈｅｌｌｏ ①", "Hello ①"),
    ("t2s", "zh", {}, "這部電影很難看", "这部电影很难看"),
    ("zh_punctuation", "zh", {}, "好看！推荐，《书》", "好看 推荐  书 "),
    ("zh_punctuation", "en", {}, "Fine, thanks!", "Fine, thanks!"),
    ("punctuation", "en", {}, "Wow, (really)!", "Wow   really  "),
    ("punctuation", "zh", {}, "好看！推荐。", "好看 推荐 "),
    ("symbols", "en", {}, "cost $5 + tax © 😀", "cost  5   tax    "),
    ("symbols", "zh", {}, "价格￥99元😀", "价格 99元 "),
    ("digits", "en", {}, "room 101, 3.5 stars", "room ,  stars"),
    ("digits", "en", {"mask": True}, "room 101, 3.5 stars", "room <NUM>, <NUM> stars"),
    ("digits", "zh", {}, "第2集很好", "第集很好"),
    ("lowercase", "en", {}, "GREAT Film ß", "great film ss"),
    ("lowercase", "zh", {}, "ＡＢＣ好看", "ａｂｃ好看"),
    ("repeated_chars", "en", {}, "soooo goooood!!!!", "soo good!!"),
    ("repeated_chars", "zh", {"max_repeat": 1}, "好好好好看！！！", "好看！"),
    ("repeated_words", "en", {}, "the the film was very very very good", "the film was very good"),
    ("repeated_words", "zh", {}, "非常非常推荐推荐", "非常推荐"),
    ("stopwords", "en", {}, "this is a truly great film", "   truly great film"),
    ("stopwords", "zh", {}, "我的电影很好看", "电影好看"),
    ("whitespace", "en", {}, "  a \t b\n\nc  ", "a b c"),
    ("whitespace", "zh", {}, "　好看　 推荐 ", "好看 推荐"),
    ("length", "en", {"min_chars": 5}, "ok", None),
    ("length", "en", {"max_chars": 5}, "far too long", None),
    ("length", "zh", {"min_chars": 2}, "好看", "好看"),
    ("script", "en", {}, "这是中文的句子 text", None),
    ("script", "en", {}, "mostly English words 中", "mostly English words 中"),
    ("script", "zh", {}, "这是中文 text", "这是中文 text"),
    ("script", "zh", {}, "only English here", None),
]


def test_every_step_has_a_case_in_both_languages():
    covered = {(step, lang) for step, lang, *_ in CASES}
    langs_of = {step: {lang for s, lang in covered if s == step} for step in STEPS}
    assert {s for s, langs in langs_of.items() if not langs} == set()
    assert {s for s, langs in langs_of.items() if len(langs) < 2} == {"t2s"}  # Chinese only


@pytest.mark.parametrize("step,lang,options,text,expected", CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_step(step, lang, options, text, expected):
    assert Cleaner([step], Options(lang=lang, **options))(text) == expected


def test_default_pipelines():
    assert clean_text("<p>This   is sooooo GOOD!!! https://x.io</p>") == "This is soo GOOD!!"
    assert clean_text("<p>這部電影真的很好看！！！！詳見 http://t.cn/x</p>", lang="zh") == "这部电影真的很好看!!详见"
    assert clean_text("   ") is None and clean_text("<br/>") is None


def test_unknown_step_is_one_line(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "out.txt"), "--steps", "html,url"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown cleaning step 'url'" in err and "did you mean 'urls'" in err


def test_not_utf8_names_file_and_byte(tmp_path, capsys):
    src = tmp_path / "reviews.csv"
    src.write_bytes(b"text,label\ngood,1\ncaf\xe9,0\n")
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "reviews.csv is not UTF-8" in err and "at byte 21" in err
    assert not (tmp_path / "out.csv").exists() and not list(tmp_path.glob(".out.csv*"))


def test_csv_report_counts_and_other_columns(tmp_path):
    src = tmp_path / "reviews.csv"
    src.write_text('id,text,label\n'
                   '1,"<b>Great</b> film!!!!",pos\n'
                   '2,"great   FILM!!",pos\n'                  # an exact duplicate of row 1 once cleaned and normalised
                   '3,"",neg\n'                                # empty
                   '4,"Awful, see http://spam.example",neg\n'
                   '5,"这是中文",neg\n')                        # the script filter drops it
    out = tmp_path / "clean.csv"
    report = clean_file(src, out, steps=["html", "urls", "repeated_chars", "whitespace", "script"])
    assert out.read_text().splitlines() == ["id,text,label", "1,Great film!!,pos", "4,\"Awful, see\",neg"]
    assert report == json.loads((tmp_path / "clean.csv.report.json").read_text())
    assert report["rows_in"] == 5 and report["rows_out"] == 2 and report["empty_texts"] == 1
    assert report["dropped_by_steps"] == 2 and report["dedup"]["exact_duplicates"] == 1
    steps = report["steps"]
    assert steps["html"] == {"rows_changed": 1, "chars_removed": 7 - 2, "rows_dropped": 0}
    assert steps["urls"] == {"rows_changed": 1, "chars_removed": len("http://spam.example") - 1, "rows_dropped": 0}
    # "!!!!" and the three spaces of row 2 ("great   FILM!!") are runs longer than 2
    assert steps["repeated_chars"] == {"rows_changed": 2, "chars_removed": 3, "rows_dropped": 0}
    assert steps["whitespace"]["rows_changed"] == 3 and steps["script"]["rows_dropped"] == 1
    assert report["chars_out"] == len("Great film!!") + len("Awful, see")


def test_jsonl_and_text_files_keep_their_format(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"title": "<i>T</i>", "body": "x  y", "n": 3}\n{"title": "T", "body": "x y", "n": 4}\n')
    report = clean_file(src, tmp_path / "b.jsonl", columns=["title", "body"], dedup="none")
    assert [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()] == [
        {"title": "T", "body": "x y", "n": 3}, {"title": "T", "body": "x y", "n": 4}]
    assert report["rows_out"] == 2
    txt = tmp_path / "a.txt"
    txt.write_text("好看！！！！\n好看！！\n\n难看\n")
    clean_file(txt, tmp_path / "b.txt", lang="zh")
    assert (tmp_path / "b.txt").read_text() == "好看!!\n难看\n"


def planted_corpus(n_docs=300, n_exact=40, n_near=60, seed=0):
    """Random distinct 40-word documents, plus exact copies (re-cased, re-spaced) and near copies
    (one of 40 words replaced: Jaccard similarity of 5-character shingles about 0.9) of earlier ones."""
    rng = random.Random(seed)
    words = [f"{a}{b}{c}" for a in "bcdfghklmnprst" for b in "aeiou" for c in "lmnrst"]
    docs = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(n_docs)]
    rows = [(d, None) for d in docs]
    for i in rng.sample(range(n_docs), n_exact):
        rows.append(("  " + docs[i].upper().replace(" ", "  "), "exact"))
    for i in rng.sample(range(n_docs), n_near):
        tokens = docs[i].split()
        tokens[rng.randrange(40)] = rng.choice(words)
        rows.append((" ".join(tokens), "near"))
    return rows


def jaccard(a, b, k=5):
    sa, sb = shingles(a, k), shingles(b, k)
    return len(sa & sb) / len(sa | sb)


def test_dedup_finds_planted_duplicates():
    rows = planted_corpus()
    originals = {" ".join(t.split()[:3]): t for t, kind in rows if kind is None}
    similarity = [jaccard(t, originals[" ".join(t.split()[:3])]) for t, kind in rows if kind == "near"
                  if " ".join(t.split()[:3]) in originals]
    assert min(similarity) > 0.85  # the planted pairs sit above the 0.8 threshold
    exact = Deduplicator("exact")
    found = [exact.is_duplicate(text) for text, _ in rows]
    assert [f for f, (_, kind) in zip(found, rows) if kind is None] == [False] * 300
    assert sum(f for f, (_, kind) in zip(found, rows) if kind == "exact") == 40
    near = Deduplicator("near", threshold=0.8)
    found = [near.is_duplicate(text) for text, _ in rows]
    recall = sum(f for f, (_, kind) in zip(found, rows) if kind == "near") / 60
    assert recall >= 0.95, recall
    assert not any(f for f, (_, kind) in zip(found, rows) if kind is None)  # no distinct document lost
    assert near.counts == {"exact": 40, "near": round(recall * 60)}


def test_near_dedup_from_the_command_line(tmp_path, capsys):
    rows = planted_corpus(100, 10, 20, seed=1)
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(text for text, _ in rows) + "\n")
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "dedup.txt"), "--dedup", "near"]) == 0
    report = json.loads((tmp_path / "dedup.txt.report.json").read_text())
    assert report["dedup"]["exact_duplicates"] == 10 and report["dedup"]["near_duplicates"] >= 19
    assert report["rows_out"] == 130 - 10 - report["dedup"]["near_duplicates"]
    assert "near duplicates" in capsys.readouterr().out


def test_default_steps_exist():
    for steps in DEFAULT_STEPS.values():
        Cleaner(steps)


IMDB_STEPS = "html,urls,emails,nfkc,lowercase,punctuation,digits,repeated_chars,repeated_words,stopwords,whitespace,length"


def test_the_readme_imdb_command(tmp_path, capsys):
    """The book's IMDB cleaning, as README documents it, on IMDB-shaped rows."""
    src = tmp_path / "imdb_train.csv"
    src.write_text('text,label\n'
                   '"I loved this movie!!!! <br /><br />10/10, see http://imdb.com/title/tt01 for more.",1\n'
                   '"I LOVED this movie! <br /><br />10/10 - see http://imdb.com/title/tt02 for more",1\n'
                   '"Bad.",0\n'
                   '"The plot was was dull and the acting &amp; music were worse; 2 hours wasted.",0\n')
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "imdb_clean.csv"), "--lang", "en",
                 "--steps", IMDB_STEPS, "--min-chars", "10", "--dedup", "near"]) == 0
    assert (tmp_path / "imdb_clean.csv").read_text().splitlines() == [
        "text,label", "loved movie,1", "plot dull acting music worse hours wasted,0"]
    report = json.loads((tmp_path / "imdb_clean.csv.report.json").read_text())
    assert report["dedup"]["exact_duplicates"] == 1 and report["steps"]["length"]["rows_dropped"] == 1
