"""Built-in out-of-domain probes, generated from small word lists written for this project.

- ``agreement``: grammatical vs ungrammatical minimal pairs (subject-verb agreement, also across an attractor noun,
  determiner-noun agreement, irregular past tense, a/an). Scored by comparing the log-likelihood of the two whole
  sentences; chance 50%.
- ``facts``: world knowledge with four options (capitals, the day or month that follows, opposites, animal young,
  colours of familiar things). Scored by the log-likelihood of each option after the question; chance 25%.
- ``chat_facts``: the ``facts`` questions asked in the chat template with no options, scored by generation (the
  answer names the gold and no distractor); chance near 0.
- ``instructions``: verifiable instruction following (one word, all capitals, a JSON object with given keys, exactly
  N bullet points, no commas, a given first word ...), checked by pure functions; chance near 0.
- ``GENERAL_PROMPTS``: everyday instructions; the base model's own answers to them are the general text on which
  KL to the base and CKA of hidden states are measured.

Every item: ``{"id", "question", "choices", "answer" (index of the right option)}``; ``question`` is the prompt
shared by all options ("" for agreement, where the options are whole sentences).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from typing import Any

_NOUNS = [
    ("dog", "dogs"), ("teacher", "teachers"), ("car", "cars"), ("child", "children"), ("bird", "birds"),
    ("doctor", "doctors"), ("house", "houses"), ("student", "students"), ("woman", "women"), ("man", "men"),
    ("tree", "trees"), ("book", "books"), ("farmer", "farmers"), ("window", "windows"), ("singer", "singers"),
    ("cat", "cats"), ("river", "rivers"), ("boy", "boys"), ("girl", "girls"), ("city", "cities"),
]  # fmt: skip
_ADJ = ["tall", "quiet", "old", "happy", "small", "busy", "new", "tired", "clean", "famous", "hungry", "beautiful"]
_PLACES = ["the park", "the station", "the garden", "the old bridge", "the school", "the lake", "the market"]
_IRREGULAR = [
    ("went", "goed"), ("ate", "eated"), ("saw", "seed"), ("took", "taked"), ("wrote", "writed"), ("ran", "runned"),
    ("gave", "gived"), ("came", "comed"), ("found", "finded"), ("bought", "buyed"), ("sang", "singed"),
    ("drank", "drinked"), ("began", "beginned"), ("knew", "knowed"), ("brought", "bringed"), ("spoke", "speaked"),
]  # fmt: skip
_AN = ["apple", "orange", "egg", "umbrella", "idea", "hour", "island", "elephant", "onion", "answer"]
_A = ["banana", "pear", "cup", "book", "river", "house", "dog", "letter", "table", "song"]

_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("England", "London"), ("Egypt", "Cairo"), ("Greece", "Athens"),
    ("Canada", "Ottawa"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Thailand", "Bangkok"), ("Kenya", "Nairobi"),
    ("Argentina", "Buenos Aires"), ("South Korea", "Seoul"), ("Turkey", "Ankara"), ("Peru", "Lima"),
    ("Cuba", "Havana"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Hungary", "Budapest"),
    ("Belgium", "Brussels"), ("Mexico", "Mexico City"), ("Australia", "Canberra"),
]  # fmt: skip
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
]  # fmt: skip
_OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"), ("open", "closed"),
    ("light", "dark"), ("young", "old"), ("full", "empty"), ("early", "late"), ("wet", "dry"), ("high", "low"),
    ("strong", "weak"), ("rich", "poor"), ("hard", "soft"), ("day", "night"), ("win", "lose"), ("thick", "thin"),
]  # fmt: skip
_YOUNG = [
    ("cat", "kitten"), ("dog", "puppy"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"), ("duck", "duckling"),
    ("frog", "tadpole"), ("bear", "cub"), ("goat", "kid"), ("hen", "chick"),
]  # fmt: skip
_COLOURS = [
    ("a ripe banana", "yellow"), ("grass", "green"), ("fresh snow", "white"), ("the sky on a clear day", "blue"),
    ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"), ("chocolate", "brown"),
]  # fmt: skip
_COLOUR_SET = sorted({c for _, c in _COLOURS} | {"purple", "pink", "grey"})

GENERAL_PROMPTS = [
    "Explain how rain forms.", "Write a short note inviting a friend to dinner.", "What makes a good breakfast?",
    "Describe a walk in the forest in autumn.", "Give three tips for learning a new language.",
    "Why do people keep pets?", "Describe how to make a cup of tea.", "What is the job of a librarian?",
    "Write two sentences about the sea.", "How do bicycles stay upright?", "Tell a short story about a lost key.",
    "What should you pack for a weekend trip?", "Explain what a museum is to a child.",
    "Describe your favourite season and why.", "How can a student stay focused while studying?",
    "What are the benefits of drinking water?", "Write a polite email asking for a meeting.",
    "Why do leaves change colour?", "Describe a busy train station.", "How does a plant grow from a seed?",
    "Give advice to someone starting a new job.", "What is the difference between weather and climate?",
    "Describe a kitchen in the morning.", "Why is sleep important?", "Write a short poem about the moon.",
    "What do firefighters do?", "Explain how to plant a tree.", "Describe the sound of a thunderstorm.",
    "How do you make new friends in a new city?", "What is a healthy way to spend a Sunday?",
    "Describe an old bookshop.", "Why do birds migrate?", "What makes a story interesting?",
    "How should you prepare for a job interview?", "Describe a mountain village in winter.",
    "What is the role of a bee in a garden?", "Explain why we have day and night.",
    "Write a thank-you note to a neighbour.", "How do you take care of a houseplant?",
    "What can people do to save energy at home?", "Describe a river from its source to the sea.",
    "Why do people enjoy music?", "Explain what a map is used for.", "Describe a market on a Saturday morning.",
    "What is the purpose of a bridge?", "Give three ideas for a rainy afternoon.",
    "How do you cook rice?", "What makes a good teacher?",
]  # fmt: skip


def _item(kind: str, question: str, choices: list[str], answer: int) -> dict[str, Any]:
    digest = hashlib.sha256(f"{kind}\x00{question}\x00{choices[answer]}".encode()).hexdigest()[:16]
    return {"id": digest, "question": question, "choices": choices, "answer": answer, "answer_text": choices[answer]}


def _pair(rng: random.Random, good: str, bad: str) -> tuple[list[str], int]:
    if rng.random() < 0.5:
        return [good, bad], 0
    return [bad, good], 1


def _distinct(size: int, seed: int, make) -> list[dict[str, Any]]:
    """Up to ``size`` distinct items from ``make(rng)`` (deterministic for a seed; bounded attempts)."""
    rng = random.Random(seed)
    out: dict[str, dict[str, Any]] = {}
    for _ in range(size * 20):
        if len(out) >= size:
            break
        it = make(rng)
        out.setdefault(it["id"], it)
    return list(out.values())[:size]


def agreement_items(size: int, seed: int) -> list[dict[str, Any]]:
    """Grammatical/ungrammatical sentence pairs; the grammatical one is the answer."""
    return _distinct(size, seed, _agreement_item)


def _agreement_item(rng: random.Random) -> dict[str, Any]:
    kind = rng.randrange(5)
    if kind == 0:  # subject-verb agreement
        sg, pl = rng.choice(_NOUNS)
        adj = rng.choice(_ADJ)
        plural = rng.random() < 0.5
        noun = pl if plural else sg
        good, bad = ("are", "is") if plural else ("is", "are")
        g, b = f"The {noun} {good} very {adj}.", f"The {noun} {bad} very {adj}."
    elif kind == 1:  # agreement across an attractor noun
        (sg, pl), (sg2, pl2) = rng.sample(_NOUNS, 2)
        plural = rng.random() < 0.5
        head, attractor = (pl, sg2) if plural else (sg, pl2)
        good, bad = ("were", "was") if plural else ("was", "were")
        place = rng.choice(_PLACES)
        g = f"The {head} next to the {attractor} {good} waiting at {place}."
        b = f"The {head} next to the {attractor} {bad} waiting at {place}."
    elif kind == 2:  # determiner-noun agreement
        sg, pl = rng.choice(_NOUNS)
        adj = rng.choice(_ADJ)
        if rng.random() < 0.5:
            g, b = f"These {pl} look {adj} today.", f"This {pl} look {adj} today."
        else:
            g, b = f"This {sg} looks {adj} today.", f"These {sg} looks {adj} today."
    elif kind == 3:  # irregular past tense
        right, wrong = rng.choice(_IRREGULAR)
        frame = rng.choice(["Yesterday she {v} it without help.", "Last year they {v} it together."])
        g, b = frame.format(v=right), frame.format(v=wrong)
    else:  # a / an
        if rng.random() < 0.5:
            w = rng.choice(_AN)
            g, b = f"She put an {w} on the table.", f"She put a {w} on the table."
        else:
            w = rng.choice(_A)
            g, b = f"She put a {w} on the table.", f"She put an {w} on the table."
    choices, answer = _pair(rng, g, b)
    return _item("agreement", "", choices, answer)


def _options(rng: random.Random, right: str, pool: list[str], n: int = 4) -> tuple[list[str], int]:
    others = rng.sample([p for p in pool if p != right], n - 1)
    opts = [*others, right]
    rng.shuffle(opts)
    return opts, opts.index(right)


def facts_items(size: int, seed: int) -> list[dict[str, Any]]:
    """Four-option world-knowledge questions in a plain ``Question: ...\\nAnswer:`` form."""
    return _distinct(size, seed, _facts_item)


def _facts_item(rng: random.Random) -> dict[str, Any]:
    kind = rng.randrange(5)
    if kind == 0:
        country, city = rng.choice(_CAPITALS)
        q, right, pool = f"What is the capital of {country}?", city, [c for _, c in _CAPITALS]
    elif kind == 1:
        seq = _DAYS if rng.random() < 0.5 else _MONTHS
        i = rng.randrange(len(seq))
        unit = "day" if seq is _DAYS else "month"
        q, right, pool = f"Which {unit} comes right after {seq[i]}?", seq[(i + 1) % len(seq)], seq
    elif kind == 2:
        a, b = rng.choice(_OPPOSITES)
        if rng.random() < 0.5:
            a, b = b, a
        q, right, pool = f"What is the opposite of '{a}'?", b, [w for p in _OPPOSITES for w in p if w != a]
    elif kind == 3:
        animal, young = rng.choice(_YOUNG)
        q, right, pool = f"What is a young {animal} called?", young, [y for _, y in _YOUNG]
    else:
        thing, colour = rng.choice(_COLOURS)
        q, right, pool = f"What colour is {thing}?", colour, _COLOUR_SET
    choices, answer = _options(rng, right, pool)
    return _item("facts", f"Question: {q}\nAnswer:", choices, answer)


# ------------------------------------------------------------------------- generation probes (what narrow SFT breaks)
# Narrow chat SFT damages chat behaviour and formatting before stored knowledge: these probes ask in the chat
# template, with no system prompt (the SFT system prompt would act as a task tag), and score what the model writes.


def chat_facts_items(size: int, seed: int) -> list[dict[str, Any]]:
    """The ``facts`` questions asked plainly in chat form (no options shown), scored by generation: right when the
    answer names the gold and none of the three distractors (:func:`chat_fact_correct`). Chance is near 0."""
    out = []
    for it in _distinct(size, seed, _facts_item):
        question = it["question"].removeprefix("Question: ").removesuffix("\nAnswer:")
        wrong = [c for i, c in enumerate(it["choices"]) if i != it["answer"]]
        out.append({"id": it["id"], "question": question, "answer": it["answer_text"], "distractors": wrong})
    return out


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![A-Za-z]){re.escape(word.lower())}(?![A-Za-z])", text.lower()) is not None


def chat_fact_correct(item: dict[str, Any], text: str) -> bool:
    """The answer names the gold option and no distractor (listing every option is not an answer)."""
    return _mentions(text, item["answer"]) and not any(_mentions(text, d) for d in item["distractors"])


# Each topic with the word stems an answer on topic uses (matched at the start of a word: "rain" also matches
# "rainy"); each one-word question with the answers that are right. An instruction is followed only by an answer to the
# question: a constant output (a number, "#### 12") follows "at most 5 words" or "no commas" but answers nothing.
_TOPICS: dict[str, tuple[str, ...]] = {
    "Describe a rainy afternoon in a city.": (
        "rain", "city", "cities", "street", "umbrella", "wet", "cloud", "grey", "gray", "drop", "puddle", "storm",
        "afternoon", "people", "sky", "road", "window", "car", "traffic", "water", "shower", "drizzl",
    ),
    "Why do people keep pets?": (
        "pet", "dog", "cat", "animal", "compan", "love", "friend", "famil", "care", "loyal", "lonel", "joy", "fun",
        "happ", "owner", "keep",
    ),
    "What makes a good breakfast?": (
        "breakfast", "egg", "toast", "bread", "cereal", "oat", "fruit", "milk", "coffee", "tea", "juice", "protein",
        "healthy", "morning", "food", "meal", "eat", "yogurt", "yoghurt", "porridge", "pancake", "nutri", "energy",
    ),
    "Explain why exercise is healthy.": (
        "exercis", "health", "heart", "muscle", "body", "fit", "weight", "strong", "strength", "energy", "blood",
        "mood", "stress", "disease", "run", "walk", "active", "activit", "physical", "bone", "sleep", "mental",
    ),
    "Describe the ocean.": (
        "ocean", "sea", "water", "wave", "blue", "deep", "fish", "salt", "vast", "tide", "shore", "beach", "whale",
        "coral", "marine", "horizon", "current", "life",
    ),
    "What is a good way to learn a new language?": (
        "languag", "learn", "practi", "speak", "word", "vocabular", "grammar", "read", "listen", "native",
        "conversation", "study", "app", "class", "lesson", "immers", "talk", "book", "daily", "fluen",
    ),
    "Why do leaves change colour in autumn?": (
        "leaf", "leaves", "colo", "autumn", "fall", "chlorophyll", "tree", "red", "yellow", "orange", "green",
        "sun", "light", "cold", "season", "pigment", "winter", "temperature",
    ),
    "Describe a busy market.": (
        "market", "busy", "stall", "vendor", "seller", "sell", "buy", "people", "crowd", "fruit", "vegetable",
        "food", "noise", "nois", "loud", "shop", "trade", "price", "colo", "smell", "goods",
    ),
    "How can someone sleep better?": (
        "sleep", "bed", "night", "rest", "dark", "quiet", "routine", "caffeine", "coffee", "screen", "relax",
        "tired", "hour", "schedule", "room", "pillow", "calm", "alarm", "nap",
    ),
    "What do you like about trains?": (
        "train", "rail", "travel", "journey", "ride", "view", "window", "seat", "station", "comfort", "speed",
        "fast", "scenery", "landscape", "track", "relax", "trip", "calm", "passeng",
    ),
    "Why is reading useful?": (
        "read", "book", "knowledge", "learn", "mind", "vocabular", "word", "imagin", "understand", "story",
        "stories", "brain", "think", "idea", "inform", "language", "focus", "educat", "skill",
    ),
    "Describe a mountain village.": (
        "mountain", "village", "house", "home", "peak", "snow", "hill", "valley", "stone", "wood", "quiet",
        "peace", "air", "people", "road", "path", "cottage", "roof", "river", "tree", "forest", "small",
    ),
}  # fmt: skip
_ONE_WORD: dict[str, tuple[str, ...]] = {
    "Name an animal that lives in the sea.": (
        "fish", "shark", "whale", "dolphin", "octopus", "squid", "crab", "lobster", "jellyfish", "seal", "turtle",
        "starfish", "seahorse", "orca", "eel", "shrimp", "ray", "walrus", "tuna", "salmon", "clam", "oyster",
        "coral", "urchin", "otter", "penguin", "manatee", "cod", "sardine", "stingray", "narwhal",
    ),
    "What colour is grass?": ("green",),
    "Name a fruit that is yellow.": ("banana", "lemon", "pineapple", "mango", "pear", "apple", "grapefruit", "quince"),
    "What is the opposite of cold?": ("hot", "warm", "heat"),
    "Name a day of the week.": tuple(d.lower() for d in _DAYS),
    "What do bees make?": ("honey", "wax", "beeswax"),
}  # fmt: skip
_START_WORDS = ["Certainly", "Indeed", "Well", "Sure"]
_END_PHRASES = ["That is all.", "The end.", "Thank you."]
_JSON_KEYS = [("name", "city"), ("title", "year"), ("colour", "size"), ("animal", "sound")]

# kind -> (instruction template, needs a one-word question)
_INSTRUCTIONS: dict[str, str] = {
    "one_word": "Answer with one word only.",
    "all_caps": "Write your whole answer in capital letters.",
    "lowercase": "Write your whole answer in lowercase letters only.",
    "json_keys": 'Reply with only a JSON object that has exactly the keys "{a}" and "{b}".',
    "bullets": "Answer with exactly {n} bullet points, each on its own line starting with '- '.",
    "no_commas": "Do not use any commas in your answer.",
    "starts_with": "Start your answer with the word '{word}'.",
    "ends_with": "End your answer with the exact phrase '{phrase}'",
    "max_words": "Answer in at most {n} words.",
    "quoted": "Wrap your whole answer in double quotation marks.",
}


def instruction_items(size: int, seed: int) -> list[dict[str, Any]]:
    """Verifiable instruction following: a question plus one checkable constraint (one word, all capitals, a JSON
    object with given keys, exactly N bullet points, no commas, a given first word, ...). Scored per item by
    :func:`follows_instruction`, pure checks; chance near 0 for most kinds."""
    return _distinct(size, seed, _instruction_item)


def _instruction_item(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(sorted(_INSTRUCTIONS))
    args: dict[str, Any] = {}
    if kind == "json_keys":
        args["a"], args["b"] = rng.choice(_JSON_KEYS)
    elif kind == "bullets":
        args["n"] = rng.choice([2, 3, 4])
    elif kind == "starts_with":
        args["word"] = rng.choice(_START_WORDS)
    elif kind == "ends_with":
        args["phrase"] = rng.choice(_END_PHRASES)
    elif kind == "max_words":
        args["n"] = rng.choice([5, 8, 10])
    topics = _ONE_WORD if kind == "one_word" else _TOPICS
    topic = rng.choice(list(topics))
    question = f"{topic} {_INSTRUCTIONS[kind].format(**args)}"
    digest = hashlib.sha256(f"instructions\x00{question}".encode()).hexdigest()[:16]
    # json_keys is judged on form only (a JSON object answers no topic, and a collapsed output is never one); every
    # other kind also needs the answer on topic: ``accept`` (one-word answers) or ``topic`` (word stems)
    on_topic = {} if kind == "json_keys" else {("accept" if kind == "one_word" else "topic"): list(topics[topic])}
    return {"id": digest, "question": question, "answer": kind, "check": {"kind": kind, **args, **on_topic}}


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


def _json_object(text: str) -> Any:
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.S)
    body = fenced.group(1) if fenced else body
    try:
        return json.loads(body)
    except ValueError:
        return None


def on_topic(check: dict[str, Any], text: str) -> bool:
    """Whether ``text`` answers the item's question: its one word is an accepted answer (``accept``), or one of its
    words starts with a stem of the topic (``topic``). A check with neither (older items, ``json_keys``) passes."""
    words = [w.lower() for w in _words(text)]
    if check.get("accept") is not None:
        return len(words) == 1 and words[0].rstrip("s") in {a.rstrip("s") for a in check["accept"]}
    if check.get("topic") is not None:
        return any(w.startswith(tuple(check["topic"])) for w in words)
    return True


def follows_instruction(check: dict[str, Any], text: str) -> bool:
    """Whether ``text`` satisfies the item's constraint and answers its question (:func:`on_topic`). Pure; every kind
    is unit tested both ways."""
    return _follows_form(check, text) and on_topic(check, text)


def _follows_form(check: dict[str, Any], text: str) -> bool:
    kind, t = check["kind"], text.strip()
    letters = re.findall(r"[A-Za-z]", t)
    if kind == "one_word":
        return len(_words(t)) == 1
    if kind == "all_caps":
        return len(letters) >= 3 and not any(c.islower() for c in letters)
    if kind == "lowercase":
        return len(letters) >= 3 and not any(c.isupper() for c in letters)
    if kind == "json_keys":
        obj = _json_object(t)
        return isinstance(obj, dict) and set(obj) == {check["a"], check["b"]}
    if kind == "bullets":
        lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
        return len(lines) == check["n"] and all(ln.startswith(("- ", "* ")) for ln in lines)
    if kind == "no_commas":
        return len(_words(t)) >= 3 and "," not in t
    if kind == "starts_with":
        first = _words(t)[:1]
        return bool(first) and first[0].lower() == check["word"].lower()
    if kind == "ends_with":
        return t.endswith(check["phrase"])
    if kind == "max_words":
        return 1 <= len(_words(t)) <= check["n"]
    if kind == "quoted":
        return len(t) >= 3 and t[0] in '"“' and t[-1] in '"”'
    raise ValueError(f"unknown instruction kind {kind!r}")
