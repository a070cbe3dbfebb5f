"""Writes the sentiment sets shipped with jaxlm: ``sentiment_en.csv`` and ``sentiment_zh.csv``.

Short product, film, book, restaurant, hotel, game, app and show reviews, written for
jaxlm: each review combines hand-written phrases (an optional context sentence, one or
two opinion sentences, an optional verdict) drawn with a fixed seed, so the files are
reproducible byte for byte (``python jaxlm/data/sets/generate.py``). About a fifth of the
opinions are hard on purpose: negations ("not dull at all"), reversed expectations ("I
hoped it would be brilliant, but ...") and a good aspect outweighed by a bad one. Labels
are ``negative`` / ``positive``, balanced.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 20261115

# --- English ---------------------------------------------------------------------------

EN_DOMAINS = {
    "film": {
        "subjects": ["the film", "this movie", "the sequel", "the documentary", "this thriller", "the comedy",
                     "the animated feature", "this remake"],
        "aspects": ["the acting", "the script", "the soundtrack", "the pacing", "the ending", "the camera work",
                    "the dialogue", "the lead performance", "the special effects"],
        "contexts": ["I watched it with my family on Friday night.", "Saw it at a late screening.",
                     "I streamed it after work.", "We went for a friend's birthday.",
                     "I had heard a lot about it beforehand.", "My brother talked me into it."],
        "again": "watch it again",
    },
    "book": {
        "subjects": ["this novel", "the book", "the memoir", "this short story collection", "the biography",
                     "this mystery", "the travel guide"],
        "aspects": ["the characters", "the prose", "the plot", "the translation", "the final chapters",
                    "the writing", "the research", "the opening"],
        "contexts": ["I read it on a long train ride.", "It was a gift from a colleague.",
                     "Our book club picked it this month.", "I finished it in two evenings.",
                     "I borrowed it from the library."],
        "again": "read it again",
    },
    "restaurant": {
        "subjects": ["the restaurant", "this little bistro", "the noodle bar", "the pizzeria", "this cafe",
                     "the bakery", "the taco stand"],
        "aspects": ["the food", "the service", "the coffee", "the desserts", "the staff", "the portions",
                    "the soup", "the bread", "the menu"],
        "contexts": ["We went there for lunch on a weekday.", "I booked a table for our anniversary.",
                     "Stopped by after a long walk.", "We ordered takeaway on a Tuesday.",
                     "A coworker suggested the place."],
        "again": "eat there again",
    },
    "hotel": {
        "subjects": ["the hotel", "this guesthouse", "the resort", "the hostel", "this inn"],
        "aspects": ["the room", "the staff", "the breakfast", "the bed", "the location", "the view",
                    "the bathroom", "the check-in"],
        "contexts": ["We stayed three nights in June.", "I was there for a conference.",
                     "We spent a weekend there.", "I booked it at the last minute."],
        "again": "stay there again",
    },
    "gadget": {
        "subjects": ["these headphones", "the blender", "this phone", "the laptop", "the kettle",
                     "this vacuum cleaner", "the camera", "the keyboard", "this lamp"],
        "aspects": ["the battery", "the build quality", "the sound", "the screen", "the motor", "the design",
                    "the buttons", "the charger", "the manual"],
        "contexts": ["I have used it daily for a month.", "Bought it on sale last week.",
                     "It replaced an older model I had for years.", "I ordered it online.",
                     "It arrived two days early."],
        "again": "buy it again",
    },
    "game": {
        "subjects": ["this game", "the puzzle game", "the board game", "the strategy game", "this card game"],
        "aspects": ["the controls", "the story", "the level design", "the music", "the rules", "the art style",
                    "the multiplayer"],
        "contexts": ["I played it over the holidays.", "We tried it at a game night with friends.",
                     "I put about twenty hours into it.", "My kids asked for it."],
        "again": "play it again",
    },
    "app": {
        "subjects": ["this app", "the latest update", "the budgeting app", "the language app", "this podcast app"],
        "aspects": ["the interface", "the notifications", "the sync", "the lessons", "the search",
                    "the dark mode", "the onboarding"],
        "contexts": ["I have used it for a few weeks.", "I installed it on my tablet.",
                     "A friend recommended it to me.", "I switched to it from a rival app."],
        "again": "keep using it",
    },
    "show": {
        "subjects": ["the concert", "the play", "the musical", "the exhibition", "the comedy show",
                     "the ballet"],
        "aspects": ["the performers", "the staging", "the sound mix", "the second half", "the venue",
                    "the costumes", "the lighting"],
        "contexts": ["We had seats near the back.", "I went on opening night.",
                     "The tickets were a birthday present.", "We went on a whim."],
        "again": "see it again",
    },
}

EN_GOOD = ["wonderful", "excellent", "superb", "delightful", "charming", "fantastic", "brilliant", "lovely",
           "outstanding", "impressive", "enjoyable", "great", "terrific", "first-rate", "marvelous", "pleasant",
           "memorable", "refreshing", "gorgeous", "stunning"]
EN_BAD = ["awful", "terrible", "dull", "disappointing", "mediocre", "boring", "poor", "dreadful", "bland", "clumsy",
          "forgettable", "frustrating", "sloppy", "tedious", "unpleasant", "flimsy", "lifeless", "messy", "weak",
          "careless"]

# {S}: subject, {A} / {B}: two different aspects, {g}: a good word, {b}: a bad word, {again}.
EN_OPINIONS = {
    "positive": {
        "plain": ["{S} was {g}.", "{A} was {g} and {B} was even better.", "I loved {A} from start to finish.",
                  "Everything about {S} felt {g}.", "{S} exceeded my expectations.", "I would gladly {again}.",
                  "{A} alone made it worth it.", "{A} was {g}, and {B} was too.", "What a {g} surprise {S} was.",
                  "It is rare to find something this {g}.", "{A} and {B} were both {g}.",
                  "I keep telling people how {g} {A} was.", "Could not have asked for more from {S}."],
        "hard": ["{A} was not {b} at all, quite the opposite.", "I was worried it would be {b}, but it turned out {g}.",
                 "{A} was a bit {b}, but {B} more than made up for it.", "Nothing about {S} felt {b}.",
                 "People called it {b}; I found it {g}.", "I expected little, yet {S} was {g}."],
        "verdicts": ["Five stars.", "Highly recommended.", "I will tell all my friends.", "A real gem.",
                     "Worth every penny.", "Ten out of ten.", "Go for it.", "Already looking forward to more."],
    },
    "negative": {
        "plain": ["{S} was {b}.", "{A} was {b} and {B} was no better.", "I hated {A} from start to finish.",
                  "Everything about {S} felt {b}.", "{S} fell far short of my expectations.", "I would never {again}.",
                  "{A} ruined it for me.", "{A} was {b}, and {B} was too.", "What a {b} letdown {S} was.",
                  "It is rare to find something this {b}.", "{A} and {B} were both {b}.",
                  "I keep telling people how {b} {A} was.", "I expected much more from {S}."],
        "hard": ["{A} was not {g} at all.", "I hoped it would be {g}, but it turned out {b}.",
                 "{A} was {g}, but {B} was so {b} that it spoiled everything.", "Nothing about {S} felt {g}.",
                 "People called it {g}; I found it {b}.", "I expected a lot, yet {S} was {b}."],
        "verdicts": ["One star.", "Save your money.", "Not recommended.", "What a waste.", "Never again.",
                     "I want my time back.", "Avoid it.", "Returned it the next day."],
    },
}


def _english(label: str, rng: random.Random) -> str:
    domain = EN_DOMAINS[rng.choice(sorted(EN_DOMAINS))]
    opinions = EN_OPINIONS[label]
    aspect, other = rng.sample(domain["aspects"], 2)
    slots = {"S": rng.choice(domain["subjects"]), "A": aspect, "B": other, "g": rng.choice(EN_GOOD),
             "b": rng.choice(EN_BAD), "again": domain["again"]}
    kinds = ["hard" if rng.random() < 0.2 else "plain" for _ in range(1 + (rng.random() < 0.4))]
    chosen = [rng.choice(opinions[k]) for k in kinds]
    sentences = [rng.choice(domain["contexts"])] if rng.random() < 0.5 else []
    sentences += [_capitalised(_agreeing(t.format(**slots), slots)) for t in dict.fromkeys(chosen)]
    if rng.random() < 0.5:
        sentences.append(rng.choice(opinions["verdicts"]))
    return " ".join(sentences)


def _agreeing(sentence: str, slots: dict[str, str]) -> str:
    """"the buttons was" -> "the buttons were" (every plural here ends in s)."""
    for value in slots.values():
        if value.endswith("s"):
            sentence = sentence.replace(f"{value} was", f"{value} were")
    return sentence


def _capitalised(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


# --- Chinese ---------------------------------------------------------------------------

ZH_DOMAINS = {
    "电影": {"subjects": ["这部电影", "这部续集", "这部纪录片", "这部喜剧片", "这部动画片"],
             "aspects": ["演员的表演", "剧情", "配乐", "结尾", "画面", "节奏"],
             "contexts": ["周末和家人一起去看的。", "下班后在网上看的。", "朋友极力推荐的。"], "again": "再看一遍"},
    "书": {"subjects": ["这本小说", "这本书", "这本传记", "这本游记"],
           "aspects": ["人物", "文笔", "情节", "翻译", "结局"],
           "contexts": ["在火车上读完的。", "同事送的礼物。", "读书会这个月选了它。"], "again": "再读一遍"},
    "餐厅": {"subjects": ["这家餐厅", "这家面馆", "这家咖啡店", "这家面包店"],
             "aspects": ["菜", "服务", "甜点", "环境", "咖啡", "汤"],
             "contexts": ["工作日中午去的。", "纪念日订的位子。", "散步时路过进去的。"], "again": "再来"},
    "酒店": {"subjects": ["这家酒店", "这家民宿", "这家度假村"],
             "aspects": ["房间", "前台服务", "早餐", "床", "位置", "卫生间"],
             "contexts": ["出差时住了两晚。", "周末带孩子去住的。", "临时订的房间。"], "again": "再住"},
    "产品": {"subjects": ["这款耳机", "这台电脑", "这个水壶", "这台相机", "这个键盘"],
             "aspects": ["音质", "电池", "做工", "设计", "屏幕", "按键"],
             "contexts": ["用了一个月了。", "上周打折买的。", "网上下单第二天就到了。"], "again": "回购"},
    "游戏": {"subjects": ["这款游戏", "这款桌游", "这款解谜游戏"],
             "aspects": ["操作", "故事", "关卡设计", "音乐", "画风"],
             "contexts": ["假期里玩的。", "和朋友聚会时一起玩的。", "前后玩了二十多个小时。"], "again": "再玩"},
    "应用": {"subjects": ["这个应用", "这次更新", "这个记账软件", "这个学习软件"],
             "aspects": ["界面", "同步功能", "课程", "搜索", "提醒功能"],
             "contexts": ["用了几个星期。", "装在平板上用的。", "朋友推荐给我的。"], "again": "继续用"},
    "演出": {"subjects": ["这场音乐会", "这部话剧", "这场展览", "这场演出"],
             "aspects": ["演员", "舞台", "音响", "下半场", "灯光"],
             "contexts": ["坐在后排看的。", "首演那天去的。", "票是生日礼物。"], "again": "再去看"},
}

ZH_GOOD = ["精彩", "出色", "优秀", "用心", "扎实", "惊艳", "到位", "贴心", "细腻", "舒服"]
ZH_BAD = ["糟糕", "无聊", "平庸", "粗糙", "敷衍", "差劲", "拖沓", "乏味", "混乱", "令人失望"]

ZH_OPINIONS = {
    "positive": {
        "plain": ["{S}真的很{g}。", "{A}非常{g}，{B}也很{g2}。", "最喜欢{A}，从头到尾都很{g}。", "{S}超出了我的预期。",
                  "下次还会{again}。", "光是{A}就值回票价了。", "{A}和{B}都很{g}。", "很少见到这么{g}的作品。",
                  "{S}的{A}特别{g}。"],
        "hard": ["{A}一点也不{b}。", "本来担心会很{b}，没想到{A}这么{g}。", "{A}有点{b}，但是{B}完全弥补了。",
                 "别人都说{b}，我倒觉得很{g}。"],
        "verdicts": ["五星好评。", "强烈推荐！", "物有所值。", "值得一试。", "会推荐给朋友。"],
    },
    "negative": {
        "plain": ["{S}真的很{b}。", "{A}非常{b}，{B}也好不到哪里去。", "最受不了{A}，从头到尾都很{b}。",
                  "{S}完全没有达到我的预期。", "再也不会{again}了。", "光是{A}就让人受不了。", "{A}和{B}都很{b}。",
                  "很少见到这么{b}的东西。", "{S}的{A}特别{b}。"],
        "hard": ["{A}一点也不{g}。", "本来以为会很{g}，结果{A}这么{b}。", "{A}还算{g}，可是{B}太{b}了，整体很失望。",
                 "别人都说{g}，我只觉得{b}。"],
        "verdicts": ["一星。", "不推荐。", "浪费钱。", "太失望了。", "别买。"],
    },
}


def _chinese(label: str, rng: random.Random) -> str:
    domain = ZH_DOMAINS[rng.choice(sorted(ZH_DOMAINS))]
    opinions = ZH_OPINIONS[label]
    aspect, other = rng.sample(domain["aspects"], 2)
    good, good2 = rng.sample(ZH_GOOD, 2)
    slots = {"S": rng.choice(domain["subjects"]), "A": aspect, "B": other, "g": good, "g2": good2,
             "b": rng.choice(ZH_BAD), "again": domain["again"]}
    kinds = ["hard" if rng.random() < 0.2 else "plain" for _ in range(1 + (rng.random() < 0.4))]
    chosen = [rng.choice(opinions[k]) for k in kinds]
    sentences = [rng.choice(domain["contexts"])] if rng.random() < 0.5 else []
    sentences += [t.format(**slots) for t in dict.fromkeys(chosen)]
    if rng.random() < 0.5:
        sentences.append(rng.choice(opinions["verdicts"]))
    return "".join(sentences)


def reviews(write_one, per_label: int, seed: int) -> list[tuple[str, str]]:
    """``per_label`` distinct reviews of each label, interleaved."""
    rng = random.Random(seed)
    made = {label: [] for label in ("negative", "positive")}
    seen = set()
    while any(len(v) < per_label for v in made.values()):
        for label, texts in made.items():
            text = write_one(label, rng)
            if len(texts) < per_label and text not in seen:
                seen.add(text)
                texts.append(text)
    return [(text, label) for pair in zip(*made.values()) for text, label in zip(pair, made)]


def as_csv(rows: list[tuple[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(rows)
    return out.getvalue()


SETS = {"sentiment_en": (_english, 400), "sentiment_zh": (_chinese, 200)}


def main() -> None:
    for name, (write_one, per_label) in SETS.items():
        (HERE / f"{name}.csv").write_text(as_csv(reviews(write_one, per_label, SEED)), encoding="utf-8")


if __name__ == "__main__":
    main()
