"""Pictures of the multiblock masks on the images they mask: the context patches as they are, each target block in a
colour of its own, the patches in neither dimmed. train.py writes them to TensorBoard; report.py draws them with the
run's curves. numpy only.

    context, targets = patch_sets(ctx_idx[i], tgt_idx[:, i], grid)   # (H, W) and (M, H, W) booleans
    picture = mask_picture(image, context, targets, scale=4)          # (S·4, S·4, 3) uint8
"""
from __future__ import annotations

import numpy as np
import torch

from model.inputs import imagenet_stats

# Target block k's colour: matplotlib's tab10 after its blue (kept for nothing: the context is the image itself).
TARGET_COLOURS = np.array([(255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                           (227, 119, 194), (188, 189, 34), (23, 190, 207)], dtype=np.float32)
DIM = 0.3  # brightness of a patch in neither the context nor a target
TINT = 0.55  # weight of a target block's colour over the image in its patches
GAP = 4  # white pixels between the pictures of a row


def target_colour(k: int) -> np.ndarray:
    return TARGET_COLOURS[k % len(TARGET_COLOURS)]


def patch_sets(ctx_idx, tgt_idx, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image's masks as patch maps: context (H, W) and targets (M, H, W) booleans, from its ctx_idx (K_enc,) (or
    (nenc, K_enc): their union) and tgt_idx (M, K_pred) (row-major patch positions, as the sampler gives them)."""
    height, width = grid
    context = np.zeros(height * width, dtype=bool)
    context[np.asarray(ctx_idx).reshape(-1)] = True
    tgt = np.asarray(tgt_idx)
    targets = np.zeros((tgt.shape[0], height * width), dtype=bool)
    for k, row in enumerate(tgt):
        targets[k, row] = True
    return context.reshape(grid), targets.reshape(-1, *grid)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Normalised images (B, 3, S, S), any dtype and device → (B, S, S, 3) uint8 RGB."""
    mean, std = imagenet_stats(images.device)
    pixels = (images.float() * std + mean).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _upscale(a: np.ndarray, rows: int, cols: int | None = None) -> np.ndarray:
    return a.repeat(rows, axis=0).repeat(rows if cols is None else cols, axis=1)


def _edge(inside: np.ndarray, width: int) -> np.ndarray:
    """The pixels of `inside` (H, W) within `width` pixels of its border."""
    core = inside.copy()
    for _ in range(width):
        padded = np.pad(core, 1)
        core = core & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~core


def mask_picture(image: np.ndarray, context: np.ndarray, targets: np.ndarray, scale: int = 1) -> np.ndarray:
    """(S·scale, S·scale, 3) uint8: `image` (S, S, 3) uint8 upscaled, the patches of `context` (H, W) as they are,
    those of target block k (targets[k], (H, W)) blended with its colour and outlined in it, the rest dimmed."""
    rows, cols = (image.shape[i] // context.shape[i] * scale for i in (0, 1))  # pixels per patch in the picture
    rgb = _upscale(image, scale).astype(np.float32)
    cell = lambda mask: _upscale(mask, rows, cols)  # noqa: E731  patch map → pixel map
    shown = context | targets.any(axis=0)
    out = np.where(cell(shown)[..., None], rgb, DIM * rgb)
    for k, block in enumerate(targets):
        out = np.where(cell(block)[..., None], (1 - TINT) * out + TINT * target_colour(k), out)
    width = max(1, min(rows, cols) // 8)
    for k, block in enumerate(targets):  # outlines last: overlapping blocks stay visible
        out[_edge(cell(block), width)] = target_colour(k)
    return out.round().clip(0, 255).astype(np.uint8)


def picture_scale(size: int, at_least: int = 128) -> int:
    """Upscaling that makes an image of `size` pixels at least `at_least` wide (small crops stay legible)."""
    return max(1, -(-at_least // size))


def mask_pictures(pixels: np.ndarray, ctx_idx: np.ndarray, tgt_idx: np.ndarray, grid: tuple[int, int]) -> list:
    """One mask picture per image, upscaled by picture_scale.

    Args:
        pixels: (n, S, S, 3) uint8; ctx_idx: (n, K_enc) or (nenc, n, K_enc); tgt_idx: (M, n, K_pred).
    """
    ctx = ctx_idx if ctx_idx.ndim == 3 else ctx_idx[None]  # several context blocks are shown as one
    scale = picture_scale(pixels.shape[1])
    return [mask_picture(pixels[i], *patch_sets(ctx[:, i], tgt_idx[:, i], grid), scale=scale)
            for i in range(len(pixels))]


def batch_pictures(images: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, grid: tuple[int, int],
                   count: int = 4) -> np.ndarray:
    """The first `count` images of a batch with their masks, side by side: (S', count·S' + gaps, 3) uint8.

    Args:
        images: (B, 3, S, S) normalised; ctx_idx: (B, K_enc) or (nenc, B, K_enc); tgt_idx: (M, B, K_pred).
    """
    count = min(count, images.shape[0])
    pictures = mask_pictures(to_uint8(images[:count]), ctx_idx[..., :count, :].cpu().numpy(),
                             tgt_idx[:, :count].cpu().numpy(), grid)
    gap = np.full((pictures[0].shape[0], GAP, 3), 255, dtype=np.uint8)
    row = [p for picture in pictures for p in (picture, gap)][:-1]
    return np.concatenate(row, axis=1)
