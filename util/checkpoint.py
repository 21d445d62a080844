"""Reading and writing weights.

Three kinds of input are recognised by their key layout:
  * an MRM checkpoint (`{'model': ...}` with MRM's vision, decoder and own text-branch names),
    which initialises ALTA's vision tower and decoder;
  * a CXR-BERT-format directory, which initialises the text tower;
  * an ALTA checkpoint (`{'model': ..., 'args': argparse.Namespace, ...}`), complete weights.
Every file is read with `torch.load(weights_only=True)`; only `argparse.Namespace` is allowed
beyond plain containers and tensors. Each load ends with a short report grouped by module.
"""
import argparse
import hashlib
import os
import pickle
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

SAFE_GLOBALS = [argparse.Namespace]
MRM_TEXT_PREFIXES = ("bert_encoder.", "bert_mlp.")
TEXT_PREFIX = "bert_encoder."
STRAY_POSITION_IDS = "bert.embeddings.position_ids"
TIED_TEXT_KEYS = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                  "cls.predictions.decoder.bias": "cls.predictions.bias"}
CXR_BERT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class CheckpointError(ValueError):
    """A weights file that is unreadable, of the wrong kind or of the wrong shape."""


# ---------------------------------------------------------------------------------- reports
def _module_of(name: str) -> str:
    """`blocks.3.attn_adapter.D_fc1.weight` -> `blocks.*.attn_adapter`."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", name).rsplit(".", 2)[0] if name.count(".") >= 2 else name.split(".")[0]


def _top_of(name: str) -> str:
    return name.split(".")[0]


def _summarise(names, key) -> str:
    counts = Counter(key(n) for n in names)
    return ", ".join(f"{group} ({count})" if count > 1 else group for group, count in counts.items())


@dataclass
class LoadReport:
    source: str
    target: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    ignored: list = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"Loaded {len(self.loaded)} tensors from {self.source} into the {self.target}: "
                 f"{_summarise(self.loaded, _top_of)}"]
        if self.missing:
            lines.append(f"  not in the file, initialised here ({len(self.missing)}): {_summarise(self.missing, _module_of)}")
        if self.ignored:
            lines.append(f"  in the file, not used ({len(self.ignored)}): {_summarise(self.ignored, _top_of)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------------- files
def torch_load_safe(path):
    """`torch.load(path, weights_only=True)` with argparse.Namespace allowed, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} cannot be loaded safely (weights_only=True): {str(err).splitlines()[0]} "
            "Only checkpoints made of tensors, plain Python values and argparse.Namespace are accepted.") from None
    except (RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {str(err).splitlines()[0]}") from None


def save_checkpoint_atomic(obj, path) -> Path:
    """torch.save to a temporary file in the same directory, then rename: a crash never leaves
    a half-written checkpoint under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_kind(state: dict) -> str | None:
    """'alta', 'mrm' or 'cxr-bert' from the key layout of a state dict, else None."""
    if "blocks.0.attn_adapter.D_fc1.weight" in state and "bert_encoder.bert.embeddings.word_embeddings.weight" in state:
        return "alta"
    if "patch_embed.proj.weight" in state and "blocks.0.attn.qkv.weight" in state:
        return "mrm"
    if "bert.embeddings.word_embeddings.weight" in state:
        return "cxr-bert"
    return None


def _model_state(checkpoint, path) -> dict:
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise CheckpointError(f"{path} has no 'model' entry holding a state dict (found: {keys}); "
                          "expected a checkpoint saved as {'model': state_dict, ...}.")


def _describe_kind(state) -> str:
    kind = checkpoint_kind(state)
    return f"it looks like a {kind} checkpoint" if kind else \
        f"its keys ({', '.join(list(state)[:3])}, ...) match none of ALTA, MRM or CXR-BERT"


def _check_shapes(path, incoming: dict, expected: dict, hint: str):
    wrong = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in incoming.items()
             if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        listing = "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in wrong[:3])
        raise CheckpointError(f"{path}: {len(wrong)} tensors have the wrong shape ({listing}). {hint}")


# ---------------------------------------------------------------------------------- loaders
def load_mrm_weights(model, path) -> LoadReport:
    """Fill ALTA's vision tower and decoder from an MRM checkpoint; MRM's text branch is ignored."""
    state = _model_state(torch_load_safe(path), path)
    if checkpoint_kind(state) != "mrm":
        raise CheckpointError(f"{path} is not an MRM checkpoint: {_describe_kind(state)}. "
                              "--resume with --from_begin expects the MRM vision weights (MRM.pth).")
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(TEXT_PREFIX)}
    used = {k: v for k, v in state.items() if k in expected and not k.startswith(MRM_TEXT_PREFIXES)}
    _check_shapes(path, used, expected, "The checkpoint was trained for a different ViT size than --model.")
    model.load_state_dict(used, strict=False)
    return LoadReport(str(path), "vision tower and decoder", loaded=list(used),
                      missing=[k for k in expected if k not in used],
                      ignored=[k for k in state if k not in used])


def _read_cxr_bert_state(directory) -> tuple[dict, Path]:
    directory = Path(directory)
    for name in CXR_BERT_WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file
                return load_file(str(path)), path
            return torch_load_safe(path), path
    raise FileNotFoundError(f"{directory} holds no {' or '.join(CXR_BERT_WEIGHT_FILES)}; "
                            "--text_encoder must name a CXR-BERT-format directory with its weights")


def load_cxr_bert_weights(text_encoder, directory) -> LoadReport:
    """Fill the text tower from a CXR-BERT directory; `local_projection_head` becomes a copy of
    `cls_projection_head` (as in the original). Adapters keep their identity initialisation."""
    state, path = _read_cxr_bert_state(directory)
    if checkpoint_kind(state) != "cxr-bert":
        raise CheckpointError(f"{path} is not a CXR-BERT checkpoint: {_describe_kind(state)}.")
    expected = text_encoder.state_dict()
    used = {k: v for k, v in state.items()
            if k in expected and k != STRAY_POSITION_IDS and not (k in TIED_TEXT_KEYS and TIED_TEXT_KEYS[k] in state)}
    _check_shapes(path, used, expected, f"{Path(directory) / 'config.json'} does not describe these weights.")
    text_encoder.load_state_dict(used, strict=False)
    text_encoder.local_projection_head.load_state_dict(text_encoder.cls_projection_head.state_dict())
    tied = set(TIED_TEXT_KEYS)
    return LoadReport(str(path), "text tower", loaded=list(used),
                      missing=[k for k in expected if k not in used and k not in tied],
                      ignored=[k for k in state if k not in used and k not in tied])


def load_alta_checkpoint(model, path, checkpoint=None) -> LoadReport:
    """Load a complete ALTA checkpoint strictly: every model tensor must be in the file."""
    checkpoint = torch_load_safe(path) if checkpoint is None else checkpoint
    state = _model_state(checkpoint, path)
    if checkpoint_kind(state) != "alta":
        raise CheckpointError(f"{path} is not an ALTA checkpoint: {_describe_kind(state)}.")
    state = {k: v for k, v in state.items() if k != TEXT_PREFIX + STRAY_POSITION_IDS}
    expected = model.state_dict()
    _check_shapes(path, state, expected, "The checkpoint was trained with a different --model or text encoder.")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the model: missing {_summarise(missing, _module_of) or 'none'}; "
                              f"unexpected {_summarise(unexpected, _module_of) or 'none'}.")
    model.load_state_dict(state)
    return LoadReport(str(path), "model", loaded=list(state))


def architecture_of(checkpoint, path) -> str:
    """The registered architecture name of an ALTA checkpoint (from its args, else its shapes)."""
    from models_alta import ARCHITECTURES

    name = getattr(checkpoint.get("args"), "model", None)
    if name in ARCHITECTURES:
        return name
    state = checkpoint["model"]
    width = state["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    for candidate, arch in ARCHITECTURES.items():
        if (arch["embed_dim"], arch["depth"]) == (width, depth):
            return candidate
    raise CheckpointError(f"{path}: no registered architecture has width {width} and depth {depth}")


def load_model_for_eval(checkpoint_path, text_encoder, device="cpu"):
    """An ALTA model in eval mode on `device`, built to match the checkpoint and loaded from it.

    The text tower's architecture and tokenizer come from the CXR-BERT directory; its weights
    come from the checkpoint. Fails before any data is touched if the file is not ALTA's.
    """
    from models_alta import build_model

    checkpoint = torch_load_safe(checkpoint_path)
    state = _model_state(checkpoint, checkpoint_path)
    if checkpoint_kind(state) != "alta":
        raise CheckpointError(f"{checkpoint_path} is not an ALTA checkpoint: {_describe_kind(state)}.")
    grid = int(round((state["pos_embed"].shape[1] - 1) ** 0.5))
    patch = state["patch_embed.proj.weight"].shape[-1]
    model = build_model(architecture_of(checkpoint, checkpoint_path), img_size=grid * patch,
                        text_encoder=text_encoder, load_text_weights=False)
    load_alta_checkpoint(model, checkpoint_path, checkpoint)
    return model.to(device).eval()
