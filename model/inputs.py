"""The encoder's input contract: RGB images normalised by the ImageNet mean and std, as the released I-JEPA weights
were trained. The loaders, the evaluation transform, the export and the pictures of a batch all read it here."""
from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_stats(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (1, 3, 1, 1) tensors on `device`, scaled to uint8 pixel values: (x - mean) / std normalises."""
    shape = (1, 3, 1, 1)
    return (torch.tensor(IMAGENET_MEAN, device=device).view(shape) * 255,
            torch.tensor(IMAGENET_STD, device=device).view(shape) * 255)
