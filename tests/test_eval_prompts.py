"""GLoRIA-style report clean-up and zero-shot prompt generation."""
import json
import math

import pytest

from util.eval_data import CHEXPERT5X200_CLASSES
from util.prompts import DEFAULT_PROMPTS_FILE, clean_report, generate_prompts, load_class_prompts, load_prompt_lists


@pytest.mark.parametrize("text, cleaned", [
    ("1. Mild atelectasis.\n2. No effusion. Stable.", "mild atelectasis no effusion"),  # one-word sentence dropped
    ("\n \n1.low lung volumes.\n \n2.no pneumothorax.\n", "low lung volumes no pneumothorax"),
    ("A nodule of 8.5 mm, unchanged.", "a nodule of 5 mm unchanged"),  # "8." reads as a numbered item
    ("Heart size is normal; no\nedema", "heart size is normal no edema"),
    ("Kerley-B lines, café au lait.", "kerley b lines caf au lait"),  # ASCII only
    ("Dr. Smith was called.", "smith was called"),
    ("", ""),
])
def test_clean_report(text, cleaned):
    assert clean_report(text) == cleaned


def write_prompt_file(path, content) -> str:
    path.write_text(json.dumps(content))
    return str(path)


def test_prompts_are_every_combination_in_the_given_order(tmp_path):
    lists = {"Effusion": {"order": ["severity", "location", "subtype"],
                          "subtype": ["pleural effusion", "pleural effusion"],
                          "severity": ["", "small"], "location": ["left", "right", "tiny"]}}
    prompts = generate_prompts(load_prompt_lists(write_prompt_file(tmp_path / "p.json", lists)))["Effusion"]
    assert len(prompts) == 2 * 3 * 2  # duplicates kept
    assert prompts[:3] == ["left pleural effusion", "left pleural effusion", "right pleural effusion"]
    assert prompts[-1] == "small tiny pleural effusion"


def test_without_order_the_written_order_is_used(tmp_path):
    lists = {"Edema": {"severity": ["", "mild"], "subtype": ["pulmonary edema"], "location": ["", "bilaterally"]}}
    prompts = generate_prompts(load_prompt_lists(write_prompt_file(tmp_path / "p.json", lists)))
    assert prompts == {"Edema": ["pulmonary edema", "pulmonary edema bilaterally",
                                 "mild pulmonary edema", "mild pulmonary edema bilaterally"]}


def test_shipped_prompt_file_covers_the_five_classes():
    prompts = load_class_prompts(DEFAULT_PROMPTS_FILE, CHEXPERT5X200_CLASSES)
    assert list(prompts) == list(CHEXPERT5X200_CLASSES)
    raw = json.loads(DEFAULT_PROMPTS_FILE.read_text())
    for name, lists in raw.items():
        assert len(prompts[name]) == math.prod(len(lists[key]) for key in lists["order"])
        assert all(prompt and prompt == prompt.strip() for prompt in prompts[name])
    assert raw["Pleural Effusion"]["order"] == ["severity", "location", "subtype"]
    assert "small left pleural effusion" in prompts["Pleural Effusion"]


@pytest.mark.parametrize("content, message", [
    ({"Edema": {"order": ["severity"], "severity": ["mild"], "subtype": ["edema"]}}, "exactly once"),
    ({"Edema": {"severity": []}}, "non-empty list of strings"),
    ({"Edema": ["mild edema"]}, "expected an object"),
    ([], "must hold a JSON object"),
])
def test_malformed_prompt_files_are_rejected(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        load_prompt_lists(write_prompt_file(tmp_path / "p.json", content))


def test_prompt_file_must_cover_exactly_the_classes(tmp_path):
    path = write_prompt_file(tmp_path / "p.json", {"Edema": {"subtype": ["edema"]}, "Fracture": {"subtype": ["x"]}})
    with pytest.raises(ValueError, match=r"missing \['Atelectasis'.*unexpected \['Fracture'\]"):
        load_class_prompts(path, CHEXPERT5X200_CLASSES)


def test_missing_or_invalid_prompt_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_prompt_lists(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_prompt_lists(tmp_path / "bad.json")


def test_prompt_emptied_by_clean_up_is_rejected(tmp_path):
    lists = {"Cardiomegaly": {"severity": ["", "mild"], "subtype": ["cardiomegaly"]}}
    with pytest.raises(ValueError, match="'cardiomegaly' is empty after clean-up"):
        generate_prompts(load_prompt_lists(write_prompt_file(tmp_path / "p.json", lists)))
