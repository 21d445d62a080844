"""Fixed 2-D sine-cosine position tables, as in MAE (`get_2d_sincos_pos_embed`)."""
import numpy as np
import torch


def _sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = False) -> np.ndarray:
    """Table of shape (grid_size**2 [+1], embed_dim); the optional cls row is all zeros.

    Half the channels encode the column index and half the row index, in MAE's order.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4 for a 2-D sin-cos table, got {embed_dim}")
    coords = np.arange(grid_size, dtype=np.float32)
    cols, rows = np.meshgrid(coords, coords)  # MAE takes the width coordinate first
    table = np.concatenate([_sincos_1d(embed_dim // 2, cols), _sincos_1d(embed_dim // 2, rows)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros([1, embed_dim]), table], axis=0)
    return table


def sincos_pos_embed_tensor(embed_dim: int, grid_size: int) -> torch.Tensor:
    """(1, grid_size**2 + 1, embed_dim) float32 tensor with the zero cls row first."""
    return torch.from_numpy(get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=True)).float().unsqueeze(0)
