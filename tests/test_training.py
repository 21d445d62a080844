"""Pre-training: the per-iteration learning rate, exact resuming, a 2-process DDP run, bad inputs."""
import json
import os
import socket
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import engine_pretrain as engine
import main_pretrain
import models_alta
from models_alta import ARCHITECTURES, ALTALosses
from util.assets import write_mrm_checkpoint
from util.checkpoint import load_model_for_eval, torch_load_safe
from util.demo_benchmarks import make_demo_benchmarks
from util.demo_data import make_demo_mimic
from util.lr_sched import learning_rate_at
from util.pretrain_data import REQUIRED_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
SMALL_INPUT = "64"  # 4x4 patches: the training tests need no 224 images (only validation does)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Four studies (one without a lateral view, two with a prior study): two batches of two."""
    return make_demo_mimic(tmp_path_factory.mktemp("mimic"), n_studies=4, image_size=32)


def train_argv(data_dir, text_encoder, output_dir, *extra) -> list[str]:
    """A two-step epoch of alta_tiny on 64-pixel views, one process on the CPU; `extra` overrides."""
    return ["--model", "alta_tiny", "--data_path", str(data_dir), "--text_encoder", str(text_encoder),
            "--output_dir", str(output_dir), "--input_size", SMALL_INPUT, "--batch_size", "2",
            "--epochs", "4", "--max_epochs", "1", "--warmup_epochs", "1", "--lr", "1e-3",
            "--num_workers", "0", "--device", "cpu", "--print_freq", "100", *extra]


def read_log(output_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / engine.LOG_FILE).read_text().splitlines()]


def must_not_run(*args, **kwargs):
    raise AssertionError("work started before the inputs were checked")


# ---------------------------------------------------------------------------------- learning rate

class ScalarModel(nn.Module):
    """Stands in for ALTA: four equal losses of one parameter; records the lr each forward sees."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.optimizer = None
        self.lrs_seen, self.clamps = [], 0

    def forward(self, batch, mask_ratio):
        self.lrs_seen.append(self.optimizer.param_groups[0]["lr"])
        loss = (self.weight * batch["x"]).sum() ** 2
        return ALTALosses(loss, loss, loss, loss)

    def clamp_logit_scales(self):
        self.clamps += 1


@pytest.mark.parametrize("accum_iter", [1, 3])
def test_learning_rate_follows_the_per_iteration_schedule(accum_iter):
    schedule = dict(lr=1e-3, min_lr=1e-5, warmup_epochs=1.5, epochs=5)
    args = Namespace(accum_iter=accum_iter, mask_ratio=0.75, print_freq=100, amp="off", **schedule)
    model = ScalarModel()
    model.optimizer = optimizer = engine.build_optimizer(model, schedule["lr"], weight_decay=0.05)
    loader = [{"x": torch.randn(2)} for _ in range(10)]

    stats = engine.train_one_epoch(model, loader, optimizer, engine.make_grad_scaler(torch.device("cpu"), "off"),
                                   1, args, torch.device("cpu"))

    trained = 10 - 10 % accum_iter  # an incomplete last accumulation cycle is left out
    cycle_starts = [step - step % accum_iter for step in range(trained)]
    assert model.lrs_seen == pytest.approx([learning_rate_at(1 + s / 10, **schedule) for s in cycle_starts])
    assert model.clamps == trained // accum_iter
    if accum_iter == 1:
        assert model.lrs_seen[0] == pytest.approx(1e-3 / 1.5)  # epoch 1.0 of a 1.5-epoch warm-up
        assert model.lrs_seen[5] == pytest.approx(1e-3)  # epoch 1.5: the cosine starts at its peak
        assert model.lrs_seen[9] < model.lrs_seen[6]
    assert stats["lr"] == model.lrs_seen[-1]


# ---------------------------------------------------------------------------------- resuming

def test_resumed_run_repeats_the_uninterrupted_second_epoch(data_dir, cxr_bert_dir, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    main_pretrain.main(train_argv(data_dir, cxr_bert_dir, whole, "--max_epochs", "2"))
    main_pretrain.main(train_argv(data_dir, cxr_bert_dir, split, "--max_epochs", "1"))
    main_pretrain.main(train_argv(data_dir, cxr_bert_dir, split, "--max_epochs", "2",
                                  "--resume", str(split / engine.NEWEST_CHECKPOINT)))

    uninterrupted, resumed = read_log(whole), read_log(split)
    assert [r["epoch"] for r in resumed] == [0, 1]
    for name in ALTALosses._fields:
        assert resumed[1][f"train_{name}"] == pytest.approx(uninterrupted[1][f"train_{name}"], rel=1e-6)
    assert resumed[1]["train_lr"] == uninterrupted[1]["train_lr"]
    final_whole = torch_load_safe(whole / engine.NEWEST_CHECKPOINT)
    final_split = torch_load_safe(split / engine.NEWEST_CHECKPOINT)
    assert final_split["epoch"] == 1
    for key, value in final_whole["model"].items():
        torch.testing.assert_close(final_split["model"][key], value, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------- distributed

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_run_trains_validates_and_saves(data_dir, cxr_bert_dir, tmp_path):
    rsna = make_demo_benchmarks(tmp_path / "benchmarks", per_class=1, image_size=32)["RSNA_zeroshot"]
    rsna_root = rsna[rsna.index("--rsna_root") + 1]
    mrm = write_mrm_checkpoint(tmp_path / "MRM.pth", **ARCHITECTURES["alta_tiny"])
    output = tmp_path / "ddp"
    argv = train_argv(data_dir, cxr_bert_dir, output, "--input_size", "224", "--batch_size", "1",
                      "--resume", str(mrm), "--from_begin", "--rsna_root", rsna_root)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "main_pretrain.py"), *argv]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert "effective batch 2 (batch 1 x accum 1 x 2 process(es))" in result.stdout
    (record,) = read_log(output)
    assert 0.0 <= record["val_auroc"] <= 1.0
    checkpoint = torch_load_safe(output / engine.NEWEST_CHECKPOINT)
    assert checkpoint["epoch"] == 0 and checkpoint["args"].world_size == 2
    assert (output / engine.BEST_CHECKPOINT).is_file() and (output / "checkpoint-0.pth").is_file()
    model = load_model_for_eval(output / engine.NEWEST_CHECKPOINT, cxr_bert_dir)
    assert model.logit_scale.item() == pytest.approx(checkpoint["model"]["logit_scale"].item())


NAN_ON_RANK_1 = """
import os, sys
sys.path.insert(0, {root!r})
import main_pretrain, models_alta

forward, calls = models_alta.ALTA.forward, []

def nan_on_rank_1_at_step_1(self, batch, mask_ratio=0.75):
    calls.append(1)
    losses = forward(self, batch, mask_ratio)
    return losses._replace(mlm=losses.mlm * float("nan")) if os.environ["RANK"] == "1" and len(calls) == 2 else losses

models_alta.ALTA.forward = nan_on_rank_1_at_step_1
main_pretrain.cli()
"""


def test_non_finite_loss_on_one_rank_stops_every_rank(data_dir, cxr_bert_dir, tmp_path):
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1.format(root=str(ROOT)))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(script),
               *train_argv(data_dir, cxr_bert_dir, tmp_path / "out", "--batch_size", "1")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    for rank in (0, 1):  # each rank stops on its own, none is left waiting for the other
        assert f"rank {rank}: error: non-finite loss at epoch 0, step 1" in result.stderr
    assert not (tmp_path / "out" / engine.NEWEST_CHECKPOINT).exists()


# ---------------------------------------------------------------------------------- bad inputs

def write_train_csv(directory: Path, rows: list[list[str]], columns=REQUIRED_COLUMNS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(columns)).to_csv(directory / "train.csv", index=False)
    return directory


def demo_rows(data_dir) -> list[list[str]]:
    """The demo studies with absolute paths, so that a CSV elsewhere can name them."""
    table = pd.read_csv(data_dir / "train.csv", dtype=str, keep_default_na=False)
    return [[value if value == "-1" or column == "report" else str(data_dir / value)
             for column, value in row.items()] for _, row in table[list(REQUIRED_COLUMNS)].iterrows()]


def test_csv_without_required_columns_is_named(data_dir, cxr_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(main_pretrain, "build_model", must_not_run)
    rows = [row[:4] for row in demo_rows(data_dir)]
    bad = write_train_csv(tmp_path / "data", rows, columns=REQUIRED_COLUMNS[:4])
    with pytest.raises(ValueError, match="lacks the column.*report"):
        main_pretrain.main(train_argv(bad, cxr_bert_dir, tmp_path / "out"))


def test_nonexistent_images_stop_before_training_with_count_and_first_paths(
        data_dir, cxr_bert_dir, tmp_path, monkeypatch, capsys):
    rows = demo_rows(data_dir)
    rows[1][0] = str(tmp_path / "gone" / "frontal.jpg")
    rows[2][1] = str(tmp_path / "gone" / "lateral.jpg")
    bad = write_train_csv(tmp_path / "data", rows + rows)
    with monkeypatch.context() as patched:
        patched.setattr(main_pretrain, "build_model", must_not_run)
        with pytest.raises(SystemExit) as stopped:
            main_pretrain.cli(train_argv(bad, cxr_bert_dir, tmp_path / "out"))
    assert stopped.value.code == 1
    message = capsys.readouterr().err
    assert "2 image file(s) do not exist" in message and "frontal.jpg" in message and "--skip_missing" in message

    with pytest.warns(UserWarning, match="dropped 4 of 8 row"):
        main_pretrain.main(train_argv(bad, cxr_bert_dir, tmp_path / "out", "--skip_missing"))
    assert len(read_log(tmp_path / "out")) == 1


def test_unreadable_image_during_training_names_the_file(data_dir, cxr_bert_dir, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a JPEG")
    rows = demo_rows(data_dir)
    rows[0][0] = str(broken)
    bad = write_train_csv(tmp_path / "data", rows)
    with pytest.raises(OSError, match="cannot read image .*broken.jpg"):
        main_pretrain.main(train_argv(bad, cxr_bert_dir, tmp_path / "out", "--num_workers", "1"))


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_the_last_checkpoint(
        data_dir, cxr_bert_dir, tmp_path, monkeypatch, capsys):
    forward, calls = models_alta.ALTA.forward, []

    def nan_at_epoch_1_step_1(self, batch, mask_ratio=0.75):
        calls.append(1)
        losses = forward(self, batch, mask_ratio)
        return losses._replace(mlm=losses.mlm * float("nan")) if len(calls) == 4 else losses

    monkeypatch.setattr(models_alta.ALTA, "forward", nan_at_epoch_1_step_1)
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        main_pretrain.cli(train_argv(data_dir, cxr_bert_dir, output, "--max_epochs", "3"))
    assert stopped.value.code == 1
    assert "non-finite loss at epoch 1, step 1 (global_contrastive" in capsys.readouterr().err
    assert torch_load_safe(output / engine.NEWEST_CHECKPOINT)["epoch"] == 0
    assert [record["epoch"] for record in read_log(output)] == [0]


def test_nonexistent_resume_path_fails_before_any_work(cxr_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(main_pretrain, "PretrainDataset", must_not_run)
    monkeypatch.setattr(main_pretrain, "build_model", must_not_run)
    missing = tmp_path / "nowhere" / "MRM.pth"
    with pytest.raises(FileNotFoundError, match=f"--resume {missing} does not exist"):
        main_pretrain.main(train_argv(tmp_path / "no_data", cxr_bert_dir, tmp_path / "out", "--resume", str(missing)))
