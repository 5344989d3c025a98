"""Tasks: prompts with answer choices, split into disjoint calibration and test sets by seed.

Every task is scored the same way (``lens.experiments._scoring``): one forward pass per
prompt, the logits of each choice's first token at the last position, the answer's rank
among them. Built-in tasks are generated in code; users add tasks as JSONL files with one
``{"prompt": ..., "choices": [...], "answer": ...}`` object per line.

Split rule: the examples of a task are generated (or read) once, deduplicated by prompt,
shuffled by the seed and cut into [demonstrations |] calibration | test, so the sets are
disjoint by construction; ``TaskData`` checks it again. Calibration never sees a test prompt.
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lens.experiments._sentiment_data import NEGATIVE, POSITIVE


@dataclass(frozen=True)
class Example:
    """One prompt; ``answer`` indexes ``choices`` (each choice is scored by its first token)."""

    prompt: str
    choices: tuple[str, ...]
    answer: int
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class TaskData:
    """A task instance: disjoint calibration and test examples, and how they were made."""

    name: str
    calibration: tuple[Example, ...]
    test: tuple[Example, ...]
    metrics: tuple[str, ...] = ("accuracy",)
    info: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        overlap = {e.prompt for e in self.calibration} & {e.prompt for e in self.test}
        if overlap:
            raise ValueError(f"task {self.name!r}: {len(overlap)} prompt(s) are in both the calibration and "
                             f"the test set, e.g. {next(iter(overlap))!r}")


class TaskFileError(ValueError):
    """A malformed task file: the message names the file, the line and the field."""


def _split(name: str, examples: list[Example], n_calibration: int, n_test: int, seed: int, *,
           metrics=("accuracy",), info=None) -> TaskData:
    unique = list({e.prompt: e for e in examples}.values())
    random.Random(seed).shuffle(unique)
    need = n_calibration + n_test
    if need > len(unique):
        raise ValueError(f"task {name!r} has {len(unique)} distinct examples, {need} asked for "
                         f"({n_calibration} calibration + {n_test} test)")
    return TaskData(name, tuple(unique[:n_calibration]), tuple(unique[n_calibration:need]), tuple(metrics),
                    dict(info or {}))


# --- sentiment -------------------------------------------------------------------------------
def sentiment(n_calibration: int, n_test: int, seed: int, *, shots: int = 2) -> TaskData:
    """Few-shot sentiment classification of short reviews (241 sentences written for this project).

    The ``shots`` demonstrations (half positive) are drawn first and shared by every prompt;
    their order is shuffled by the seed. Answer: " positive" or " negative".
    """
    if shots < 0 or shots % 2:
        raise ValueError(f"sentiment shots must be an even number >= 0, got {shots}")
    rng = random.Random(seed)
    pos, neg = list(POSITIVE), list(NEGATIVE)
    rng.shuffle(pos)
    rng.shuffle(neg)
    demos = [(s, 1) for s in pos[: shots // 2]] + [(s, 0) for s in neg[: shots // 2]]
    rng.shuffle(demos)
    label = {1: " positive", 0: " negative"}
    prefix = "".join(f"Review: {s}\nSentiment:{label[y]}\n\n" for s, y in demos)
    pool = [(s, 1) for s in pos[shots // 2:]] + [(s, 0) for s in neg[shots // 2:]]
    examples = [Example(f"{prefix}Review: {s}\nSentiment:", (" positive", " negative"), 0 if y == 1 else 1,
                        {"sentence": s, "label": "positive" if y else "negative"}) for s, y in pool]
    return _split("sentiment", examples, n_calibration, n_test, seed,
                  info={"shots": shots, "demonstrations": [s for s, _ in demos]})


# --- multiple-choice facts -----------------------------------------------------------------
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "England": "London", "Ireland": "Dublin",
    "Austria": "Vienna", "Portugal": "Lisbon", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Poland": "Warsaw", "Hungary": "Budapest", "Kenya": "Nairobi", "Peru": "Lima", "Cuba": "Havana",
    "Thailand": "Bangkok", "Denmark": "Copenhagen", "Belgium": "Brussels", "China": "Beijing",
    "Argentina": "Buenos Aires", "Turkey": "Ankara", "Iran": "Tehran", "Canada": "Ottawa",
}
LANGUAGES = {
    "France": "French", "Germany": "German", "Italy": "Italian", "Spain": "Spanish", "Japan": "Japanese",
    "Russia": "Russian", "Brazil": "Portuguese", "Greece": "Greek", "China": "Chinese", "Poland": "Polish",
    "Sweden": "Swedish", "Turkey": "Turkish", "Finland": "Finnish", "Korea": "Korean", "Egypt": "Arabic",
    "Hungary": "Hungarian", "Norway": "Norwegian", "Denmark": "Danish", "Thailand": "Thai",
}
OPPOSITES = {
    "hot": "cold", "up": "down", "big": "small", "fast": "slow", "happy": "sad", "light": "dark",
    "open": "closed", "early": "late", "strong": "weak", "rich": "poor", "wet": "dry", "full": "empty",
    "hard": "soft", "loud": "quiet", "old": "young", "high": "low", "long": "short", "thick": "thin",
    "clean": "dirty", "first": "last", "heavy": "light", "inside": "outside", "win": "lose", "push": "pull",
}
COLORS_OF = {
    "a ripe banana": "yellow", "grass": "green", "the clear sky": "blue", "snow": "white", "coal": "black",
    "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow", "milk": "white", "blood": "red",
    "a crow": "black", "a lime": "green", "chocolate": "brown", "a flamingo": "pink", "the ocean": "blue",
}


def facts(n_calibration: int, n_test: int, seed: int, *, n_choices: int = 4) -> TaskData:
    """Multiple-choice facts as completions: capitals, languages, opposites, colours.

    Prompt e.g. "The capital of France is"; choices the right answer and ``n_choices - 1``
    others of the same kind (each with a leading space).
    """
    rng = random.Random(seed)
    kinds = [
        ("capital", CAPITALS, "The capital of {} is"),
        ("language", LANGUAGES, "The main language spoken in {} is"),
        ("opposite", OPPOSITES, "The opposite of {} is"),
        ("color", COLORS_OF, "The color of {} is"),
    ]
    examples = []
    for kind, table, template in kinds:
        values = sorted(set(table.values()))
        for key, value in table.items():
            others = [v for v in values if v != value]
            picks = rng.sample(others, min(n_choices - 1, len(others)))
            choices = [value, *picks]
            rng.shuffle(choices)
            examples.append(Example(template.format(key), tuple(f" {c}" for c in choices), choices.index(value),
                                    {"kind": kind, "subject": key}))
    return _split("facts", examples, n_calibration, n_test, seed)


# --- indirect object identification (METHODS sec 9) ---------------------------------------------
NAMES = ("Mary", "John", "Tom", "Anna", "James", "Sarah", "David", "Emma", "Michael", "Lisa", "Paul", "Kate",
         "Mark", "Laura", "Peter", "Alice", "Daniel", "Rachel", "Chris", "Helen", "Steve", "Julia", "Eric",
         "Susan", "Brian", "Amy", "Kevin", "Linda", "Jason", "Nancy", "George", "Emily", "Frank", "Grace")
PLACES = ("store", "park", "school", "hospital", "office", "beach", "restaurant", "station", "garden", "library")
OBJECTS = ("drink", "book", "ring", "letter", "kiss", "bone", "basketball", "computer", "necklace", "snack")
IOI_TEMPLATES = (
    "When {A} and {B} went to the {place}, {B} gave a {object} to",
    "Then, {A} and {B} had a lot of fun at the {place}. {B} gave a {object} to",
    "After {A} and {B} went to the {place}, {B} handed a {object} to",
    "While {A} and {B} were working at the {place}, {B} gave a {object} to",
    "Friends {A} and {B} found a {object} at the {place}. {B} gave it to",
    "The {place} was quiet when {A} and {B} arrived. {B} passed a {object} to",
)


def ioi(n_calibration: int, n_test: int, seed: int) -> TaskData:
    """Indirect object identification (METHODS sec 9): "When Mary and John went to the store,
    John gave a drink to" -> " Mary" (the indirect object) rather than " John" (the subject).

    Both name orders (ABBA, BABA) occur. Choices: (IO, S); ``logit_diff`` is the circuit metric.
    """
    rng = random.Random(seed)
    examples = []
    for _ in range(4 * (n_calibration + n_test) + 100):
        io, s = rng.sample(NAMES, 2)
        template = rng.choice(IOI_TEMPLATES)
        io_first = rng.random() < 0.5
        examples.append(Example(_ioi_prompt(template, io, s, io_first, rng), (f" {io}", f" {s}"), 0,
                                {"io": io, "s": s, "order": "ABBA" if io_first else "BABA"}))
    return _split("ioi", examples, n_calibration, n_test, seed, metrics=("accuracy", "logit_diff"))


def _ioi_prompt(template: str, io: str, s: str, io_first: bool, rng: random.Random) -> str:
    """Fill a template whose {A} {B} pair is named in either order and whose repeated name is S."""
    pair = f"{io} and {s}" if io_first else f"{s} and {io}"
    body = template.replace("{A} and {B}", pair).replace("{B}", s)
    return body.format(place=rng.choice(PLACES), object=rng.choice(OBJECTS))


# --- colored objects (METHODS sec 9) ----------------------------------------------------------
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "silver")
THINGS = ("textbook", "puzzle", "cup", "pencil", "keychain", "notebook", "scarf", "mug", "sock", "ball", "bracelet",
          "phone", "lamp", "plate", "umbrella", "stapler", "envelope", "teddy bear", "sunglasses", "jug")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _colored_scene(rng: random.Random) -> tuple[str, str, list[str]]:
    things = rng.sample(THINGS, 3)
    colors = rng.sample(COLORS, 3)
    items = [f"{_article(c)} {c} {t}" for c, t in zip(colors, things)]
    k = rng.randrange(3)
    question = (f"Q: On the table, I see {items[0]}, {items[1]}, and {items[2]}. "
                f"What color is the {things[k]}?\nA:")
    return question, colors[k], colors


def colored_objects(n_calibration: int, n_test: int, seed: int, *, shots: int = 1) -> TaskData:
    """Colored Objects (METHODS sec 9): "Q: On the table, I see an orange textbook, a red puzzle,
    and a purple cup. What color is the textbook?\\nA: Orange". ``shots`` solved examples
    (shared by every prompt) come first; choices are the three colours named (capitalised).
    """
    rng = random.Random(seed)
    prefix, solved = "", set()
    for _ in range(shots):
        q, answer, _ = _colored_scene(rng)
        prefix += f"{q} {answer.capitalize()}\n"
        solved.add(q)
    examples = []
    for _ in range(3 * (n_calibration + n_test) + 100):
        q, answer, colors = _colored_scene(rng)
        if q in solved:  # a question whose answer is in the prompt's own demonstrations
            continue
        choices = tuple(f" {c.capitalize()}" for c in colors)
        examples.append(Example(prefix + q, choices, colors.index(answer), {"color": answer}))
    return _split("colored_objects", examples, n_calibration, n_test, seed)


# --- copying / induction ----------------------------------------------------------------------
WORDS = ("apple", "chair", "river", "cloud", "table", "horse", "pencil", "garden", "window", "candle", "mirror",
         "bottle", "rocket", "forest", "castle", "basket", "ladder", "pillow", "tiger", "violin", "anchor",
         "helmet", "kettle", "lemon", "magnet", "needle", "parrot", "rabbit", "saddle", "tunnel", "wallet",
         "zebra", "bridge", "carpet", "dragon", "engine", "falcon", "guitar", "hammer")


def induction(n_calibration: int, n_test: int, seed: int, *, vocab: str = "organism", period: int = 10,
              n_choices: int = 4) -> TaskData:
    """Copying by induction: a random sequence r of distinct tokens, then r again, cut short;
    the answer is the token that followed the current one in the first copy.

    vocab: "organism" (``t00``..``t63``, the induction organism's words) or "words" (common
    English nouns). Choices: the answer and ``n_choices - 1`` other tokens of r, so copying
    a token seen before is not enough: the right one must be found by induction.
    """
    if vocab not in ("organism", "words"):
        raise ValueError(f"induction vocab must be 'organism' or 'words', got {vocab!r}")
    tokens = [f"t{i:02d}" for i in range(64)] if vocab == "organism" else list(WORDS)
    if not 2 <= period <= len(tokens) or n_choices > period:
        raise ValueError(f"induction needs 2 <= period <= {len(tokens)} and n_choices <= period")
    rng = random.Random(seed)
    examples = []
    for _ in range(2 * (n_calibration + n_test) + 100):
        r = rng.sample(tokens, period)
        k = rng.randrange(1, period)  # the second copy shows r[:k]; the answer is r[k]
        seq = r + r[:k]
        others = rng.sample([t for t in r if t != r[k]], n_choices - 1)
        choices = [r[k], *others]
        rng.shuffle(choices)
        examples.append(Example(" ".join(seq), tuple(f" {c}" for c in choices), choices.index(r[k]),
                                {"period": period, "cut": k}))
    return _split("induction", examples, n_calibration, n_test, seed)


# --- needle in a haystack -------------------------------------------------------------------
FILLER = (
    "The morning train left the station on time.", "A light rain fell over the quiet town.",
    "The market opened early and the stalls filled with fruit.", "Children played in the square after school.",
    "The river ran slowly past the old mill.", "A cat slept in the sun on the windowsill.",
    "The baker set out fresh loaves before dawn.", "Clouds drifted across the hills all afternoon.",
    "The library stayed open late on Thursdays.", "Someone was practicing the piano next door.",
    "The bus stopped at every corner of the long avenue.", "Leaves gathered along the edge of the path.",
    "The museum added a small room of old maps.", "A farmer drove his tractor along the lane.",
    "The bridge was painted green last summer.", "The shop on the corner sold hats and gloves.",
)
CODE_WORDS = ("banana", "violet", "harbor", "cactus", "copper", "meadow", "puzzle", "lantern", "walnut", "glacier",
              "pepper", "canyon", "marble", "falcon", "rocket", "velvet", "jungle", "tulip", "compass", "saffron")


def needle(n_calibration: int, n_test: int, seed: int, *, filler: int = 8, n_choices: int = 4) -> TaskData:
    """Needle-in-a-haystack retrieval: "The secret word is X." hidden at a random depth among
    ``filler`` neutral sentences; the prompt asks for the word. Choices: X and other code words
    that do not occur in the prompt.
    """
    rng = random.Random(seed)
    examples = []
    for _ in range(3 * (n_calibration + n_test) + 100):
        hay = [rng.choice(FILLER) for _ in range(filler)]
        word = rng.choice(CODE_WORDS)
        depth = rng.randrange(filler + 1)
        hay.insert(depth, f"The secret word is {word}.")
        prompt = " ".join(hay) + "\nQuestion: What is the secret word?\nAnswer: The secret word is"
        choices = [word, *rng.sample([w for w in CODE_WORDS if w != word], n_choices - 1)]
        rng.shuffle(choices)
        examples.append(Example(prompt, tuple(f" {c}" for c in choices), choices.index(word),
                                {"depth": depth, "filler": filler}))
    return _split("needle", examples, n_calibration, n_test, seed)


TASKS: dict[str, Callable[..., TaskData]] = {
    "sentiment": sentiment, "facts": facts, "ioi": ioi, "colored_objects": colored_objects,
    "induction": induction, "needle": needle,
}


def task_options(name: str) -> dict[str, object]:
    """The options a built-in task takes (keyword-only parameters) and their defaults."""
    sig = inspect.signature(TASKS[name])
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def make_task(name: str, n_calibration: int, n_test: int, seed: int = 0, **options) -> TaskData:
    """A built-in task by name, or a JSONL task file by path."""
    if name in TASKS:
        known = task_options(name)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"task {name!r} has no option(s) {unknown}; options: {sorted(known) or 'none'}")
        return TASKS[name](n_calibration, n_test, seed, **options)
    path = Path(name)
    if path.suffix == ".jsonl" or path.exists():
        if options:
            raise ValueError(f"a JSONL task takes no options, got {sorted(options)}")
        return load_jsonl(path, n_calibration, n_test, seed)
    raise ValueError(f"unknown task {name!r}: built-in tasks are {', '.join(TASKS)}, or give a .jsonl file")


# --- JSONL task files ---------------------------------------------------------------------------
JSONL_FIELDS = ("prompt", "choices", "answer", "split", "id", "meta")


def read_jsonl(path: str | Path) -> list[Example]:
    """Read and validate a task file; a malformed line fails naming the file, line and field.

    Each non-empty line: ``{"prompt": str, "choices": [str, ...] (>= 2, distinct),
    "answer": one of the choices or its index, "split": "calibration" | "test" (optional),
    "id": ..., "meta": {...} (optional)}``. Include the leading space a choice should have.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: task file not found")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskFileError(f"{where}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(rec, dict):
            raise TaskFileError(f"{where}: expected a JSON object with prompt, choices and answer")
        unknown = sorted(set(rec) - set(JSONL_FIELDS))
        if unknown:
            raise TaskFileError(f"{where}: unknown field(s) {unknown}; allowed: {', '.join(JSONL_FIELDS)}")
        prompt = rec.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise TaskFileError(f"{where}: field 'prompt': expected a non-empty string, got {prompt!r}")
        choices = rec.get("choices")
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise TaskFileError(f"{where}: field 'choices': expected a list of at least 2 non-empty strings, "
                                f"got {choices!r}")
        if len(set(choices)) != len(choices):
            raise TaskFileError(f"{where}: field 'choices': duplicate choices {choices!r}")
        answer = rec.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, str | int):
            raise TaskFileError(f"{where}: field 'answer': expected one of the choices or its index, got {answer!r}")
        if isinstance(answer, str):
            if answer not in choices:
                raise TaskFileError(f"{where}: field 'answer': {answer!r} is not one of the choices {choices!r}")
            answer = choices.index(answer)
        elif not 0 <= answer < len(choices):
            raise TaskFileError(f"{where}: field 'answer': index {answer} out of range for {len(choices)} choices")
        split = rec.get("split")
        if split not in (None, "calibration", "test"):
            raise TaskFileError(f"{where}: field 'split': expected 'calibration' or 'test', got {split!r}")
        meta = rec.get("meta", {})
        if not isinstance(meta, dict):
            raise TaskFileError(f"{where}: field 'meta': expected an object, got {meta!r}")
        out.append(Example(prompt, tuple(choices), answer, {**meta, "line": lineno, "split": split,
                                                            "id": rec.get("id")}))
    if not out:
        raise TaskFileError(f"{path}: no examples")
    return out


def load_jsonl(path: str | Path, n_calibration: int, n_test: int, seed: int = 0) -> TaskData:
    """A JSONL task: the ``split`` fields when every line has one, else a seeded random split."""
    examples = read_jsonl(path)
    name = Path(path).stem
    splits = {e.meta["split"] for e in examples}
    if None not in splits:
        cal = [e for e in examples if e.meta["split"] == "calibration"]
        test = [e for e in examples if e.meta["split"] == "test"]
        rng = random.Random(seed)
        rng.shuffle(cal)
        rng.shuffle(test)
        if len(cal) < n_calibration or len(test) < n_test:
            raise ValueError(f"{path}: {len(cal)} calibration and {len(test)} test examples, "
                             f"{n_calibration} and {n_test} asked for")
        return TaskData(name, tuple(cal[:n_calibration]), tuple(test[:n_test]), info={"path": str(path)})
    if splits != {None}:
        raise TaskFileError(f"{path}: field 'split' is given on some lines only: give it on every line or on none")
    return _split(name, examples, n_calibration, n_test, seed, info={"path": str(path)})
