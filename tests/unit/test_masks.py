"""Tests of pipeline/masks/sampler.py: the multiblock mask sampler against the spec, the official numbers and a
per-sample
reference written like the official collator (benchmarks/masks.py). (The same masks in another process, and tiny
grids that never hang: e2e/test_masks_across_processes.py.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from samplers import GRIDS, digest, make

from benchmarks.masks import ReferenceMaskCollator
from pipeline.masks.sampler import MultiBlockMaskSampler, block_size, stream_seed
from pipeline.masks.stats import mask_stats

# Official collator, 16×16, batch 128 (docs/masks.md and issue 4): context coverage per row.
OFFICIAL_ROW_COVERAGE = [2.89, 2.39, 1.97, 1.61, 1.25, 0.95, 0.80, 0.72, 0.71, 0.72, 0.71, 0.63, 0.42, 0.19, 0.05, 0.00]


@pytest.fixture(autouse=True)
def _one_thread():
    """The sampler runs in single-threaded loader workers; more threads only slow these tiny ops on a busy host."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def covered(idx: torch.Tensor, cells: int) -> torch.Tensor:
    """(B, cells) bool: which cells the index lists (..., B, K) hit, per image."""
    per_image = idx.transpose(0, -2).reshape(idx.shape[-2], -1) if idx.dim() == 3 else idx
    return torch.zeros(per_image.shape[0], cells, dtype=torch.bool).scatter_(1, per_image, True)


# -- shapes, ranges, rectangles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("grid", GRIDS)
def test_shapes_dtypes_and_layout(grid):
    sampler = make(grid)
    ctx, tgt = sampler.sample(8, step=3)
    (h, w), _ = sampler.block_sizes(3)
    assert ctx.dtype == tgt.dtype == torch.int64
    assert ctx.shape[0] == 8 and ctx.dim() == 2
    assert tgt.shape == (4, 8, h * w)
    assert ctx.is_contiguous() and tgt.is_contiguous() and ctx.device.type == tgt.device.type == "cpu"


def test_several_contexts_are_stacked():
    sampler = make(nenc=2, npred=3)
    ctx, tgt = sampler.sample(16, step=1)
    stacked, _ = sampler.sample_stacked(16, step=1)
    assert ctx.shape[:2] == (2, 16) and tgt.shape[:2] == (3, 16)
    assert torch.equal(ctx, stacked)
    masks = sampler.sample_full(16, step=1)
    assert ctx.shape[-1] == int(masks.ctx_len.min())  # K_enc is the minimum over every context of every image
    tgt_cells = covered(tgt, 256)
    for e in range(2):
        assert not torch.gather(tgt_cells, 1, ctx[e]).any()
    assert make(nenc=1).sample_stacked(4, 0)[0].shape[0] == 1


@pytest.mark.parametrize("grid", GRIDS)
def test_indices_in_range_sorted_and_unique(grid):
    sampler = make(grid)
    cells = sampler.grid[0] * sampler.grid[1]
    for step in range(5):
        for idx in sampler.sample(32, step):
            assert idx.min() >= 0 and idx.max() < cells
            assert (idx.diff(dim=-1) > 0).all()


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("exclude_edges", [True, False])
def test_every_target_is_an_exact_rectangle(grid, exclude_edges):
    sampler = make(grid, exclude_edges=exclude_edges)
    H, W = sampler.grid
    for step in range(4):
        (h, w), _ = sampler.block_sizes(step)
        _, tgt = sampler.sample(32, step)
        corner = tgt[..., :1, None]  # (M, B, 1, 1): the first index is the top-left corner
        top, left = corner // W, corner % W
        rect = ((top + torch.arange(h)[:, None]) * W + left + torch.arange(w)).flatten(-2)  # (M, B, h·w)
        assert torch.equal(tgt, rect)
        assert (left + w <= W).all() and (top + h <= H).all()  # no wrap-around into the next row


# -- official semantics --------------------------------------------------------------------------------------------

def test_context_excludes_targets_and_is_cut_to_batch_minimum():
    sampler = make()
    for step in range(10):
        masks = sampler.sample_full(64, step)
        ctx, tgt = masks.ctx_idx[0], masks.tgt_idx
        assert not masks.relaxed.any()
        assert not torch.gather(covered(tgt, 256), 1, ctx).any()  # context ∩ targets = ∅
        assert ctx.shape[-1] == int(masks.ctx_len.min()) > sampler.min_keep
        full = masks.ctx_mask[0]  # raster truncation keeps the lowest indices of each full context
        first = torch.stack([row.nonzero()[: ctx.shape[-1], 0] for row in full])
        assert torch.equal(ctx, first)
        assert not (full & covered(tgt, 256)).any()


def test_allow_overlap_keeps_the_whole_context_block():
    sampler = make(allow_overlap=True)
    masks = sampler.sample_full(64, step=2)
    _, (he, we) = sampler.block_sizes(2)
    assert (masks.ctx_len == he * we).all() and masks.ctx_idx.shape[-1] == he * we
    assert torch.gather(covered(masks.tgt_idx, 256), 1, masks.ctx_idx[0]).any()


# r = 0, 0.5, 1 by hand from the spec: max_keep = int(H·W·s), h = round(sqrt(max_keep·a)), w = round(sqrt(max_keep/a)).
@pytest.mark.parametrize("grid, expected_targets, expected_context", [
    ((16, 16), [(5, 7), (7, 6), (9, 6)], [(15, 15), (15, 15), (15, 15)]),
    ((14, 14), [(5, 6), (6, 5), (8, 5)], [(13, 13), (13, 13), (13, 13)]),
    ((28, 28), [(9, 12), (12, 11), (15, 10)], [(26, 26), (27, 27), (27, 27)]),
])
def test_block_size_formula(grid, expected_targets, expected_context):
    for r, tgt, ctx in zip((0.0, 0.5, 1.0), expected_targets, expected_context):
        assert block_size(r, r, grid, (0.15, 0.2), (0.75, 1.5)) == tgt
        assert block_size(r, r, grid, (0.85, 1.0), (1.0, 1.0)) == ctx
    assert block_size(1.0, 1.0, grid, (0.85, 1.0), (1.0, 1.0), exclude_edges=False) == grid
    assert block_size(np.nextafter(1.0, 0.0), 1.0, (16, 16), (0.15, 0.2), (0.75, 1.5)) == (9, 6)


def test_parity_with_official_numbers():
    stats = mask_stats(make(), batch_size=128, num_batches=200)
    assert stats["k_enc"]["mean"] == pytest.approx(69, rel=0.03)
    assert stats["k_pred"]["mean"] == pytest.approx(44.2, rel=0.02)
    assert np.abs(np.array(stats["ctx_row_coverage"]) - OFFICIAL_ROW_COVERAGE).max() < 0.1
    assert stats["ctx_col_coverage"][-1] == stats["tgt_row_coverage"][-1] == stats["tgt_col_coverage"][-1] == 0
    assert stats["relaxed_fraction"] == 0


def test_parity_with_reference_collator():
    """Same block-size draws (the reference is seeded with our size stream), independent placements."""
    sampler, ref = make(), ReferenceMaskCollator(input_size=224, patch_size=14)
    gen = torch.Generator().manual_seed(1)
    ref_k, ref_rows = [], torch.zeros(16)
    for step in range(48):
        enc, pred = ref(128, stream_seed(sampler.seed, step), gen)
        (h, w), _ = sampler.block_sizes(step)
        assert pred.shape == (4, 128, h * w)  # the independently written size formula agrees at every step
        ref_k.append(enc.shape[-1])
        ref_rows += torch.bincount(enc.flatten() // 16, minlength=16)
    ours = mask_stats(sampler, 128, 48)
    assert abs(np.mean(ref_k) - ours["k_enc"]["mean"]) < 3.5  # ≈ 3 standard errors of the paired difference
    ref_rows = (ref_rows * 16 / ref_rows.sum()).numpy()
    assert np.abs(ref_rows - np.array(ours["ctx_row_coverage"])).max() < 0.15


def overlap_with_each_target(ctx: torch.Tensor, tgt: torch.Tensor, cells: int) -> np.ndarray:
    """Fraction of images whose context (B, K) overlaps target m, for each m of tgt (M, B, K_pred)."""
    hits = [torch.gather(covered(t, cells), 1, ctx).any(-1).double().mean().item() for t in tgt]
    return np.array(hits)


def test_relaxation_drops_the_last_targets_first_like_the_reference():
    """8×8 grid with large targets and min_keep 15: most contexts need the relaxation."""
    kwargs = {"input_size": 128, "patch_size": 16, "pred_mask_scale": (0.3, 0.4), "min_keep": 15}
    sampler, ref = MultiBlockMaskSampler(**kwargs), ReferenceMaskCollator(**kwargs)
    gen = torch.Generator().manual_seed(2)
    ref_hits, ours_hits, relaxed = [], [], []
    for step in range(12):
        enc, pred = ref(64, stream_seed(0, step), gen)
        ref_hits.append(overlap_with_each_target(enc[0], pred, 64))
    for step in range(12):  # the same steps, so the same block sizes; more placements (ranks) on our side
        for rank in range(4):
            masks = sampler.sample_full(64, step, rank)
            ours_hits.append(overlap_with_each_target(masks.ctx_idx[0], masks.tgt_idx, 64))
            relaxed.append(masks.relaxed.double().mean().item())
    ref_hits, ours_hits = np.mean(ref_hits, axis=0), np.mean(ours_hits, axis=0)
    assert np.mean(relaxed) > 0.5 and ours_hits[0] == 0 and (np.diff(ours_hits) > 0.1).all()
    assert np.abs(ours_hits - ref_hits).max() < 0.08  # reference: ≈ 0, 0.28, 0.60, 0.73


# -- determinism ---------------------------------------------------------------------------------------------------

def test_pure_function_of_seed_step_rank():
    sampler = make()
    first = sampler.sample(16, 7, rank=1)
    sampler.sample(16, 8)  # no state carried between calls
    assert digest(*sampler.sample(16, 7, rank=1)) == digest(*first)
    assert digest(*make().sample(16, 7, rank=1)) == digest(*first)
    others = [sampler.sample(16, 7, rank=0), sampler.sample(16, 8, rank=1), make(seed=1).sample(16, 7, rank=1)]
    assert len({digest(*first)} | {digest(*o) for o in others}) == 4
    assert all(sampler.block_sizes(s) == make().block_sizes(s) for s in range(5))  # sizes shared by ranks


# -- switches --------------------------------------------------------------------------------------------------------

def test_edges_excluded_by_default_and_covered_when_included():
    for exclude in (True, False):
        stats = mask_stats(make(exclude_edges=exclude), batch_size=64, num_batches=30)
        last = [stats["tgt_row_coverage"][-1], stats["tgt_col_coverage"][-1]]
        assert (max(last) == 0) if exclude else (min(last) > 0.2)
    for exclude in (True, False):  # context blocks (before truncation) may reach the last row too
        sampler = make(exclude_edges=exclude)
        last_row = [sampler.sample_full(64, s).ctx_mask[0].view(64, 16, 16)[:, -1].any() for s in range(10)]
        assert any(last_row) != exclude


def test_independent_aspect_draw():
    r = np.linspace(0.0, 1.0, 4097)
    tied_sizes = {block_size(x, x, (16, 16), (0.15, 0.2), (0.75, 1.5)) for x in r}
    sizes = {}
    for tie in (True, False):
        hw = np.array([make(tie_aspect_to_scale=tie).block_sizes(step)[0] for step in range(300)])
        sizes[tie] = {tuple(map(int, s)) for s in hw}
        corr = np.corrcoef(hw[:, 0] * hw[:, 1], hw[:, 0] / hw[:, 1])[0, 1]
        assert (corr > 0.7) if tie else (abs(corr) < 0.3)  # tied: larger targets are always taller
    assert sizes[True] <= tied_sizes
    assert sizes[False] - tied_sizes  # shapes the tied draw can never give


def test_random_truncation_is_a_random_subset():
    sampler = make(truncation="random")
    not_prefix = 0
    for step in range(5):
        masks = sampler.sample_full(64, step)
        ctx, full = masks.ctx_idx[0], masks.ctx_mask[0]
        assert (ctx.diff(dim=-1) > 0).all() and torch.gather(full, 1, ctx).all()  # sorted, inside the context
        assert ctx.shape[-1] == int(masks.ctx_len.min())
        first = torch.stack([row.nonzero()[: ctx.shape[-1], 0] for row in full])
        not_prefix += int((ctx != first).any(-1).sum())
    assert not_prefix > 100  # almost every truncated row differs from the raster prefix
    rows = mask_stats(sampler, 128, 50)["ctx_row_coverage"]
    assert rows[0] < 2.2 and min(rows[:15]) > 0.4  # no longer concentrated on the top rows


def test_fixed_length_policy_gives_static_shapes():
    sampler = make(length_policy="fixed")
    assert sampler.fixed_pred_len == 35  # the smallest target block on 16×16: 5×7 at r = 0
    shapes = set()
    for step in range(30):
        masks = sampler.sample_full(64, step)
        shapes.add((tuple(masks.ctx_idx.shape), tuple(masks.tgt_idx.shape)))
        assert not torch.gather(covered(masks.tgt_idx, 256), 1, masks.ctx_idx[0]).any()
        (h, w), _ = sampler.block_sizes(step)  # raster truncation keeps the first 35 cells of each h×w rectangle
        corner = masks.tgt_idx[..., :1, None]
        rect = ((corner // 16 + torch.arange(h)[:, None]) * 16 + corner % 16 + torch.arange(w)).flatten(-2)
        assert torch.equal(masks.tgt_idx, rect[..., :35])
    assert shapes == {((1, 64, sampler.fixed_enc_len), (4, 64, 35))}
    stats = mask_stats(sampler, 128, 50)
    assert stats["resampled_fraction"] < 0.05 and stats["relaxed_fraction"] == 0
    assert abs(stats["k_enc"]["mean"] - 69) < 8  # about what batch_min gives on average
    fallback = mask_stats(make(length_policy="fixed", fixed_enc_len=200), 64, 5)  # only the relaxation reaches 200
    assert fallback["k_enc"]["min"] == 200 and fallback["relaxed_fraction"] == fallback["resampled_fraction"] == 1
    explicit = make(length_policy="fixed", fixed_enc_len=40, fixed_pred_len=20)
    ctx, tgt = explicit.sample(32, 5)
    assert ctx.shape == (32, 40) and tgt.shape == (4, 32, 20)


# -- argument checks -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    ({"input_size": 0}, "input_size"), ({"input_size": (224,)}, "input_size"), ({"input_size": 14}, "input_size"),
    ({"patch_size": 0}, "patch_size"), ({"enc_mask_scale": (0.9, 0.8)}, "enc_mask_scale"),
    ({"enc_mask_scale": (0.0, 1.0)}, "enc_mask_scale"), ({"pred_mask_scale": (0.1, 1.5)}, "pred_mask_scale"),
    ({"pred_mask_scale": 0.2}, "pred_mask_scale"), ({"aspect_ratio": (-1, 2)}, "aspect_ratio"),
    ({"nenc": 0}, "nenc"), ({"npred": 1.5}, "npred"), ({"min_keep": -1}, "min_keep"),
    ({"min_keep": 40}, "min_keep"), ({"allow_overlap": "no"}, "allow_overlap"), ({"seed": -1}, "seed"),
    ({"tie_aspect_to_scale": 1}, "tie_aspect_to_scale"), ({"exclude_edges": None}, "exclude_edges"),
    ({"truncation": "lowest"}, "truncation"), ({"length_policy": "static"}, "length_policy"),
    ({"fixed_enc_len": 50}, "fixed_enc_len"), ({"length_policy": "fixed", "fixed_pred_len": 0}, "fixed_pred_len"),
    ({"length_policy": "fixed", "fixed_pred_len": 36}, "fixed_pred_len"),
    ({"length_policy": "fixed", "fixed_enc_len": 226}, "fixed_enc_len"),
])
def test_bad_arguments_are_named(kwargs, name):
    args = {"input_size": 224, "patch_size": 14, **kwargs}
    with pytest.raises(ValueError, match=name):
        MultiBlockMaskSampler(**args)


@pytest.mark.parametrize("call, name", [((0, 1), "batch_size"), ((4, -1), "step"), ((4, 1, -2), "rank")])
def test_bad_sample_arguments_are_named(call, name):
    with pytest.raises(ValueError, match=name):
        make().sample(*call)
