"""The eval transform of one sample: its JPEG decoded, the short side resized to S/0.875, the centre S x S crop. What
the probes see of an image (evaluation/features.py) and what the collapse diagnostics see (training/collapse.py).

    image = eval_view(ref, jpg_bytes, crop_size)     # (3, S, S) uint8
"""
from __future__ import annotations

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import center_crop, resize

from pipeline import DataError
from pipeline.shards.format import SampleRef

REBUILD = "rebuild the folder with shard_dataset.py"


def eval_view(ref: SampleRef, jpg: bytes, crop_size: int, fix: str = REBUILD) -> torch.Tensor:
    """(3, S, S) uint8 of sample `ref` (its JPEG bytes `jpg`); a JPEG that cannot be decoded is a DataError naming the
    shard and the sample, then `fix`."""
    try:
        image = decode_jpeg(torch.frombuffer(bytearray(jpg), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as err:  # torchvision's error for bytes that are no (complete) JPEG
        raise DataError(f"{ref.shard}: sample {ref.key}: its JPEG cannot be decoded ({str(err).strip()[:120]}); "
                        f"{fix}") from None
    image = resize(image, [round(crop_size / 0.875)], antialias=True)
    return center_crop(image, [crop_size, crop_size])
