"""Report clean-up and zero-shot prompts, following GLoRIA's conventions.

A prompt file is a JSON object mapping each class to named phrase lists:

    {"Pleural Effusion": {"order": ["severity", "location", "subtype"],
                          "severity": ["", "small"], "location": ["left", "right"],
                          "subtype": ["pleural effusion"]}, ...}

The prompts of a class are every combination of its lists, taken in `order` and joined by
spaces. Without `order`, the lists are combined in the order they are written, so GLoRIA's
published dictionary saved with `json.dump` can be used as it is.
"""
import itertools
import json
import re
from pathlib import Path

DEFAULT_PROMPTS_FILE = Path(__file__).with_name("chexpert5x200_prompts.json")

_NUMBERED_ITEM = re.compile(r"[0-9]+\.")
_WORD = re.compile(r"\w+")


def clean_report(text: str) -> str:
    """GLoRIA's text clean-up: lower-cased word tokens of every sentence of two words or more.

    Newlines become spaces; the text is split at numbered items ("1.") and at full stops;
    one-word sentences are dropped (counted before non-ASCII characters are removed).
    """
    sentences = []
    for item in _NUMBERED_ITEM.split(text.replace("\n", " ")):
        for sentence in item.split("."):
            words = _WORD.findall(sentence.lower())
            if len(words) <= 1:
                continue
            ascii_words = (w.encode("ascii", "ignore").decode("ascii") for w in words)
            sentences.append(" ".join(w for w in ascii_words if w))
    return " ".join(sentences)


def load_prompt_lists(path=DEFAULT_PROMPTS_FILE) -> dict[str, list[list[str]]]:
    """Read a prompt file; return, per class, its phrase lists in combination order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"prompt file {path} is not valid JSON ({err})") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"prompt file {path} must hold a JSON object mapping class names to phrase lists")
    return {name: _ordered_lists(name, lists, path) for name, lists in raw.items()}


def _ordered_lists(class_name: str, lists, path) -> list[list[str]]:
    where = f"prompt file {path}, class {class_name!r}"
    if not isinstance(lists, dict):
        raise ValueError(f"{where}: expected an object of named phrase lists")
    names = [key for key in lists if key != "order"]
    order = lists.get("order", names)
    if not isinstance(order, list) or sorted(order) != sorted(names):
        raise ValueError(f"{where}: 'order' must name each of its lists {names} exactly once, got {order!r}")
    ordered = []
    for key in order:
        phrases = lists[key]
        if not isinstance(phrases, list) or not phrases or not all(isinstance(p, str) for p in phrases):
            raise ValueError(f"{where}: list {key!r} must be a non-empty list of strings")
        ordered.append(phrases)
    return ordered


def generate_prompts(prompt_lists: dict[str, list[list[str]]]) -> dict[str, list[str]]:
    """Every combination of each class's phrase lists, joined by spaces and cleaned.

    The clean-up also removes the spaces an empty phrase leaves. Duplicate phrases give
    duplicate prompts on purpose: they weigh in the class embedding.
    """
    prompts = {}
    for name, lists in prompt_lists.items():
        combos = [" ".join(combo) for combo in itertools.product(*lists)]
        prompts[name] = [clean_report(combo) for combo in combos]
        emptied = [combo.strip() for combo, prompt in zip(combos, prompts[name]) if not prompt]
        if emptied:
            raise ValueError(f"class {name!r}: prompt {emptied[0]!r} is empty after clean-up "
                             "(it drops one-word sentences); give it at least two words")
    return prompts


def load_class_prompts(path, classes) -> dict[str, list[str]]:
    """The prompts of exactly `classes`, in that order, from a prompt file."""
    prompt_lists = load_prompt_lists(path)
    missing = [c for c in classes if c not in prompt_lists]
    extra = [c for c in prompt_lists if c not in classes]
    if missing or extra:
        raise ValueError(f"prompt file {path} must have phrase lists for exactly {list(classes)}; "
                         f"missing {missing}, unexpected {extra}")
    return generate_prompts({c: prompt_lists[c] for c in classes})
