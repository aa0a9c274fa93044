"""I-JEPA multiblock masks: official semantics, vectorized over the batch, a pure function of (seed, step, rank).

    ctx_idx, tgt_idx = MultiBlockMaskSampler(input_size=224, patch_size=14).sample(batch_size, step, rank)

ctx_idx (B, K_enc) (or (nenc, B, K_enc)) and tgt_idx (npred, B, K_pred): int64 CPU tensors, contiguous, each row
ascending; an index is the row-major patch position row·W + col. Defaults reproduce the official collator
(facebookresearch/ijepa, src/masks/multiblock.py); a switch per official quirk gives the fixed behaviour. The
semantics step by step, the randomness, the switches, the departures from the official code (only where it would
loop forever) and the measured token counts are in docs/masks.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pipeline.seeds import hashed_seed

logger = logging.getLogger(__name__)

RETRIES_PER_LEVEL = 20  # official: invalid placements before one target constraint is dropped
FIXED_ENC_QUANTILE = 0.01  # fixed_enc_len=None → this quantile of the per-image context length
FIXED_ENC_ESTIMATE = (64, 64)  # (batches, images per batch) behind that estimate
RESAMPLE_ROUNDS = 10  # fixed policy: redraws of a too-short image before the relaxation fallback
_ESTIMATE_SEED = 20230119  # fixed, so the default fixed_enc_len depends on the geometry only
_R_GRID = 4096  # draws checked at construction for the smallest block (per axis when aspect is untied)


def stream_seed(seed: int, step: int, rank: int | None = None) -> int:
    """A 63-bit generator seed hashed from (seed, step) — the size stream — or (seed, step, rank) — placements."""
    return hashed_seed([seed, step], (0,) if rank is None else (1, rank))


def _block_size_array(r_scale: np.ndarray, r_aspect: np.ndarray, grid: tuple[int, int],
                      scale: tuple[float, float], aspect_ratio: tuple[float, float],
                      exclude_edges: bool) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise `block_size`: the same float64 operations, in the same order, as the official Python code."""
    height, width = grid
    max_keep = np.floor(height * width * (scale[0] + r_scale * (scale[1] - scale[0])))
    aspect = aspect_ratio[0] + r_aspect * (aspect_ratio[1] - aspect_ratio[0])
    h = np.rint(np.sqrt(max_keep * aspect))  # rint rounds half to even, like Python's round
    w = np.rint(np.sqrt(max_keep / aspect))
    edge = 1 if exclude_edges else 0
    h = np.clip(h, 1, height - edge).astype(np.int64)  # official: `while h >= H: h -= 1`; ≥ 1 avoids its hang
    w = np.clip(w, 1, width - edge).astype(np.int64)
    return h, w


def block_size(r_scale: float, r_aspect: float, grid: tuple[int, int], scale: tuple[float, float],
               aspect_ratio: tuple[float, float], exclude_edges: bool = True) -> tuple[int, int]:
    """Block (h, w) in patches for the draws r_scale, r_aspect ∈ [0, 1) (official: r_aspect = r_scale).

    Args:
        r_scale: uniform draw that sets the area: max_keep = int(H·W·(smin + r·(smax − smin))).
        r_aspect: uniform draw that sets the aspect a = amin + r·(amax − amin) (h/w ≈ a).
        grid: (H, W) in patches.
        scale: (smin, smax), fractions of the grid.
        aspect_ratio: (amin, amax).
        exclude_edges: clamp to H − 1 / W − 1 (official) instead of H / W.
    """
    h, w = _block_size_array(np.float64(r_scale), np.float64(r_aspect), grid, scale, aspect_ratio, exclude_edges)
    return int(h), int(w)


def _min_block_area(grid: tuple[int, int], scale: tuple[float, float], aspect_ratio: tuple[float, float],
                    tied: bool, exclude_edges: bool) -> int:
    """Smallest h·w over a dense grid of draws (both end points included)."""
    r = np.append(np.linspace(0.0, 1.0, _R_GRID, endpoint=False), np.nextafter(1.0, 0.0))
    r_scale, r_aspect = (r, r) if tied else np.meshgrid(r[::16], r[::16])
    h, w = _block_size_array(r_scale, r_aspect, grid, scale, aspect_ratio, exclude_edges)
    return int((h * w).min())


def _rect(top: torch.Tensor, left: torch.Tensor, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Boolean maps (*top.shape, H, W) of the size[0]×size[1] rectangles with corners (top, left)."""
    rows = torch.arange(grid[0])
    cols = torch.arange(grid[1])
    in_rows = (rows >= top[..., None]) & (rows < top[..., None] + size[0])  # (..., H)
    in_cols = (cols >= left[..., None]) & (cols < left[..., None] + size[1])  # (..., W)
    return in_rows[..., :, None] & in_cols[..., None, :]


def _covered(tgt_idx: torch.Tensor, cells: int) -> torch.Tensor:
    """(n, cells) bool: the union of each image's targets, from tgt_idx (M, n, K).

    In numpy on flat offsets: about 2× faster than torch's scatter_ here, and the arrays are zero-copy views.
    """
    M, n, _ = tgt_idx.shape
    flat = tgt_idx.numpy() + np.arange(n)[:, None] * cells  # (M, n, K) offsets into the (n, cells) map
    union = np.zeros(n * cells, dtype=bool)
    union[flat.reshape(-1)] = True
    return torch.from_numpy(union.reshape(n, cells))


@dataclass
class _Draw:
    """Untruncated masks of n images: what one pass of the official per-image procedure produces."""
    tgt_idx: torch.Tensor  # (M, n, h·w) int64, ascending
    ctx_mask: torch.Tensor  # (E, n, H·W) bool
    ctx_len: torch.Tensor  # (E, n) int64
    relaxed: torch.Tensor  # (E, n) bool: the context needed the relaxation (it may overlap a target)

    def replace(self, rows: torch.Tensor, other: "_Draw") -> None:
        """Overwrite images `rows` with the images of `other`, in order."""
        for name in ("tgt_idx", "ctx_mask", "ctx_len", "relaxed"):
            getattr(self, name)[:, rows] = getattr(other, name)


@dataclass
class MaskSample:
    """One batch of masks plus what `mask_stats` reports about it."""
    ctx_idx: torch.Tensor  # (E, B, K_enc) int64
    tgt_idx: torch.Tensor  # (M, B, K_pred) int64
    ctx_mask: torch.Tensor  # (E, B, H·W) bool: the contexts before truncation
    ctx_len: torch.Tensor  # (E, B) their lengths
    relaxed: torch.Tensor  # (E, B) bool
    resampled: torch.Tensor  # (B,) bool: redrawn by the fixed policy


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_range(name: str, value: object, upper: float | None) -> tuple[float, float]:
    """A (low, high) pair with 0 < low <= high (<= upper when given)."""
    try:
        low, high = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high) of numbers, got {value!r}") from None
    if not 0 < low <= high or (upper is not None and high > upper):
        bound = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must satisfy 0 < low <= high{bound}, got {value!r}")
    return low, high


def _check_grid(input_size: object, patch_size: object, exclude_edges: bool) -> tuple[int, int]:
    """(H, W) in patches; the official collator floors input_size / patch_size the same way."""
    patch = check_int("patch_size", patch_size, 1)
    sizes = (input_size, input_size) if isinstance(input_size, (int, np.integer)) else input_size
    if not isinstance(sizes, Sequence) or len(sizes) != 2:
        raise ValueError(f"input_size must be an int or a pair (height_px, width_px), got {input_size!r}")
    grid = tuple(check_int("input_size", s, 1) // patch for s in sizes)
    smallest = 2 if exclude_edges else 1  # with excluded edges a block needs a row and column left over
    if min(grid) < smallest:
        raise ValueError(f"input_size={input_size!r} with patch_size={patch} gives a {grid[0]}x{grid[1]} grid; "
                         f"at least {smallest}x{smallest} patches are needed (exclude_edges={exclude_edges})")
    return grid  # type: ignore[return-value]


class MultiBlockMaskSampler:
    """Context and target indices of I-JEPA's multiblock masking; docs/masks.md gives the semantics.

    Args:
        input_size: image size in pixels, an int or (height_px, width_px).
        patch_size: patch size in pixels; the grid is (height_px // patch_size, width_px // patch_size).
        enc_mask_scale: (min, max) area of the context block, as a fraction of the grid.
        pred_mask_scale: (min, max) area of each target block.
        aspect_ratio: (min, max) height/width of the target blocks (the context block is square).
        nenc: context masks per image.
        npred: target masks per image.
        min_keep: a context is valid when more than min_keep indices remain; every block must exceed it.
        allow_overlap: keep target patches in the context.
        seed: base seed; masks are a pure function of (seed, step, rank).
        tie_aspect_to_scale, exclude_edges, truncation, length_policy: the official quirks and their fixes.
        fixed_enc_len, fixed_pred_len: K_enc and K_pred under length_policy="fixed" (None: derived, see above).
    """

    def __init__(self, input_size: int | tuple[int, int] = (224, 224), patch_size: int = 16,
                 enc_mask_scale: tuple[float, float] = (0.85, 1.0), pred_mask_scale: tuple[float, float] = (0.15, 0.2),
                 aspect_ratio: tuple[float, float] = (0.75, 1.5), nenc: int = 1, npred: int = 4, min_keep: int = 10,
                 allow_overlap: bool = False, seed: int = 0, tie_aspect_to_scale: bool = True,
                 exclude_edges: bool = True, truncation: str = "raster", length_policy: str = "batch_min",
                 fixed_enc_len: int | None = None, fixed_pred_len: int | None = None) -> None:
        self.exclude_edges = _check_bool("exclude_edges", exclude_edges)
        self.grid = _check_grid(input_size, patch_size, self.exclude_edges)
        self.patch_size = int(patch_size)
        self.enc_mask_scale = _check_range("enc_mask_scale", enc_mask_scale, 1.0)
        self.pred_mask_scale = _check_range("pred_mask_scale", pred_mask_scale, 1.0)
        self.aspect_ratio = _check_range("aspect_ratio", aspect_ratio, None)
        self.nenc = check_int("nenc", nenc, 1)
        self.npred = check_int("npred", npred, 1)
        self.min_keep = check_int("min_keep", min_keep, 0)
        self.allow_overlap = _check_bool("allow_overlap", allow_overlap)
        self.seed = check_int("seed", seed, 0)
        self.tie_aspect_to_scale = _check_bool("tie_aspect_to_scale", tie_aspect_to_scale)
        if truncation not in ("raster", "random"):
            raise ValueError(f"truncation must be 'raster' or 'random', got {truncation!r}")
        if length_policy not in ("batch_min", "fixed"):
            raise ValueError(f"length_policy must be 'batch_min' or 'fixed', got {length_policy!r}")
        self.truncation = truncation
        self.length_policy = length_policy
        self._check_feasible()
        self.fixed_pred_len, self.fixed_enc_len = self._fixed_lengths(fixed_enc_len, fixed_pred_len)

    def __repr__(self) -> str:
        fields = ("grid", "enc_mask_scale", "pred_mask_scale", "aspect_ratio", "nenc", "npred", "min_keep",
                  "allow_overlap", "seed", "tie_aspect_to_scale", "exclude_edges", "truncation", "length_policy",
                  "fixed_enc_len", "fixed_pred_len")
        return f"MultiBlockMaskSampler({', '.join(f'{f}={getattr(self, f)!r}' for f in fields)})"

    # -- construction helpers ------------------------------------------------------------------------------------

    def _check_feasible(self) -> None:
        """Every block must hold more than min_keep patches, or the official procedure never terminates."""
        self.min_pred_area = _min_block_area(self.grid, self.pred_mask_scale, self.aspect_ratio,
                                             self.tie_aspect_to_scale, self.exclude_edges)
        self.min_enc_area = _min_block_area(self.grid, self.enc_mask_scale, (1.0, 1.0), True, self.exclude_edges)
        grid = f"{self.grid[0]}x{self.grid[1]} grid"
        if self.min_pred_area <= self.min_keep:
            raise ValueError(f"min_keep={self.min_keep} cannot be met on a {grid}: target blocks "
                             f"(pred_mask_scale={self.pred_mask_scale}, aspect_ratio={self.aspect_ratio}) can be as "
                             f"small as {self.min_pred_area} patches; lower min_keep or raise pred_mask_scale")
        if self.min_enc_area <= self.min_keep:
            raise ValueError(f"min_keep={self.min_keep} cannot be met on a {grid}: context blocks "
                             f"(enc_mask_scale={self.enc_mask_scale}) can be as small as {self.min_enc_area} patches; "
                             f"lower min_keep or raise enc_mask_scale")

    def _fixed_lengths(self, enc_len: int | None, pred_len: int | None) -> tuple[int | None, int | None]:
        """(K_pred, K_enc) of the fixed policy, checked against the smallest blocks; (None, None) otherwise."""
        if self.length_policy != "fixed":
            for name, value in (("fixed_enc_len", enc_len), ("fixed_pred_len", pred_len)):
                if value is not None:
                    raise ValueError(f"{name}={value!r} is only used with length_policy='fixed', "
                                     f"not {self.length_policy!r}")
            return None, None
        pred = self.min_pred_area if pred_len is None else check_int("fixed_pred_len", pred_len, 1)
        if pred > self.min_pred_area:
            raise ValueError(f"fixed_pred_len={pred} exceeds the smallest target block on this grid "
                             f"({self.min_pred_area} patches); use at most {self.min_pred_area}")
        enc = self._estimate_enc_len() if enc_len is None else check_int("fixed_enc_len", enc_len, 1)
        if enc > self.min_enc_area:
            raise ValueError(f"fixed_enc_len={enc} exceeds the smallest context block on this grid "
                             f"({self.min_enc_area} patches); use at most {self.min_enc_area}")
        return pred, enc

    def _estimate_enc_len(self) -> int:
        """FIXED_ENC_QUANTILE of the per-image context length, from stratified draws with a fixed seed."""
        batches, per_batch = FIXED_ENC_ESTIMATE
        gen = torch.Generator().manual_seed(_ESTIMATE_SEED)
        r = (torch.arange(batches, dtype=torch.float64) + 0.5) / batches  # stratified draws: every size is seen
        r_aspect = r[torch.randperm(batches, generator=gen)]
        r_ctx = r[torch.randperm(batches, generator=gen)]
        lengths = []
        for i in range(batches):
            sizes = self._sizes_from_draws(float(r[i]), float(r_aspect[i]), float(r_ctx[i]))
            lengths.append(self._draw(gen, per_batch, *sizes, self.min_keep).ctx_len.flatten())
        quantile = torch.quantile(torch.cat(lengths).double(), FIXED_ENC_QUANTILE, interpolation="lower")
        return min(max(int(quantile), 1), self.min_enc_area)  # never more than the smallest block holds

    # -- sampling ------------------------------------------------------------------------------------------------

    def _sizes_from_draws(self, r_pred: float, r_aspect: float,
                          r_ctx: float) -> tuple[tuple[int, int], tuple[int, int]]:
        """Target and context (h, w) for the three draws of `block_sizes`."""
        tgt = block_size(r_pred, r_pred if self.tie_aspect_to_scale else r_aspect, self.grid, self.pred_mask_scale,
                         self.aspect_ratio, self.exclude_edges)
        ctx = block_size(r_ctx, r_ctx, self.grid, self.enc_mask_scale, (1.0, 1.0), self.exclude_edges)
        return tgt, ctx

    def block_sizes(self, step: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((h, w) of the targets, (h, w) of the context block) at `step`; the same on every rank."""
        gen = torch.Generator().manual_seed(stream_seed(self.seed, check_int("step", step, 0)))
        r_pred = torch.rand(1, generator=gen).item()  # the official order: target draw, then context draw
        r_ctx = torch.rand(1, generator=gen).item()
        r_aspect = torch.rand(1, generator=gen).item()  # used only when the aspect is not tied to the scale
        return self._sizes_from_draws(r_pred, r_aspect, r_ctx)

    def _positions(self, gen: torch.Generator, shape: tuple[int, ...],
                   size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-left corners; the official exclusive bound H − h leaves the last row/column uncovered."""
        edge = 0 if self.exclude_edges else 1
        top = torch.randint(0, self.grid[0] - size[0] + edge, shape, generator=gen)
        left = torch.randint(0, self.grid[1] - size[1] + edge, shape, generator=gen)
        return top, left

    def _draw(self, gen: torch.Generator, n: int, tgt_hw: tuple[int, int], ctx_hw: tuple[int, int],
              min_keep: int) -> _Draw:
        """Targets and untruncated contexts of n images (official steps 2–3), vectorized."""
        (h, w), (H, W) = tgt_hw, self.grid
        top, left = self._positions(gen, (self.npred, n), tgt_hw)  # (M, n)
        rows = top[..., None, None] + torch.arange(h)[:, None]  # (M, n, h, 1)
        tgt_idx = (rows * W + left[..., None, None] + torch.arange(w)).reshape(self.npred, n, h * w)
        ctop, cleft = self._positions(gen, (self.nenc, n), ctx_hw)  # first placement of every context
        ctx_mask = _rect(ctop, cleft, ctx_hw, self.grid).reshape(self.nenc, n, H * W)
        relaxed = torch.zeros(self.nenc, n, dtype=torch.bool)
        if not self.allow_overlap:
            ctx_mask, relaxed = self._remove_targets(gen, ctx_mask, tgt_idx, ctx_hw, min_keep)
        return _Draw(tgt_idx, ctx_mask, ctx_mask.sum(-1), relaxed)

    def _remove_targets(self, gen: torch.Generator, ctx_mask: torch.Tensor, tgt_idx: torch.Tensor,
                        ctx_hw: tuple[int, int], min_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Context masks (E, n, H·W) minus the targets (M, n, h·w), and which contexts needed the relaxation.

        The first placement (already in ctx_mask) is valid for nearly every image; only the contexts it leaves
        with min_keep indices or fewer go through `_retry_contexts`.
        """
        M, n, _ = tgt_idx.shape
        H, W = self.grid
        ctx_mask = ctx_mask & ~_covered(tgt_idx, H * W)  # (E, n, H·W)
        level = torch.zeros(ctx_mask.shape[:2], dtype=torch.int64)
        failed = (ctx_mask.sum(-1) <= min_keep).nonzero(as_tuple=True)  # (e, b) of the invalid contexts
        if failed[0].numel() > 0:
            f = failed[0].numel()
            cover = torch.zeros(M, f, H * W, dtype=torch.bool).scatter_(2, tgt_idx[:, failed[1]], True)
            retry_mask, level[failed] = self._retry_contexts(gen, cover.view(M, f, H, W), ctx_hw, min_keep)
            ctx_mask[failed] = retry_mask.view(f, H * W)
        return ctx_mask, level > 0

    def _retry_contexts(self, gen: torch.Generator, cover: torch.Tensor, ctx_hw: tuple[int, int],
                        min_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (f, H, W) and relaxation levels (f,) of f contexts whose first placement failed.

        The official retry-and-relax rule with all remaining tries drawn at once: level l (after 20·l failures)
        drops the last l target constraints; at level M none is left and the block itself (more than min_keep
        patches, checked at construction) is valid, so tries 1 … 20·M suffice. Counts come from integral images.
        """
        M, f, H, W = cover.shape
        he, we = ctx_hw
        union = cover.cummax(0).values  # union[m] = targets 0..m
        forbidden = torch.cat([union.flip(0), torch.zeros(1, f, H, W, dtype=torch.bool)])  # (M + 1, f, H, W)
        integral = torch.zeros(M + 1, f, H + 1, W + 1, dtype=torch.int32)
        integral[:, :, 1:, 1:] = (~forbidden).int().cumsum(2).cumsum(3)  # allowed cells above-left, per level
        tries = RETRIES_PER_LEVEL * M
        top, left = self._positions(gen, (f, tries), ctx_hw)  # (f, T)
        level = (torch.arange(1, tries + 1) // RETRIES_PER_LEVEL).clamp_(max=M)  # (T,)
        base = (level * f + torch.arange(f)[:, None]) * (H + 1)  # (f, T)
        flat = integral.view(-1)

        def corner(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return flat[(base + r) * (W + 1) + c]

        count = corner(top + he, left + we) - corner(top, left + we) - corner(top + he, left) + corner(top, left)
        first = (count > min_keep).byte().argmax(-1, keepdim=True)  # (f, 1): the first valid try
        top, left, chosen = top.gather(-1, first)[:, 0], left.gather(-1, first)[:, 0], level[first[:, 0]]
        allowed = ~forbidden[chosen, torch.arange(f)]  # (f, H, W)
        return _rect(top, left, ctx_hw, self.grid) & allowed, chosen

    def _draw_batch(self, gen: torch.Generator, batch_size: int, tgt_hw: tuple[int, int],
                    ctx_hw: tuple[int, int]) -> tuple[_Draw, torch.Tensor]:
        """One draw (batch_min), or draws until every context reaches K_enc (fixed); also the redrawn images."""
        draw = self._draw(gen, batch_size, tgt_hw, ctx_hw, self.min_keep)
        resampled = torch.zeros(batch_size, dtype=torch.bool)
        if self.length_policy != "fixed":
            return draw, resampled
        k_enc = self.fixed_enc_len
        for round_ in range(RESAMPLE_ROUNDS + 1):
            short = (draw.ctx_len < k_enc).any(0).nonzero()[:, 0]  # (n_short,)
            if short.numel() == 0:
                break
            resampled[short] = True
            threshold = k_enc - 1 if round_ == RESAMPLE_ROUNDS else self.min_keep  # last: relax, never fail
            draw.replace(short, self._draw(gen, short.numel(), tgt_hw, ctx_hw, threshold))
        if (draw.ctx_len < k_enc).any():  # cannot happen: the last round's threshold is met by every block
            raise RuntimeError(f"mask sampler: contexts shorter than fixed_enc_len={k_enc} after the fallback")
        return draw, resampled

    def _truncate(self, gen: torch.Generator, mask: torch.Tensor, lengths: torch.Tensor, length: int) -> torch.Tensor:
        """Indices (..., length) of the first `length` (raster) or a random `length` True cells of each row.

        mask (..., H·W) bool, lengths (...) its row sums. The raster path runs in numpy (zero-copy views), whose
        flatnonzero is about 3× faster than torch's boolean indexing on these sizes.
        """
        if self.truncation == "raster":
            every = np.flatnonzero(mask.numpy())  # flat positions of all rows' cells, row after row
            ends = np.cumsum(lengths.numpy()).reshape(*lengths.shape, 1)
            first = every[ends - lengths.numpy()[..., None] + np.arange(length)]  # the first `length` of each row
            return torch.from_numpy(first % mask.shape[-1])
        scores = torch.rand(mask.shape, generator=gen).masked_fill_(~mask, 2.0)
        return scores.topk(length, -1, largest=False).indices.sort(-1).values

    def _truncate_targets(self, gen: torch.Generator, tgt_idx: torch.Tensor, length: int) -> torch.Tensor:
        if length == tgt_idx.shape[-1]:
            return tgt_idx
        if self.truncation == "raster":
            return tgt_idx[..., :length].contiguous()
        keep = torch.rand(tgt_idx.shape, generator=gen).topk(length, -1, largest=False).indices.sort(-1).values
        return tgt_idx.gather(-1, keep)

    def sample_full(self, batch_size: int, step: int, rank: int = 0) -> MaskSample:
        """The masks of one batch plus the untruncated context lengths, relaxed and redrawn images."""
        batch_size = check_int("batch_size", batch_size, 1)
        rank = check_int("rank", rank, 0)
        tgt_hw, ctx_hw = self.block_sizes(step)
        gen = torch.Generator().manual_seed(stream_seed(self.seed, step, rank))
        draw, resampled = self._draw_batch(gen, batch_size, tgt_hw, ctx_hw)
        if self.length_policy == "fixed":
            k_enc, k_pred = self.fixed_enc_len, self.fixed_pred_len
        else:
            k_enc, k_pred = int(draw.ctx_len.min()), tgt_hw[0] * tgt_hw[1]
        ctx_idx = self._truncate(gen, draw.ctx_mask, draw.ctx_len, k_enc)
        tgt_idx = self._truncate_targets(gen, draw.tgt_idx, k_pred)
        if draw.relaxed.any():
            logger.debug("mask sampler: %d context(s) at step %d relaxed their target constraints",
                         int(draw.relaxed.sum()), step)
        return MaskSample(ctx_idx, tgt_idx, draw.ctx_mask, draw.ctx_len, draw.relaxed, resampled)

    def sample_stacked(self, batch_size: int, step: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(ctx_idx (nenc, B, K_enc), tgt_idx (npred, B, K_pred)) whatever nenc is."""
        masks = self.sample_full(batch_size, step, rank)
        return masks.ctx_idx, masks.tgt_idx

    def sample(self, batch_size: int, step: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(ctx_idx, tgt_idx) of the batch at `step` on `rank`: a pure function of (seed, step, rank).

        ctx_idx is (B, K_enc) when nenc == 1 and (nenc, B, K_enc) otherwise (the official collator's list of nenc
        (B, K_enc) tensors, stacked); tgt_idx is (npred, B, K_pred). int64, CPU, contiguous, each row ascending.
        """
        ctx_idx, tgt_idx = self.sample_stacked(batch_size, step, rank)
        return (ctx_idx[0] if self.nenc == 1 else ctx_idx), tgt_idx
