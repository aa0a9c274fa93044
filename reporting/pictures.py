"""The report's pictures of images: the masks on the run's first batch, and the first three principal components of
an encoder's patch features as RGB (trained beside random init)."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.patches import Patch

from pipeline.masks.pictures import DIM, target_colour
from reporting.curves import new_figure

PCA_CLIP = (0.01, 0.99)  # each component is stretched between these quantiles onto [0, 1]


def masks_figure(pictures: list[np.ndarray], titles: list[str], targets: int, title: str):
    """A row of mask pictures (pipeline.masks.pictures.mask_picture), each with its title (which image, its class,
    its patch counts), and the legend of the colours."""
    fig, axes = new_figure(1, len(pictures), title)
    fig.set_size_inches(2.4 * len(pictures), 3.5)
    for ax, picture, text in zip(axes, pictures, titles):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(text, fontsize=8)
        ax.set_axis_off()
    legend = [Patch(facecolor="white", edgecolor="black", label="context (as it is)"),
              Patch(facecolor=(DIM, DIM, DIM), label="neither (dimmed)")]
    legend += [Patch(facecolor=target_colour(k) / 255, label=f"target {k + 1}") for k in range(targets)]
    fig.legend(handles=legend, loc="outside lower center", ncol=len(legend), fontsize=8)
    return fig


@torch.no_grad()
def patch_features(encoder: torch.nn.Module, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(B, N, D) float32 output tokens of `encoder` for normalised images (B, 3, S, S), on the encoder's device."""
    device = next(encoder.parameters()).device
    return torch.cat([encoder(images[i:i + batch].to(device)).float().cpu() for i in range(0, len(images), batch)])


def pca_rgb(features: torch.Tensor, grid: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The first three principal components of the patch features (B, N, D), fitted on all B·N tokens together, as
    RGB (B, H, W, 3) in [0, 1]; and the share of the variance they hold."""
    b, n, d = features.shape
    x = features.reshape(b * n, d).double()
    x = x - x.mean(dim=0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    comps = min(3, vh.shape[0])
    proj = x @ vh[:comps].T  # (B·N, ≤3)
    lo, hi = torch.quantile(proj, PCA_CLIP[0], dim=0), torch.quantile(proj, PCA_CLIP[1], dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    if comps < 3:  # fewer than three dimensions: the missing channels stay black
        rgb = torch.cat([rgb, rgb.new_zeros(b * n, 3 - comps)], dim=1)
    explained = float((s[:comps] ** 2).sum() / (s ** 2).sum().clamp_min(1e-30))
    return rgb.reshape(b, *grid, 3).float().numpy(), explained


def features_figure(images: np.ndarray, rows: list[tuple[str, np.ndarray, float]], keys: list[str]):
    """The images (B, S, S, 3) uint8 on top; below, one row per encoder: its PCA picture (B, H, W, 3), titled with
    the encoder's name and the variance its three components hold."""
    fig, axes = new_figure(1 + len(rows), len(images), "patch features: first three principal components as RGB")
    fig.set_size_inches(1.9 * len(images), 2.0 * (1 + len(rows)) + 0.4)
    cols = len(images)
    for i, image in enumerate(images):
        axes[i].imshow(image, interpolation="nearest")
        axes[i].set_title(keys[i], fontsize=8)
    for r, (name, rgb, explained) in enumerate(rows, start=1):
        for i in range(cols):
            axes[r * cols + i].imshow(rgb[i], interpolation="nearest")
        axes[r * cols].set_title(f"{name} ({100 * explained:.0f}% of the variance)", fontsize=9, loc="left")
    for ax in axes:
        ax.set_axis_off()
    return fig
