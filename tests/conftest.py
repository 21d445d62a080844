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
