"""Behaviour of the ALTA forward pass that the original's numbers depend on."""
import math

import pytest
import torch
from timm.optim import param_groups_weight_decay

from models_alta import build_model
from util.trainable import mark_trainable
from util.text_encoder import load_tokenizer


@pytest.fixture
def tiny_model(cxr_bert_dir):
    torch.manual_seed(0)
    model = build_model("alta_tiny", text_encoder=cxr_bert_dir, norm_pix_loss=True)
    with torch.no_grad():  # give the adapters and embeddings non-trivial values
        for name, param in model.named_parameters():
            if "D_fc2" in name or "_embedding" in name and "bert" not in name:
                param.normal_(std=0.02)
    return model


def make_batch(cxr_bert_dir, batch=3, seed=0, missing=("la_img",)):
    g = torch.Generator().manual_seed(seed)
    tokenizer = load_tokenizer(cxr_bert_dir)
    reports = ["No pleural effusion or pneumothorax is seen. Heart size is normal.",
               "There is mild cardiomegaly.",
               "Patchy opacity in the right lower lobe may represent pneumonia. Lung volumes are low."][:batch]
    encoded = tokenizer(reports, padding="max_length", max_length=128, truncation=True, return_tensors="pt")
    ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    chosen = (torch.rand(ids.shape, generator=g) < 0.5) & (ids > 4)
    views = {"img": torch.randn(batch, 3, 448, 448, generator=g)}
    for key in ("a_img", "l_img", "la_img"):
        views[key] = torch.zeros(batch, 3, 224, 224) if key in missing else torch.randn(batch, 3, 224, 224, generator=g)
    return {**views, "ids": ids, "attention_mask": attention_mask,
            "inputs": ids.masked_fill(chosen, tokenizer.mask_token_id), "labels": ids.masked_fill(~chosen, -100)}


def test_masking_draws_one_rand_per_forward(tiny_model, cxr_bert_dir):
    batch = make_batch(cxr_bert_dir)
    img = torch.nn.functional.interpolate(batch["img"], size=224)
    torch.manual_seed(11)
    *_, mask, ids_restore = tiny_model.forward_encoder(img, batch["a_img"], batch["l_img"], batch["la_img"], 0.75)
    torch.manual_seed(11)
    noise = torch.rand(3 * 4, 196)[::4]  # rows of the current frontal views
    expected = torch.ones(3, 196)
    expected[:, :49] = 0
    expected = torch.gather(expected, 1, torch.argsort(torch.argsort(noise, dim=1), dim=1))
    assert torch.equal(mask, expected)
    assert torch.equal(ids_restore, torch.argsort(torch.argsort(noise, dim=1), dim=1))


def test_all_zero_view_is_replaced_by_the_missing_token(tiny_model, cxr_bert_dir):
    batch = make_batch(cxr_bert_dir, missing=("la_img",))
    batch["a_img"][0] = 1e-3  # nearly blank but present: must not count as missing
    img = batch["img"][:, :, ::2, ::2]

    def cls_features():
        torch.manual_seed(5)
        return tiny_model.forward_encoder(img, batch["a_img"], batch["l_img"], batch["la_img"], 0.75)[0]

    before = cls_features()
    with torch.no_grad():
        tiny_model.patch_embed.proj.bias += 1.0  # changes every present view's tokens
    after = cls_features()
    assert torch.equal(before[:, 3], after[:, 3])  # the missing prior lateral never saw the patch embedding
    assert not torch.allclose(before[:, :3], after[:, :3])
    assert not torch.allclose(before[0, 1], after[0, 1])


def test_image_conditioning_changes_only_the_masked_half(tiny_model, cxr_bert_dir):
    batch = make_batch(cxr_bert_dir)

    def losses():
        torch.manual_seed(3)
        return tiny_model.eval()(batch)

    before = losses()
    with torch.no_grad():
        tiny_model.bert_embed.weight.mul_(5.0)
    after = losses()
    assert torch.equal(before.global_contrastive, after.global_contrastive)
    assert torch.equal(before.local_contrastive, after.local_contrastive)
    assert torch.equal(before.image_reconstruction, after.image_reconstruction)
    assert not torch.isclose(before.mlm, after.mlm)


def test_temperatures_are_clamped_to_ln_100(tiny_model):
    with torch.no_grad():
        tiny_model.logit_scale.fill_(7.0)
        tiny_model.logit_scale_local1.fill_(-1.0)
        tiny_model.logit_scale_local2.fill_(2.0)
    tiny_model.clamp_logit_scales()
    assert tiny_model.logit_scale.item() == pytest.approx(math.log(100))
    assert tiny_model.logit_scale_local1.item() == 0.0
    assert tiny_model.logit_scale_local2.item() == 2.0
    assert tiny_model.logit_scale_local3.item() == pytest.approx(math.log(1 / 0.07))


def test_one_optimiser_step_lowers_the_loss_and_changes_only_trainable_tensors(tiny_model, cxr_bert_dir):
    batch = make_batch(cxr_bert_dir)
    mark_trainable(tiny_model)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    optimizer = torch.optim.AdamW(param_groups_weight_decay(tiny_model, 0.05), lr=1e-3, betas=(0.9, 0.95))

    def total_loss():
        torch.manual_seed(1)
        return sum(tiny_model(batch))

    loss = total_loss()
    loss.backward()
    optimizer.step()
    tiny_model.clamp_logit_scales()
    with torch.no_grad():
        assert total_loss() < loss.detach()
    trainable = {n for n, p in tiny_model.named_parameters() if p.requires_grad}
    changed = {k for k, v in tiny_model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= trainable | {"bert_encoder.cls.predictions.decoder.bias"}  # tied to .bias
    assert "bert_encoder.bert.embeddings.word_embeddings.weight" not in changed
    assert "blocks.0.attn.qkv.weight" not in changed


def test_evaluation_features(tiny_model, cxr_bert_dir):
    tiny_model.eval()
    tokenizer = load_tokenizer(cxr_bert_dir)
    enc = tokenizer(["There is pneumonia", "There is no pneumonia"], padding="max_length", max_length=10,
                    return_tensors="pt")
    images = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        img = tiny_model.forward_img_feature(images)
        single = tiny_model.forward_txt_feature_single(enc)
        grouped = tiny_model.forward_txt_feature({k: v[None] for k, v in enc.items()})
        normalised = tiny_model.forward_txt_feature({k: v[None] for k, v in enc.items()}, normalize=True)
    assert img.shape == (4, 16) and torch.allclose(img.norm(dim=-1), torch.ones(4))
    assert grouped.shape == (1, 2, 16) and not torch.allclose(grouped.norm(dim=-1), torch.ones(1, 2))
    torch.testing.assert_close(normalised[0], single)


def test_attention_uses_scaled_dot_product_attention(tiny_model, cxr_bert_dir, monkeypatch):
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        tiny_model(make_batch(cxr_bert_dir))
    vision, decoder, text = len(tiny_model.blocks), len(tiny_model.decoder_blocks), tiny_model.bert_encoder.config.num_hidden_layers
    assert len(calls) == vision + decoder + text


def test_patchify_round_trip(tiny_model):
    imgs = torch.randn(2, 3, 448, 448)
    patches = tiny_model.patchify(imgs)
    assert patches.shape == (2, 196, 32 * 32 * 3)
    assert torch.equal(tiny_model.unpatchify(patches), imgs)
