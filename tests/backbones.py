"""A small seeded backbone and real photos, shared by the calibration tests and
``scripts/calibration_table.py``: photographs from scikit-image's data module (shipped in its
wheel) turned into neck input features the way a detector's backbone makes them
(non-negative, skewed, heavy-tailed ReLU maps at strides 8, 16 and 32).
"""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

#: Colour photographs in scikit-image's wheel (greyscale ones are made RGB).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera",
          "coins", "clock")


class TinyBackbone(nn.Module):
    """Stride-2 3x3 convs with ReLU: 3 -> 16 -> 32 -> C3 (stride 8) -> C4 (16) -> C5 (32).
    Kaiming-normal weights from ``seed``; biases slightly positive, as trained ReLU
    networks' often are."""

    def __init__(self, channels: Sequence[int], seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        widths = [3, 16, 32, *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1)
                                   for a, b in itertools.pairwise(widths))
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.in_channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen)
                                  * (2 / fan_in) ** 0.5)
                conv.bias.copy_(torch.rand(conv.bias.shape, generator=gen) * 0.1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        levels = []
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if i >= 2:
                levels.append(x)
        return tuple(levels)


def export_backbone(path: pathlib.Path, channels: Sequence[int], seed: int = 0
                    ) -> pathlib.Path:
    """The backbone as ONNX with a dynamic image size (input ``image``, outputs
    ``c3, c4, ...``)."""
    from necktool.quiet import quiet

    model = TinyBackbone(channels, seed).eval()
    names = [f"c{3 + i}" for i in range(len(channels))]
    with quiet():
        torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False,
                          input_names=["image"], output_names=names,
                          dynamic_axes={"image": {2: "H", 3: "W"},
                                        **{n: {2: f"h{n}", 3: f"w{n}"} for n in names}})
    return path


def photo(name: str) -> np.ndarray:
    """``(H, W, 3)`` uint8."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def write_photos(folder: pathlib.Path, names: Sequence[str] = PHOTOS,
                 scale: float = 0.25) -> list[pathlib.Path]:
    """PNGs of ``names`` scaled by ``scale`` (keeping their different sizes)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        img = Image.fromarray(photo(name))
        size = (max(32, round(img.width * scale)), max(32, round(img.height * scale)))
        path = folder / f"{name}.png"
        img.resize(size, Image.Resampling.BILINEAR).save(path)
        paths.append(path)
    return paths
