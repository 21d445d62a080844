"""Shared fixtures: tiny artefacts generated on the fly, nothing downloaded."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from util.assets import write_cxr_bert_dir  # noqa: E402


@pytest.fixture(scope="session")
def cxr_bert_dir(tmp_path_factory) -> Path:
    """A tiny CXR-BERT-format directory (hidden 32, 2 layers, projection 16), dropout off."""
    return write_cxr_bert_dir(tmp_path_factory.mktemp("cxr_bert"), dropout=0.0)


TINY_ARCH = "alta_tiny"


@pytest.fixture(scope="session")
def tiny_alta_checkpoint(tmp_path_factory, cxr_bert_dir) -> Path:
    """A checkpoint of a randomly initialised tiny ALTA, saved as the training loop saves one."""
    import argparse

    import torch

    from models_alta import build_model
    from util.checkpoint import save_checkpoint_atomic

    torch.manual_seed(0)
    model = build_model(TINY_ARCH, text_encoder=cxr_bert_dir)
    path = tmp_path_factory.mktemp("alta_ckpt") / "checkpoint-tiny.pth"
    args = argparse.Namespace(model=TINY_ARCH, text_encoder=str(cxr_bert_dir), input_size=224)
    return save_checkpoint_atomic({"model": model.state_dict(), "args": args, "epoch": 0}, path)
