"""Mask sampler suite: our vectorized sampler beside a per-sample-loop reference written like the official collator
(ms per batch of 128 on one core, 16×16 and 28×28 grids), and the token counts and spatial bias of every length policy
and quirk switch (docs/masks.md).

`ReferenceMaskCollator` is also the reference of tests/unit/test_masks.py: the official algorithm without the image
collation, its generators passed in, and its retry loop capped so that a test can never hang on it.
"""
from __future__ import annotations

import itertools
import math

import torch

from benchmarks.common import time_call
from pipeline.masks.sampler import MultiBlockMaskSampler, stream_seed
from pipeline.masks.stats import mask_stats

BATCH = 128
GRIDS = (("16x16", 224, 14), ("28x28", 448, 16))  # (name, input_size, patch_size)
# Length policies and quirk switches whose token counts are reported; {} is the official behaviour.
VARIANTS = (
    ("official (batch_min, raster)", {}),
    ("exclude_edges=False", {"exclude_edges": False}),
    ("tie_aspect_to_scale=False", {"tie_aspect_to_scale": False}),
    ("truncation=random", {"truncation": "random"}),
    ("length_policy=fixed", {"length_policy": "fixed"}),
    ("fixed + random truncation", {"length_policy": "fixed", "truncation": "random"}),
    ("every fix", {"exclude_edges": False, "tie_aspect_to_scale": False, "truncation": "random",
                   "length_policy": "fixed"}),
)


class ReferenceMaskCollator:
    """Per-sample loops, one placement at a time, as in the official MaskCollator (project defaults)."""

    def __init__(self, input_size: int | tuple[int, int] = (224, 224), patch_size: int = 16,
                 enc_mask_scale: tuple[float, float] = (0.85, 1.0), pred_mask_scale: tuple[float, float] = (0.15, 0.2),
                 aspect_ratio: tuple[float, float] = (0.75, 1.5), nenc: int = 1, npred: int = 4, min_keep: int = 10,
                 allow_overlap: bool = False, max_tries: int = 10_000) -> None:
        if not isinstance(input_size, tuple):
            input_size = (input_size,) * 2
        self.height, self.width = input_size[0] // patch_size, input_size[1] // patch_size
        self.enc_mask_scale = enc_mask_scale
        self.pred_mask_scale = pred_mask_scale
        self.aspect_ratio = aspect_ratio
        self.nenc = nenc
        self.npred = npred
        self.min_keep = min_keep
        self.allow_overlap = allow_overlap
        self.max_tries = max_tries  # the official loop has no cap (it hangs on tiny grids)

    def _sample_block_size(self, generator: torch.Generator, scale: tuple[float, float],
                           aspect_ratio_scale: tuple[float, float]) -> tuple[int, int]:
        _rand = torch.rand(1, generator=generator).item()
        min_s, max_s = scale
        mask_scale = min_s + _rand * (max_s - min_s)
        max_keep = int(self.height * self.width * mask_scale)
        min_ar, max_ar = aspect_ratio_scale
        aspect_ratio = min_ar + _rand * (max_ar - min_ar)
        h = int(round(math.sqrt(max_keep * aspect_ratio)))
        w = int(round(math.sqrt(max_keep / aspect_ratio)))
        while h >= self.height:
            h -= 1
        while w >= self.width:
            w -= 1
        return h, w

    def _sample_block_mask(self, b_size: tuple[int, int], generator: torch.Generator,
                           acceptable_regions: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = b_size
        tries, timeout, total = 0, 20, 0
        while True:
            top = torch.randint(0, self.height - h, (1,), generator=generator)
            left = torch.randint(0, self.width - w, (1,), generator=generator)
            mask = torch.zeros((self.height, self.width), dtype=torch.int32)
            mask[top:top + h, left:left + w] = 1
            if acceptable_regions is not None:
                for k in range(max(len(acceptable_regions) - tries, 0)):
                    mask *= acceptable_regions[k]
            mask = torch.nonzero(mask.flatten())
            if len(mask) > self.min_keep:
                break
            timeout -= 1
            if timeout == 0:
                tries, timeout = tries + 1, 20
            total += 1
            if total >= self.max_tries:
                raise RuntimeError(f"reference collator: no valid {h}x{w} block after {total} tries")
        mask_complement = torch.ones((self.height, self.width), dtype=torch.int32)
        mask_complement[top:top + h, left:left + w] = 0
        return mask.squeeze(1), mask_complement

    def __call__(self, batch_size: int, size_seed: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(masks_enc (nenc, B, K_enc), masks_pred (npred, B, K_pred)): the official lists of tensors, stacked."""
        g = torch.Generator()
        g.manual_seed(size_seed)
        p_size = self._sample_block_size(g, self.pred_mask_scale, self.aspect_ratio)
        e_size = self._sample_block_size(g, self.enc_mask_scale, (1.0, 1.0))
        masks_pred, masks_enc = [], []
        min_keep_pred = min_keep_enc = self.height * self.width
        for _ in range(batch_size):
            masks_p, masks_c = [], []
            for _ in range(self.npred):
                mask, mask_c = self._sample_block_mask(p_size, generator)
                masks_p.append(mask)
                masks_c.append(mask_c)
                min_keep_pred = min(min_keep_pred, len(mask))
            masks_pred.append(masks_p)
            acceptable_regions = None if self.allow_overlap else masks_c
            masks_e = []
            for _ in range(self.nenc):
                mask, _ = self._sample_block_mask(e_size, generator, acceptable_regions)
                masks_e.append(mask)
                min_keep_enc = min(min_keep_enc, len(mask))
            masks_enc.append(masks_e)
        pred = torch.stack([torch.stack([m[:min_keep_pred] for m in ms]) for ms in masks_pred], dim=1)
        enc = torch.stack([torch.stack([m[:min_keep_enc] for m in ms]) for ms in masks_enc], dim=1)
        return enc, pred


def _timings() -> dict:
    """ms per batch of BATCH on one core, ours and the reference, per grid."""
    results = {}
    for name, input_size, patch in GRIDS:
        ours = MultiBlockMaskSampler(input_size=input_size, patch_size=patch)
        ref = ReferenceMaskCollator(input_size=input_size, patch_size=patch)
        steps, gen = itertools.count(), torch.Generator().manual_seed(0)
        t_ours = time_call(lambda: ours.sample(BATCH, next(steps)), repeat=200, warmup=5)
        t_ref = time_call(lambda: ref(BATCH, stream_seed(0, next(steps)), gen), repeat=10)
        results[name] = {"ours_ms": 1e3 * t_ours["median_s"], "reference_ms": 1e3 * t_ref["median_s"],
                         "speedup": t_ref["median_s"] / t_ours["median_s"]}
    return results


def _token_counts(num_batches: int = 100) -> dict:
    """mask_stats per grid and variant: the token counts of each policy and switch."""
    results = {}
    for name, input_size, patch in GRIDS:
        for label, switches in VARIANTS:
            sampler = MultiBlockMaskSampler(input_size=input_size, patch_size=patch, **switches)
            stats = mask_stats(sampler, BATCH, num_batches)
            rows = stats["ctx_row_coverage"]
            results[f"{name} {label}"] = {
                "k_enc_mean": stats["k_enc"]["mean"], "k_enc_min": stats["k_enc"]["min"],
                "k_enc_max": stats["k_enc"]["max"], "k_pred_mean": stats["k_pred"]["mean"],
                "ctx_len_mean": stats["ctx_len_mean"], "resampled_fraction": stats["resampled_fraction"],
                "relaxed_fraction": stats["relaxed_fraction"], "ctx_row0": rows[0], "ctx_row_last2": rows[-2:],
            }
    return results


def run(cfg: object = None) -> dict:
    """Timing table and token counts, on one core; `cfg` is accepted for the bench.py interface and not used."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sampler runs in a loader worker, which has one thread
    try:
        timings = _timings()
        counts = _token_counts()
    finally:
        torch.set_num_threads(threads)
    print(f"ms per batch of {BATCH}, one core   ours   reference   speedup")
    for name, t in timings.items():
        print(f"  {name:<31} {t['ours_ms']:6.2f}  {t['reference_ms']:9.1f}  {t['speedup']:7.0f}x")
    print(f"\ntokens per image ({BATCH}/batch, 100 batches): K_enc mean [min–max], K_pred mean, context before "
          "truncation, redrawn / relaxed images, context coverage of row 0 and the last two rows")
    for label, c in counts.items():
        print(f"  {label:<38} {c['k_enc_mean']:6.1f} [{c['k_enc_min']:3d}–{c['k_enc_max']:3d}]  "
              f"{c['k_pred_mean']:6.1f}  {c['ctx_len_mean']:6.1f}  {c['resampled_fraction']:.3f} / "
              f"{c['relaxed_fraction']:.3f}  {c['ctx_row0']:.2f} | {c['ctx_row_last2'][0]:.2f} "
              f"{c['ctx_row_last2'][1]:.2f}")
    return {"batch_size": BATCH, "timings_ms": timings, "token_counts": counts}
