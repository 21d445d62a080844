"""The model's names, shapes and trainable set match the authors' release; weights load by name."""
import argparse
import json
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import Block
from transformers.models.bert.modeling_bert import BertLayer

from models_alta import ARCHITECTURES, build_model
from util.assets import mrm_state_shapes, write_cxr_bert_dir, write_mrm_checkpoint
from util.checkpoint import (CheckpointError, load_alta_checkpoint, load_cxr_bert_weights, load_mrm_weights,
                             load_model_for_eval, save_checkpoint_atomic, torch_load_safe)
from util.layers import AdapterBlock, ViTLayerNorm
from util.text_encoder import AdaptedBertLayer, read_text_config
from util.trainable import mark_trainable, parameter_counts

REFERENCE = Path(__file__).resolve().parent / "reference"  # names, shapes and counts of the released model
TINY = ARCHITECTURES["alta_tiny"]


def _reference(name):
    path = REFERENCE / name
    if not path.is_file():
        pytest.fail(f"reference file {path} is missing")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def full_size_model(tmp_path_factory):
    """The paper-size ALTA on the meta device (no memory for weights), with the trainable rule."""
    text_dir = write_cxr_bert_dir(tmp_path_factory.mktemp("full_bert"), hidden_size=768, num_layers=12,
                                  num_heads=12, intermediate_size=3072, projection_size=128,
                                  vocab_size=30522, weights=None)
    with torch.device("meta"):
        model = build_model("alta", text_encoder=text_dir, load_text_weights=False)
    mark_trainable(model)
    return model


def test_full_size_state_dict_matches_the_release(full_size_model):
    reference = _reference("alta_state_dict.json")
    state = full_size_model.state_dict()
    assert list(state) == list(reference)
    assert {k: list(v.shape) for k, v in state.items()} == {k: v["shape"] for k, v in reference.items()}
    named = dict(full_size_model.named_parameters())
    flags = {k: bool(k in named and named[k].requires_grad) for k in state}
    assert flags == {k: v["trainable"] for k, v in reference.items()}


def test_full_size_parameter_counts(full_size_model):
    stats = _reference("alta_param_stats.json")
    total, trainable = parameter_counts(full_size_model)
    text_total, text_trainable = parameter_counts(full_size_model, "bert_encoder.")
    assert (total, trainable) == (stats["total_params"], stats["trainable_params"]) == (242_177_854, 18_333_502)
    assert (text_total, text_trainable) == (stats["text_total"], stats["text_trainable"])
    assert (total - text_total, trainable - text_trainable) == (stats["vision_total"], stats["vision_trainable"])


def test_mrm_layout_of_the_asset_factory_matches_the_reference():
    reference = _reference("mrm_state_dict.json")
    shapes = mrm_state_shapes(text_hidden=384, text_vocab=30000, text_positions=100)
    vision = {k: list(v) for k, v in shapes.items() if not k.startswith(("bert_encoder.", "bert_mlp."))}
    ref_vision = {k: (v["shape"] if isinstance(v, dict) else v) for k, v in reference.items()
                  if not k.startswith(("bert_encoder.", "bert_mlp."))}
    assert vision == ref_vision
    assert set(shapes) - set(vision) <= set(reference)


def test_cxr_bert_layout_of_the_asset_factory_matches_the_reference(tmp_path):
    reference = _reference("cxrbert_specialized_state_dict.json")
    text_dir = write_cxr_bert_dir(tmp_path, num_layers=12, seed=1)
    state = torch.load(text_dir / "pytorch_model.bin", weights_only=True)
    layer_zero = {k for k in state if ".layer." not in k or ".layer.0." in k}
    ref_zero = {k for k in reference if ".layer." not in k or ".layer.0." in k}
    assert layer_zero == ref_zero
    assert len(state) == len(reference)


def test_zero_initialised_adapter_block_equals_the_timm_block():
    torch.manual_seed(0)
    adapted = AdapterBlock(32, 4)
    plain = Block(32, 4, qkv_bias=True, norm_layer=ViTLayerNorm)
    missing, unexpected = plain.load_state_dict(adapted.state_dict(), strict=False)
    assert not missing and all("adapter" in k for k in unexpected)
    x = torch.randn(3, 10, 32)
    torch.testing.assert_close(adapted(x), plain(x), rtol=0, atol=0)
    torch.nn.init.normal_(adapted.mlp_adapter.D_fc2.weight)
    assert not torch.allclose(adapted(x), plain(x))


def test_zero_initialised_adapted_bert_layer_equals_the_transformers_layer(cxr_bert_dir):
    config = read_text_config(cxr_bert_dir)
    torch.manual_seed(0)
    plain = BertLayer(config).eval()
    adapted = AdaptedBertLayer(BertLayer(config)).eval()
    adapted.load_state_dict({**adapted.state_dict(), **plain.state_dict()})
    x = torch.randn(2, 7, config.hidden_size)
    mask = torch.zeros(2, 1, 1, 7)
    mask[0, ..., 5:] = torch.finfo(torch.float32).min
    torch.testing.assert_close(adapted(x, mask), plain(x, mask), rtol=0, atol=0)
    torch.nn.init.normal_(adapted.attn_adapter.D_fc2.weight)
    assert not torch.allclose(adapted(x, mask), plain(x, mask))


def _tiny(cxr_bert_dir, **kw):
    torch.manual_seed(0)
    return build_model("alta_tiny", text_encoder=cxr_bert_dir, **kw)


def test_mrm_checkpoint_fills_the_vision_tower_and_decoder(tmp_path, cxr_bert_dir):
    model = _tiny(cxr_bert_dir)
    text_before = {k: v.clone() for k, v in model.bert_encoder.state_dict().items()}
    path = write_mrm_checkpoint(tmp_path / "MRM.pth", seed=3, **TINY)
    report = load_mrm_weights(model, path)
    file_state = torch.load(path, weights_only=True)["model"]
    vision_keys = [k for k in file_state if not k.startswith(("bert_encoder.", "bert_mlp."))]
    state = model.state_dict()
    for key in vision_keys:
        torch.testing.assert_close(state[key], file_state[key], rtol=0, atol=0, msg=key)
    assert sorted(report.loaded) == sorted(vision_keys)
    assert sorted(report.ignored) == sorted(k for k in file_state if k.startswith(("bert_encoder.", "bert_mlp.")))
    # Everything the MRM file cannot provide is ALTA's own addition.
    assert all(any(part in k for part in ("adapter", "_embedding", "missing_token", "logit_scale", "head", "bert_embed"))
               for k in report.missing)
    for key, value in model.bert_encoder.state_dict().items():
        assert torch.equal(value, text_before[key]), key
    assert "bert_mlp (2)" in report.summary() and len(report.summary().splitlines()) <= 3


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_cxr_bert_directory_fills_every_text_tensor(tmp_path, weights):
    text_dir = write_cxr_bert_dir(tmp_path, weights=weights, stray_position_ids=True, seed=5)
    torch.manual_seed(0)
    model = build_model("alta_tiny", text_encoder=text_dir, load_text_weights=False)
    report = load_cxr_bert_weights(model.bert_encoder, text_dir)
    if weights == "bin":
        file_state = torch.load(text_dir / "pytorch_model.bin", weights_only=True)
    else:
        from safetensors.torch import load_file
        file_state = load_file(str(text_dir / "model.safetensors"))
    state = model.bert_encoder.state_dict()
    for key, value in file_state.items():
        if key != "bert.embeddings.position_ids":
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    for key, value in model.bert_encoder.cls_projection_head.state_dict().items():
        assert torch.equal(model.bert_encoder.local_projection_head.state_dict()[key], value)
    assert report.ignored == ["bert.embeddings.position_ids"]
    assert all("adapter" in k or k.startswith("local_projection_head") for k in report.missing)


def test_alta_checkpoint_with_namespace_args_round_trips(tmp_path, cxr_bert_dir, tiny_alta_checkpoint):
    checkpoint = torch_load_safe(tiny_alta_checkpoint)
    assert isinstance(checkpoint["args"], argparse.Namespace)
    model = load_model_for_eval(tiny_alta_checkpoint, cxr_bert_dir)
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["model"][key]), key
    images = torch.randn(2, 3, 224, 224)
    fresh = _tiny(cxr_bert_dir, load_text_weights=False)
    load_alta_checkpoint(fresh, tiny_alta_checkpoint)
    torch.testing.assert_close(fresh.eval().forward_img_feature(images), model.forward_img_feature(images))


def test_checkpoint_of_another_model_is_refused_with_a_readable_message(tmp_path, cxr_bert_dir):
    other = tmp_path / "resnet.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.bias": torch.zeros(4)}}, other)
    with pytest.raises(CheckpointError, match=r"resnet\.pth is not an ALTA checkpoint"):
        load_model_for_eval(other, cxr_bert_dir)
    with pytest.raises(CheckpointError, match="is not an MRM checkpoint"):
        load_mrm_weights(_tiny(cxr_bert_dir), other)
    bare = tmp_path / "bare.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointError, match=r"bare\.pth has no 'model' entry"):
        load_model_for_eval(bare, cxr_bert_dir)


class _Payload:
    pass


def test_checkpoint_with_arbitrary_objects_is_not_unpickled(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"model": {}, "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"unsafe\.pth cannot be loaded safely"):
        torch_load_safe(path)


def test_mrm_checkpoint_of_another_size_is_refused(tmp_path, cxr_bert_dir):
    path = write_mrm_checkpoint(tmp_path / "MRM.pth", **{**TINY, "embed_dim": 64})
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_mrm_weights(_tiny(cxr_bert_dir), path)


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint-newest.pth"
    save_checkpoint_atomic({"epoch": 1}, target)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomic({"epoch": 2}, target)
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-newest.pth"]
