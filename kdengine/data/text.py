"""The offline text task: a generated multi-label data set and a word-level tokenizer.

**Task.** Short news-like sentences built from templates and small vocabularies, each tagged with
any of six labels: four topics (sports, politics, tech, food) and two sentiments (positive,
negative). Three things keep it from being a keyword lookup, so a big teacher has something to
teach a small student:

* ambiguous words ("court", "chips", "server", "party") belong to two topics; ``data.noise`` is the
  share of topic words drawn from them, so some sentences are genuinely uncertain (dark knowledge);
* negation ("not great") flips sentiment: the model must read word order, not a bag of words;
* distractors ("unlike the senator, ...") name a topic that is *not* a label.

Everything is generated from ``data.seed`` (no download, no file): the same config gives the same
sentences, vocabulary and split on every machine.

**Tokenizer.** Word-level, built from the training split (most frequent first, ties by spelling),
with ``[PAD]=0``, ``[UNK]=1``, ``[CLS]=2``; every sequence starts with ``[CLS]`` and is padded to
``MAX_LEN``. The embedding table has a fixed ``VOCAB_SIZE`` rows so a model can be built from the
config alone. The models that read it are in :mod:`kdengine.models.transformer`.
"""
from __future__ import annotations

import functools
import re
from collections import Counter

import numpy as np

from kdengine.core.config import DataConfig

LABELS = ["sports", "politics", "tech", "food", "positive", "negative"]
TOPICS = LABELS[:4]
MAX_LEN = 32
VOCAB_SIZE = 512
PAD, UNK, CLS = 0, 1, 2
SPECIALS = ["[PAD]", "[UNK]", "[CLS]"]

# ---- the generator's vocabulary ------------------------------------------------------------------
_NOUNS = {
    "sports": ["team", "coach", "striker", "referee", "stadium", "league", "goalkeeper", "season"],
    "politics": ["senator", "election", "parliament", "minister", "policy", "campaign", "mayor",
                 "voters"],
    "tech": ["software", "laptop", "processor", "startup", "network", "robot", "website", "update"],
    "food": ["pizza", "chef", "recipe", "soup", "bakery", "dessert", "restaurant", "menu"],
}
_VERBS = {
    "sports": ["scored against", "defeated", "trained with", "signed", "celebrated with"],
    "politics": ["debated", "voted against", "campaigned with", "criticised", "endorsed"],
    "tech": ["launched", "hacked", "upgraded", "installed", "rebooted"],
    "food": ["cooked", "served", "baked", "tasted", "seasoned"],
}
# Each ambiguous word belongs to two topics: the model can only guess from the rest of the sentence.
_AMBIGUOUS = {"court": ("sports", "politics"), "race": ("sports", "politics"),
              "server": ("tech", "food"), "chips": ("tech", "food"), "cookies": ("tech", "food"),
              "party": ("politics", "food"), "pitch": ("sports", "tech"), "record": ("sports", "tech"),
              "bill": ("politics", "food"), "match": ("sports", "tech"), "cabinet": ("politics", "food"),
              "apple": ("tech", "food")}
_GENERIC_VERBS = ["was discussed", "made headlines", "was in the news", "surprised everyone",
                  "got attention"]
_POSITIVE = ["great", "good", "excellent", "wonderful", "brilliant", "impressive"]
_NEGATIVE = ["bad", "terrible", "awful", "boring", "poor", "disappointing"]
_NEGATORS = ["not", "never", "hardly"]
_OPENERS = ["today", "yesterday", "this week", "according to reports", "in the city", "last night"]


def _topic_word(topic: str, rng: np.random.Generator, p_ambiguous: float) -> str:
    amb = [w for w, ts in _AMBIGUOUS.items() if topic in ts]
    if rng.random() < p_ambiguous:
        return str(rng.choice(amb))
    return str(rng.choice(_NOUNS[topic]))


def _clause(topic: str, rng: np.random.Generator, p_ambiguous: float) -> str:
    a = _topic_word(topic, rng, p_ambiguous)
    if rng.random() < p_ambiguous / 2:   # nothing but an ambiguous word and a generic verb
        return f"the {a} {rng.choice(_GENERIC_VERBS)}"
    b = _topic_word(topic, rng, p_ambiguous)
    return f"the {a} {rng.choice(_VERBS[topic])} the {b}"


def _sentiment(polarity: str, rng: np.random.Generator) -> tuple[str, str]:
    """(phrase, expressed polarity): a negator flips the adjective's polarity."""
    flip = rng.random() < 0.3
    adj_pol = polarity if not flip else ("negative" if polarity == "positive" else "positive")
    adj = rng.choice(_POSITIVE if adj_pol == "positive" else _NEGATIVE)
    neg = f"{rng.choice(_NEGATORS)} " if flip else ""
    return f"it was {neg}{adj}", polarity


def make_sentence(rng: np.random.Generator, p_ambiguous: float) -> tuple[str, np.ndarray]:
    """One sentence and its multi-hot label vector over ``LABELS``."""
    y = np.zeros(len(LABELS), np.float32)
    k = 1 if rng.random() < 0.65 else 2
    topics = list(rng.choice(TOPICS, size=k, replace=False))
    parts = []
    if rng.random() < 0.4:
        parts.append(str(rng.choice(_OPENERS)))
    if rng.random() < 0.2:  # distractor: a topic that is named but is not a label
        other = [t for t in TOPICS if t not in topics]
        parts.append(f"unlike the {rng.choice(_NOUNS[str(rng.choice(other))])}")
    for i, t in enumerate(topics):
        parts.append(("and " if i else "") + _clause(str(t), rng, p_ambiguous))
        y[LABELS.index(str(t))] = 1.0
    r = rng.random()
    if r < 0.8:
        pol = "positive" if r < 0.4 else "negative"
        phrase, pol = _sentiment(pol, rng)
        parts.append("but " + phrase if rng.random() < 0.3 else phrase)
        y[LABELS.index(pol)] = 1.0
    return " ".join(parts), y


def generate(n: int, seed: int, p_ambiguous: float) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng([seed, 7919])   # own stream: independent of the split's rng
    texts, ys = [], []
    for _ in range(n):
        s, y = make_sentence(rng, p_ambiguous)
        texts.append(s)
        ys.append(y)
    return texts, np.stack(ys)


# ---- tokenizer -------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Tokenizer:
    """Word-level tokenizer; ids beyond ``VOCAB_SIZE`` or unseen words become ``[UNK]``."""

    def __init__(self, vocab: list[str], max_len: int = MAX_LEN):
        self.itos = list(vocab)[:VOCAB_SIZE]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_len = max_len

    @classmethod
    def build(cls, texts: list[str], max_len: int = MAX_LEN) -> "Tokenizer":
        counts = Counter(w for t in texts for w in words(t))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        return cls(SPECIALS + ranked, max_len)

    def encode(self, text: str) -> list[int]:
        ids = [CLS] + [self.stoi.get(w, UNK) for w in words(text)]
        ids = ids[: self.max_len]
        return ids + [PAD] * (self.max_len - len(ids))

    def encode_batch(self, texts: list[str]) -> np.ndarray:
        return np.asarray([self.encode(t) for t in texts], dtype=np.int64)

    def decode(self, ids) -> str:
        out = []
        for i in (ids.tolist() if hasattr(ids, "tolist") else ids):
            if i == PAD:
                break
            if i != CLS:
                out.append(self.itos[i] if i < len(self.itos) else "[UNK]")
        return " ".join(out)

    def tokens(self, ids) -> list[str]:
        """Token strings up to the first pad (``[CLS]`` included), for attention-map axes."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        n = ids.index(PAD) if PAD in ids else len(ids)
        return [self.itos[i] if i < len(self.itos) else "[UNK]" for i in ids[:n]]


# ---- the data set ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _task(n: int, seed: int, p_ambiguous: float, test_fraction: float):
    texts, y = generate(n, seed, p_ambiguous)
    perm = np.random.default_rng([seed, 104729]).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    ite, itr = perm[:n_test], perm[n_test:]
    tok = Tokenizer.build([texts[i] for i in itr])
    return texts, y, itr, ite, tok


def _task_of(cfg: DataConfig):
    return _task(int(cfg.n_samples), int(cfg.seed), float(min(cfg.noise, 1.0)),
                 float(cfg.test_fraction))


def load_raw(cfg: DataConfig):
    """(x_train, y_train, x_test, y_test, "text", label names) for ``data.kind == "text"``.

    x: token ids [N, MAX_LEN] int64; y: multi-hot float32 [N, 6]. ``n_samples`` sets the size and
    ``noise`` the share of ambiguous topic words (capped at 1)."""
    texts, y, itr, ite, tok = _task_of(cfg)
    x = tok.encode_batch(texts)
    return x[itr], y[itr], x[ite], y[ite], "text", list(LABELS)


def tokenizer_for(cfg: DataConfig) -> Tokenizer:
    """The tokenizer of a config's task (the same one ``load_raw`` used)."""
    return _task_of(cfg)[4]


def texts_for(cfg: DataConfig, split: str = "test") -> list[str]:
    """The raw sentences of the train or test split, in the order of the DataBundle's tensors."""
    texts, _, itr, ite, _ = _task_of(cfg)
    return [texts[i] for i in (ite if split == "test" else itr)]


__all__ = ["LABELS", "MAX_LEN", "PAD", "Tokenizer", "VOCAB_SIZE", "load_raw", "tokenizer_for",
           "texts_for"]
