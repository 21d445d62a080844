"""Small building blocks shared by the vision and text towers."""
from functools import partial

import torch
from torch import nn
from timm.models.vision_transformer import Block

ADAPTER_RATIO = 0.25
PARALLEL_ADAPTER_SCALE = 0.5
ViTLayerNorm = partial(nn.LayerNorm, eps=1e-6)


class Adapter(nn.Module):
    """Bottleneck adapter `fc2(GELU(fc1(x)))`, optionally with a skip connection.

    `D_fc2` starts at zero, so a fresh adapter is the identity (with skip) or zero (without).
    """

    def __init__(self, width: int, ratio: float = ADAPTER_RATIO, skip: bool = True):
        super().__init__()
        hidden = int(width * ratio)
        self.skip = skip
        self.act = nn.GELU()
        self.D_fc1 = nn.Linear(width, hidden)
        self.D_fc2 = nn.Linear(hidden, width)
        nn.init.zeros_(self.D_fc2.weight)
        nn.init.zeros_(self.D_fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.D_fc2(self.act(self.D_fc1(x)))
        return x + y if self.skip else y


class ProjectionHead(nn.Module):
    """`Linear -> GELU -> LayerNorm(eps 1e-12) -> Linear`, the CXR-BERT projection head layout."""

    def __init__(self, input_dim: int, proj_dim: int):
        super().__init__()
        self.dense_to_hidden = nn.Linear(input_dim, proj_dim)
        self.transform_act_fn = nn.GELU()
        self.LayerNorm = nn.LayerNorm(proj_dim, eps=1e-12)
        self.dense_to_output = nn.Linear(proj_dim, proj_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_to_output(self.LayerNorm(self.transform_act_fn(self.dense_to_hidden(x))))


class AdapterBlock(Block):
    """timm ViT block with a serial adapter after attention and a parallel adapter beside the MLP.

    x = x + A_attn(Attn(LN1(x)));  h = LN2(x);  x = x + MLP(h) + 0.5 * A_mlp(h)
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, **kwargs):
        kwargs.setdefault("qkv_bias", True)
        kwargs.setdefault("norm_layer", ViTLayerNorm)
        super().__init__(dim, num_heads, mlp_ratio, **kwargs)
        self.attn_adapter = Adapter(dim, skip=True)
        self.mlp_adapter = Adapter(dim, skip=False)

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn_adapter(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))))
        h = self.norm2(x)
        return x + self.drop_path2(self.ls2(self.mlp(h))) + PARALLEL_ADAPTER_SCALE * self.mlp_adapter(h)


def plain_block(dim: int, num_heads: int, mlp_ratio: float = 4.0) -> Block:
    """The standard timm block used by the MAE decoder (and as the adapter-free reference)."""
    return Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=ViTLayerNorm)
