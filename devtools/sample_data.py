"""Realistic sample comments for the demo, the seed file and tests (deterministic).

Normal traffic is product and service feedback in English and Chinese, composed from
templates so that thousands of distinct comments can be made reproducibly. Anomalies
are the kinds the detector exists to catch: garbled text, spam, and off-topic posts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_PRODUCTS_EN = ["the headphones", "this blender", "the running shoes", "my new phone case",
                "the coffee maker", "this backpack", "the desk lamp", "the winter jacket",
                "the phone charger", "this water bottle", "the keyboard", "the vacuum cleaner"]
_ASPECTS_EN = [
    ("works great", "stopped working after a week"),
    ("arrived on time", "arrived two days late"),
    ("is well made", "feels cheap and flimsy"),
    ("was easy to set up", "was hard to set up"),
    ("is worth the price", "is overpriced for what it is"),
    ("looks exactly like the pictures", "looks different from the pictures"),
    ("has a long battery life", "drains the battery quickly"),
    ("came well packaged", "came in a damaged box"),
]
_SERVICE_EN = [
    "Customer service answered my question within an hour.",
    "The seller replied quickly and sorted out the refund.",
    "Delivery was fast and the courier was friendly.",
    "The return process was simple and the refund came in three days.",
    "Support took a week to reply to my email.",
    "The order tracking page was never updated.",
]
_ENDINGS_EN = ["", " Would buy again.", " Recommended.", " Not sure I would order again.",
               " Five stars.", " Two stars.", " Overall I'm happy with it.",
               " Disappointed overall."]

_PRODUCTS_ZH = ["这款耳机", "这个搅拌机", "这双跑鞋", "这个手机壳", "这台咖啡机", "这个背包",
                "这盏台灯", "这件冬季外套", "这个充电器", "这个水杯", "这个键盘", "这台吸尘器"]
_ASPECTS_ZH = [
    ("质量很好", "用了一周就坏了"),
    ("按时送到了", "晚到了两天"),
    ("做工很扎实", "做工粗糙"),
    ("安装很简单", "安装很麻烦"),
    ("性价比很高", "价格偏贵"),
    ("和图片一模一样", "和图片不太一样"),
    ("包装很仔细", "包装盒破了"),
]
_SERVICE_ZH = ["客服回复很及时，问题很快解决了。", "卖家态度很好，退款很顺利。",
               "物流很快，快递员也很客气。", "客服一直不回消息，体验很差。",
               "退货流程很简单，三天就收到退款了。"]
_ENDINGS_ZH = ["", "会再买的。", "推荐购买。", "总体满意。", "有点失望。", "五星好评！"]

GARBLED = ["asdfghjkl zxcvbnm qwerty", "xkq vvz plm rrt bnnq", "!!!???###@@@***",
           "lorem ipsum dolor sit amet consectetur", "aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
           "jfkd ldkf jjeir qpqp zmzm", "哈哈哈哈哈哈哈哈哈哈哈哈", "ё∂ƒ©˙∆˚¬…æ≈ç√∫˜µ",
           "0x3f 0x9a 0xff 0x00 0x12 0x7e", "qwe rty uio pas dfg hjk"]
SPAM = [
    "BUY CHEAP FOLLOWERS NOW!!! 10000 followers for $5 visit cheap-followers dot biz",
    "Congratulations, you won a free iPhone, click the link to claim your prize today",
    "Earn $5000 a week working from home, no experience needed, message me now",
    "Hot singles in your area are waiting, sign up free tonight",
    "加微信领取免费红包，日赚五百不是梦，点击链接立即领取",
    "Crypto giveaway! Send 0.1 BTC and receive 1 BTC back instantly, limited offer",
    "Best casino bonus codes 2026, 500 free spins, register now",
]
OFF_TOPIC = [
    "The French Revolution began in 1789 and reshaped European politics.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "量子力学描述了微观粒子的行为规律。",
    "The match ended two to one after extra time in the final.",
    "Mount Everest is the highest mountain above sea level.",
    "明天北京有小雨，气温十五度左右。",
    "Who wants to play chess in the park this Saturday afternoon?",
    "The recipe needs two cups of flour, three eggs and a pinch of salt.",
    "Jupiter has dozens of moons, the largest being Ganymede.",
    "国际象棋世界冠军赛将在下个月举行。",
]


@dataclass(frozen=True, slots=True)
class SampleComment:
    """A generated comment and what kind it is (normal, garbled, spam, off_topic)."""

    text: str
    kind: str

    @property
    def anomalous(self) -> bool:
        return self.kind != "normal"


def normal_comment(rng: random.Random) -> str:
    """One ordinary product or service comment, English about two times in three."""
    if rng.random() < 0.66:
        if rng.random() < 0.2:
            return rng.choice(_SERVICE_EN) + rng.choice(_ENDINGS_EN)
        product = rng.choice(_PRODUCTS_EN)
        good, bad = rng.choice(_ASPECTS_EN)
        aspect = good if rng.random() < 0.7 else bad
        text = f"{product[0].upper()}{product[1:]} {aspect}."
        if rng.random() < 0.4:
            good2, bad2 = rng.choice(_ASPECTS_EN)
            text += f" It also {good2 if rng.random() < 0.7 else bad2}."
        return text + rng.choice(_ENDINGS_EN)
    if rng.random() < 0.2:
        return rng.choice(_SERVICE_ZH) + rng.choice(_ENDINGS_ZH)
    good, bad = rng.choice(_ASPECTS_ZH)
    return f"{rng.choice(_PRODUCTS_ZH)}{good if rng.random() < 0.7 else bad}，" \
        + rng.choice(_ENDINGS_ZH)


def anomaly(rng: random.Random) -> SampleComment:
    kind = rng.choice(["garbled", "spam", "off_topic"])
    pool = {"garbled": GARBLED, "spam": SPAM, "off_topic": OFF_TOPIC}[kind]
    return SampleComment(rng.choice(pool), kind)


def stream(n: int, anomaly_rate: float = 0.05, seed: int = 7) -> list[SampleComment]:
    """`n` comments with about `anomaly_rate` of them anomalous, reproducibly."""
    rng = random.Random(seed)
    out: list[SampleComment] = []
    for _ in range(n):
        if rng.random() < anomaly_rate:
            out.append(anomaly(rng))
        else:
            out.append(SampleComment(normal_comment(rng), "normal"))
    return out


def seed_comments(n: int = 300, seed: int = 1) -> list[str]:
    """Distinct normal comments for `config/normal_comments.jsonl`."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(normal_comment(rng), None)
    return list(seen)
