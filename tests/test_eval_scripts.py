"""The five evaluation scripts end to end: tiny ALTA checkpoint, miniature benchmarks."""
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import CheXpert8X200_img2img
import RSNA_zeroshot
from util.checkpoint import CheckpointError, sha256_file
from util.demo_benchmarks import make_demo_benchmarks
from util.eval_data import CHEXPERT5X200_CLASSES, rsna_loader
from util.evaluation import rsna_zero_shot, run_script
from util.text_encoder import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
EXPECTED_METRICS = {
    "CheXpert8X200_img2img": ["P@1", "P@5", "P@10"],
    "CheXpert8X200_txt2img": ["P@1", "P@5", "P@10"],
    "CheXpert5X200_retrieval": ["P@1", "P@5", "P@10"],
    "CheXpert5X200_zeroshot": ["ACC"],
    "RSNA_zeroshot": ["AUC", "ACC", "F1"],
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_benchmarks(tmp_path_factory.mktemp("benchmarks"), per_class=2, image_size=32)


def model_flags(checkpoint, text_encoder) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--text_encoder", str(text_encoder), "--device", "cpu",
            "--num_workers", "0", "--batch_size", "32"]


@pytest.fixture(scope="module")
def small_prompt_file(tmp_path_factory) -> list[str]:
    """Two prompts per class: the shipped file's 760 prompts would dominate the test's time."""
    lists = {name: {"severity": ["", "mild"], "finding": [f"{name.lower()} is seen"]} for name in CHEXPERT5X200_CLASSES}
    path = tmp_path_factory.mktemp("prompts") / "prompts.json"
    path.write_text(json.dumps(lists))
    return ["--prompts", str(path)]


@pytest.mark.parametrize("script", EXPECTED_METRICS)
def test_script_writes_metrics_settings_and_checkpoint_hash(script, demo, tiny_alta_checkpoint, cxr_bert_dir,
                                                            small_prompt_file, tmp_path):
    output = tmp_path / "results" / f"{script}.json"
    extra = small_prompt_file if script == "CheXpert5X200_zeroshot" else []
    returned = importlib.import_module(script).main(
        demo[script] + extra + model_flags(tiny_alta_checkpoint, cxr_bert_dir) + ["--output", str(output)])
    record = json.loads(output.read_text())
    assert list(record["metrics"]) == EXPECTED_METRICS[script]
    assert record["metrics"] == returned
    assert all(0.0 <= value <= 1.0 for value in returned.values())
    assert record["checkpoint_sha256"] == sha256_file(tiny_alta_checkpoint)
    assert record["settings"]["checkpoint"] == str(tiny_alta_checkpoint)


def test_rsna_script_auc_equals_the_validation_routine(demo, tiny_alta_checkpoint, cxr_bert_dir):
    from util.checkpoint import load_model_for_eval

    flags = demo["RSNA_zeroshot"]
    metrics = RSNA_zeroshot.main(flags + model_flags(tiny_alta_checkpoint, cxr_bert_dir) + ["--output", ""])
    model = load_model_for_eval(tiny_alta_checkpoint, cxr_bert_dir, "cpu")
    loader = rsna_loader(flags[flags.index("--split_file") + 1], flags[flags.index("--rsna_root") + 1], 32, 0)
    validation = rsna_zero_shot(model, loader, load_tokenizer(cxr_bert_dir), torch.device("cpu"))
    assert validation["auroc"] == pytest.approx(metrics["AUC"])


def test_not_an_alta_checkpoint_fails_before_any_data_is_read(demo, cxr_bert_dir, tmp_path, monkeypatch):
    not_alta = tmp_path / "MRM.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1)}}, not_alta)

    def must_not_read(*args):
        raise AssertionError("data were read before the checkpoint was checked")
    monkeypatch.setattr(RSNA_zeroshot, "read_rsna_split", must_not_read)
    with pytest.raises(CheckpointError, match="MRM.pth is not an ALTA checkpoint"):
        RSNA_zeroshot.main(demo["RSNA_zeroshot"] + model_flags(not_alta, cxr_bert_dir))


def test_command_line_exits_0(demo, tiny_alta_checkpoint, cxr_bert_dir, tmp_path):
    output = tmp_path / "cli.json"
    argv = demo["CheXpert8X200_img2img"] + model_flags(tiny_alta_checkpoint, cxr_bert_dir) + ["--output", str(output)]
    done = subprocess.run([sys.executable, "CheXpert8X200_img2img.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "P@5" in done.stdout and json.loads(output.read_text())["metrics"]["P@5"] >= 0


def test_bad_input_is_a_one_line_error_with_exit_status_1(demo, tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    with pytest.raises(SystemExit) as exit_info:
        run_script(lambda: CheXpert8X200_img2img.main(demo["CheXpert8X200_img2img"] + ["--query_csv", str(missing)]))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"error: query CSV {missing} does not exist\n"
