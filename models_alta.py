"""ALTA: an MRM-pretrained ViT and CXR-BERT, aligned by training adapters (Lian et al., TMI 2025).

The vision tower is a ViT with adapters (`util.layers.AdapterBlock`) fed with four views of a
study (current/prior x frontal/lateral) plus an MAE decoder that reconstructs the masked patches
of the current frontal image; the text tower is CXR-BERT with adapters
(`util.text_encoder.CXRBertTextEncoder`). Pre-training sums four losses: global and local
(token-patch) contrastive, masked-image reconstruction and image-conditioned masked language
modelling. Parameter names match the authors' release, so their `ALTA.pth` loads as is.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from timm.layers import PatchEmbed
from torch import nn

from util.checkpoint import load_cxr_bert_weights
from util.layers import AdapterBlock, ProjectionHead, ViTLayerNorm, plain_block
from util.losses import caption_lengths, contrastive_losses, masked_patch_loss
from util.pos_embed import sincos_pos_embed_tensor
from util.text_encoder import CXRBertTextEncoder

# The four views of a study, in the order they are folded into the batch: (view, time) rows of
# `view_embedding` (frontal 0, lateral 1) and `temporal_embedding` (current 0, prior 1).
VIEW_KEYS = ("img", "a_img", "l_img", "la_img")
VIEW_ROWS = (0, 1, 0, 1)
TIME_ROWS = (0, 0, 1, 1)
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100)

ARCHITECTURES = {
    # The paper's model: ViT-B/16 encoder, 4-block MAE decoder.
    "alta": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=768, decoder_depth=4, decoder_num_heads=6, mlp_ratio=4.0),
    # A few-hundred-thousand-parameter stand-in for the CPU demo and the tests.
    "alta_tiny": dict(patch_size=16, embed_dim=32, depth=2, num_heads=2,
                      decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, mlp_ratio=4.0),
}


class ALTALosses(NamedTuple):
    global_contrastive: torch.Tensor
    local_contrastive: torch.Tensor
    image_reconstruction: torch.Tensor
    mlm: torch.Tensor


class ALTA(nn.Module):
    """ALTA model. `text_encoder` is a local CXR-BERT-format directory.

    With `load_text_weights=True` (the default, as in the original) the text tower's weights are
    read from that directory and `local_projection_head` starts as a copy of
    `cls_projection_head`; with False only its `config.json` is read (e.g. before loading a
    complete ALTA checkpoint). The vision tower starts from MAE's initialisation; load an MRM
    checkpoint with `util.checkpoint.load_mrm_weights`.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=768, decoder_depth=4, decoder_num_heads=6, mlp_ratio=4.0,
                 norm_pix_loss=False, text_encoder=None, load_text_weights=True):
        super().__init__()
        if text_encoder is None:
            raise ValueError("ALTA needs text_encoder=<path of a CXR-BERT-format directory>, "
                             "e.g. ./BiomedVLP-CXR-BERT-specialized")
        self.img_size = img_size
        self.norm_pix_loss = norm_pix_loss
        text = CXRBertTextEncoder.from_directory(text_encoder)
        proj_dim = text.config.projection_size

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        grid = self.patch_embed.grid_size[0]
        # Parameters directly on the model, in the order of the original state dict.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.missing_token = nn.Parameter(torch.zeros(1, num_patches, embed_dim), requires_grad=False)
        self.pos_embed = nn.Parameter(sincos_pos_embed_tensor(embed_dim, grid), requires_grad=False)
        self.temporal_embedding = nn.Parameter(torch.zeros(1, 2, embed_dim))
        self.view_embedding = nn.Parameter(torch.zeros(1, 2, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed_tensor(decoder_embed_dim, grid), requires_grad=False)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.logit_scale_local1 = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.logit_scale_local2 = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))
        self.logit_scale_local3 = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

        self.blocks = nn.ModuleList([AdapterBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = ViTLayerNorm(embed_dim)
        self.bert_embed = nn.Linear(embed_dim, text.config.hidden_size)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.decoder_blocks = nn.ModuleList(
            [plain_block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)])
        self.decoder_norm = ViTLayerNorm(decoder_embed_dim)
        # Each 16x16 encoder patch predicts the matching 32x32 patch of the double-size image.
        self.decoder_pred = nn.Linear(decoder_embed_dim, (2 * patch_size) ** 2 * in_chans)

        self.projection_head = ProjectionHead(embed_dim, proj_dim)
        self.local_projection_head = ProjectionHead(embed_dim, proj_dim)
        self._init_vision_weights()

        self.bert_encoder = text
        if load_text_weights:
            load_cxr_bert_weights(self.bert_encoder, text_encoder)

    # ------------------------------------------------------------------ initialisation
    def _init_vision_weights(self):
        """MAE's initialisation for everything but the text tower; adapters stay identity."""
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for block in self.blocks:
            for adapter in (block.attn_adapter, block.mlp_adapter):
                nn.init.zeros_(adapter.D_fc2.weight)
                nn.init.zeros_(adapter.D_fc2.bias)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"cls_token", "temporal_embedding", "view_embedding"}

    @torch.no_grad()
    def clamp_logit_scales(self):
        """Keep every temperature in [0, ln 100]; the training loop calls this after each step."""
        for scale in (self.logit_scale, self.logit_scale_local1, self.logit_scale_local2, self.logit_scale_local3):
            scale.clamp_(0, LOGIT_SCALE_MAX)

    # ------------------------------------------------------------------ patches
    @property
    def recon_patch_size(self) -> int:
        return 2 * self.patch_embed.patch_size[0]

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C) with p = twice the encoder's patch size."""
        p = self.recon_patch_size
        n, c, h, w = imgs.shape
        if h != w or h % p:
            raise ValueError(f"patchify expects square images with a side divisible by {p}, got {h}x{w}")
        g = h // p
        x = imgs.reshape(n, c, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W), the inverse of `patchify`."""
        p = self.recon_patch_size
        n, length, dim = x.shape
        g = int(length**0.5)
        c = dim // (p * p)
        x = x.reshape(n, g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, g * p, g * p)

    # ------------------------------------------------------------------ vision tower
    def random_masking(self, x: torch.Tensor, mask_ratio: float):
        """MAE masking of (N, L, D) tokens with one `torch.rand(N, L)` draw.

        Returns the kept tokens, the binary mask (1 = removed) and the restore indices.
        """
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        noise = torch.rand(n, length, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        kept = torch.gather(x, 1, ids_shuffle[:, :len_keep, None].expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, img, a_img, l_img, la_img, mask_ratio):
        """Encode the four views of each study, folded into the batch (views do not attend to
        each other). Returns the cls features (B, 4, D), all kept patch tokens (B, 4*keep, D),
        the current-frontal sequence (B, 1+keep, D) and its mask and restore indices."""
        views = torch.stack([img, a_img, l_img, la_img], dim=1)  # (B, T, C, H, W)
        b, t = views.shape[:2]
        missing = (views == 0).flatten(2).all(dim=2).reshape(b * t, 1, 1)
        x = self.patch_embed(views.flatten(0, 1))
        x = torch.where(missing, self.missing_token.to(x.dtype), x)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        n, d = x.shape[1], x.shape[2]
        view_rows = self.view_embedding[0, list(VIEW_ROWS)][None, :, None, :]  # (1, T, 1, D)
        time_rows = self.temporal_embedding[0, list(TIME_ROWS)][None, :, None, :]
        x = (x.view(b, t, n, d) + view_rows + time_rows).view(b * t, n, d)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).view(b, t, n, d)
        cls_features = x[:, :, 0]
        patch_tokens = x[:, :, 1:].reshape(b, t * (n - 1), d)
        current_frontal = x[:, 0]
        mask, ids_restore = mask.view(b, t, -1)[:, 0], ids_restore.view(b, t, -1)[:, 0]
        return cls_features, patch_tokens, current_frontal, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch (N, L, p*p*C) from the kept tokens (cls first)."""
        x = self.decoder_embed(latent)
        n_masked = ids_restore.shape[1] + 1 - x.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(x.shape[0], n_masked, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[:, :, None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_patch_loss(self.patchify(imgs), pred, mask, self.norm_pix_loss)

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict, mask_ratio: float = 0.75) -> ALTALosses:
        """The four pre-training losses for a batch from `util.pretrain_data` (see SPEC §5)."""
        img_big = batch["img"]
        img = TF.resize(img_big, [self.img_size, self.img_size],
                        interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        cls_features, patch_tokens, current_frontal, mask, ids_restore = self.forward_encoder(
            img, batch["a_img"], batch["l_img"], batch["la_img"], mask_ratio)

        pooled = cls_features.mean(dim=1)  # missing views included, as in the original
        image_global = F.normalize(self.projection_head(pooled), dim=-1)

        # One BERT pass over [clean reports; masked reports]; only the masked half sees the image.
        ids, attention_mask = batch["ids"], batch["attention_mask"]
        image_offset = self.bert_embed(pooled)
        offset = torch.cat([torch.zeros_like(image_offset), image_offset])[:, None, :]
        hidden = self.bert_encoder.encode(torch.cat([ids, batch["inputs"]]), attention_mask.repeat(2, 1), offset)
        clean, masked = hidden[: ids.shape[0]], hidden[ids.shape[0]:]

        text_global = F.normalize(self.bert_encoder.global_features(clean), dim=-1)
        global_loss, local_loss = contrastive_losses(
            image_global, text_global, self.local_projection_head(patch_tokens),
            self.bert_encoder.local_features(clean), caption_lengths(attention_mask), self.logit_scale.exp(),
            self.logit_scale_local1.exp(), self.logit_scale_local2.exp(), self.logit_scale_local3.exp())
        recon_loss = self.forward_loss(img_big, self.forward_decoder(current_frontal, ids_restore), mask)
        mlm_loss = self.bert_encoder.mlm_loss(masked, batch["labels"])
        return ALTALosses(global_loss, local_loss, recon_loss, mlm_loss)

    # ------------------------------------------------------------------ evaluation features
    def forward_img_feature(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised global features (B, P) of frontal images (B, C, H, W), no masking."""
        images = images.to(self.pos_embed.device)
        x = self.patch_embed(images) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.temporal_embedding[:, :1] + self.view_embedding[:, :1]
        for block in self.blocks:
            x = block(x)
        return F.normalize(self.projection_head(self.norm(x)[:, 0]), dim=-1)

    def _text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        device = self.pos_embed.device
        hidden = self.bert_encoder.encode(input_ids.to(device), attention_mask.to(device))
        return self.bert_encoder.global_features(hidden)

    def forward_txt_feature(self, batch_dict: dict, normalize: bool = False) -> torch.Tensor:
        """Text features (B, C, P) for ids shaped (B, C, N): C prompts per item."""
        ids, attention_mask = batch_dict["input_ids"], batch_dict["attention_mask"]
        b, c, n = ids.shape
        features = self._text_features(ids.reshape(b * c, n), attention_mask.reshape(b * c, n))
        if normalize:
            features = F.normalize(features, dim=-1)
        return features.reshape(b, c, -1)

    def forward_txt_feature_single(self, batch_dict: dict) -> torch.Tensor:
        """L2-normalised text features (B, P) for ids shaped (B, N)."""
        return F.normalize(self._text_features(batch_dict["input_ids"], batch_dict["attention_mask"]), dim=-1)


def build_model(name: str = "alta", **kwargs) -> ALTA:
    """An ALTA of a registered size (`ARCHITECTURES`); keyword arguments override or extend it."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ALTA(**{**ARCHITECTURES[name], **kwargs})


def alta(**kwargs) -> ALTA:
    """The paper's ALTA (ViT-B/16 + CXR-BERT); pass text_encoder=<CXR-BERT directory>."""
    return build_model("alta", **kwargs)


def alta_tiny(**kwargs) -> ALTA:
    """A tiny ALTA with the same structure, for the CPU demo and tests."""
    return build_model("alta_tiny", **kwargs)
