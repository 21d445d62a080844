"""Synthetic X-ray-like images for tests, benchmarks and the demo (no patient data involved)."""
import numpy as np
from PIL import Image


def synthetic_xray(rng: np.random.Generator, height: int = 256, width: int = 256, lateral: bool = False,
                   opacity: bool = False) -> np.ndarray:
    """A grey-level uint8 image (height, width) with a chest-like layout.

    Bright body and mediastinum, two dark lung fields (one elongated field for a lateral view),
    rib-like bands and noise. `opacity=True` adds a bright blob in a lung, a stand-in for disease.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y /= height
    x /= width
    img = 0.75 + 0.05 * rng.standard_normal()  # soft tissue
    img = np.full((height, width), img, dtype=np.float32)
    cx = 0.5 + 0.03 * rng.standard_normal()
    if lateral:
        fields = [(cx, 0.45, 0.28, 0.33)]
    else:
        fields = [(cx - 0.2, 0.45, 0.14, 0.3), (cx + 0.2, 0.45, 0.14, 0.3)]
    for fx, fy, rx, ry in fields:
        inside = ((x - fx) / rx) ** 2 + ((y - fy) / ry) ** 2 < 1.0
        img[inside] -= 0.45
    ribs = 0.06 * np.sin(2 * np.pi * (y * rng.uniform(8, 11) + 0.3 * np.abs(x - cx)))
    img += ribs
    if opacity:
        ox, oy = rng.uniform(0.25, 0.75), rng.uniform(0.35, 0.65)
        img += 0.35 * np.exp(-(((x - ox) ** 2 + (y - oy) ** 2) / (2 * 0.06**2)))
    img += 0.04 * rng.standard_normal((height, width)).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def save_synthetic_xray(path, rng: np.random.Generator, height: int = 256, width: int = 256, **kwargs) -> None:
    """Write a synthetic X-ray as an 8-bit grey JPEG or PNG (by the file's suffix)."""
    Image.fromarray(synthetic_xray(rng, height, width, **kwargs)).save(path)
