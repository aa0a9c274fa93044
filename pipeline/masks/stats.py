"""Token counts and spatial coverage of a sampler's masks over consecutive steps: what docs/masks.md, the mask bench
and the README report."""
from __future__ import annotations

import torch

from pipeline.masks.sampler import MultiBlockMaskSampler, check_int


def _coverage(counts: torch.Tensor, grid: tuple[int, int]) -> tuple[list[float], list[float]]:
    """Share of the indices per row and per column, relative to uniform (1.0 everywhere for uniform coverage)."""
    per_cell = counts.double().view(grid) / counts.sum()
    return (per_cell.sum(1) * grid[0]).tolist(), (per_cell.sum(0) * grid[1]).tolist()


def mask_stats(sampler: MultiBlockMaskSampler, batch_size: int, num_batches: int, first_step: int = 0,
               rank: int = 0) -> dict:
    """Statistics over `num_batches` consecutive steps: token counts and spatial coverage, for README and logs.

    Returns k_enc / k_pred {mean, min, max} (over batches), ctx_len_mean (context length before truncation),
    relaxed_fraction (contexts that needed the relaxation), resampled_fraction (images redrawn by the fixed policy),
    ctx_row_coverage / ctx_col_coverage and tgt_row_coverage / tgt_col_coverage (share of the indices in each row /
    column relative to uniform; the official context profile falls from ~2.9 on row 0 to 0 on the last row).
    """
    num_batches = check_int("num_batches", num_batches, 1)
    cells = sampler.grid[0] * sampler.grid[1]
    k_enc, k_pred, ctx_len, relaxed, resampled = [], [], [], [], []
    ctx_cells = torch.zeros(cells, dtype=torch.int64)
    tgt_cells = torch.zeros(cells, dtype=torch.int64)
    for step in range(first_step, first_step + num_batches):
        masks = sampler.sample_full(batch_size, step, rank)
        k_enc.append(masks.ctx_idx.shape[-1])
        k_pred.append(masks.tgt_idx.shape[-1])
        ctx_len.append(masks.ctx_len.double().mean().item())
        relaxed.append(masks.relaxed.double().mean().item())
        resampled.append(masks.resampled.double().mean().item())
        ctx_cells += torch.bincount(masks.ctx_idx.flatten(), minlength=cells)
        tgt_cells += torch.bincount(masks.tgt_idx.flatten(), minlength=cells)
    ctx_rows, ctx_cols = _coverage(ctx_cells, sampler.grid)
    tgt_rows, tgt_cols = _coverage(tgt_cells, sampler.grid)
    return {
        "grid": sampler.grid, "batch_size": batch_size, "num_batches": num_batches,
        "k_enc": {"mean": sum(k_enc) / num_batches, "min": min(k_enc), "max": max(k_enc)},
        "k_pred": {"mean": sum(k_pred) / num_batches, "min": min(k_pred), "max": max(k_pred)},
        "ctx_len_mean": sum(ctx_len) / num_batches, "relaxed_fraction": sum(relaxed) / num_batches,
        "resampled_fraction": sum(resampled) / num_batches,
        "ctx_row_coverage": ctx_rows, "ctx_col_coverage": ctx_cols,
        "tgt_row_coverage": tgt_rows, "tgt_col_coverage": tgt_cols,
    }
