"""The collapse alarm (logging.collapse): the target encoder's features on a fixed set of images, measured the same
way at every check, and the rule that reads a collapse in them and in the in-training kNN probe.
docs/training.md, "Collapse".

    fixed = FixedSet(cfg, rank, world_size)             # every rank
    figures = fixed.measure(trainer)                     # every rank, on a diagnostics step (a collective); rank 0's
    rule = CollapseRule(cfg.logging.collapse_fraction, cfg.logging.collapse_patience)
    fired = rule.check(step, figures)                    # rank 0: the alarm when it fires at this check, else None

The fixed set is the first FIXED_IMAGES samples of logging.probe_shards (else of data.shards, through the node's
shard cache when it is a URL), centre-cropped as the probes see them. Each rank encodes its share with the target
encoder and the moments of the features of all are summed, so the effective rank can reach min(images - 1, dim)
whatever the per-GPU batch, and two checks see the same images: a fall is the encoder's, not the batch's.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from model.inputs import imagenet_stats
from pipeline import DataError
from pipeline.loading.eval_view import eval_view
from pipeline.shards.format import SampleRef, read_index, read_span
from pipeline.shards.manifest import list_shards
from training import TrainingError
from training.best_checkpoint import BEST, read_best
from training.checkpoints import checkpoint_dir, complete_tags, tag_step
from training.distributed import gather
from training.metrics import FeatureMoments
from util.errors import UserError
from util.files import write_file_atomic

logger = logging.getLogger(__name__)

FIXED_IMAGES = 1024  # the effective rank's ceiling is min(1023, dim): a ViT-H's 1280 dims are mostly in reach
CHUNK = 64  # images per forward of the fixed set: beside the training step's memory, in fp32
FIXED_FIX = "it is among the collapse diagnostics' fixed images: rebuild the folder with shard_dataset.py"
HISTORY = "collapse.json"  # run.out_dir: every check's figures, so that a resumed run keeps its peaks
WATCHED = {"token_rank": "effective rank of the patch tokens", "effective_rank": "effective rank",
           "knn_top1": "kNN top-1"}


# ------------------------------------------------------------------------------------------------ the fixed set

def first_refs(files, count: int) -> list[SampleRef]:
    """The first `count` samples of the shards `files`, in shard order (shard_dataset.py's seeded shuffle makes them
    a random draw); only the indexes needed are read."""
    refs = []
    for shard in files:
        refs += read_index(shard)
        if len(refs) >= count:
            break
    return refs[:count]


def read_share(cfg, cache, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of the fixed set, uint8 (n, 3, S, S): every world_size-th of the first FIXED_IMAGES samples
    of logging.probe_shards, else data.shards (`cache`: the loader's node cache when data.shards is a URL). With
    data.on_bad_sample skip an undecodable image is left out, as the loader leaves it out."""
    probe = bool(cfg.logging.probe_shards)
    if not probe and cache is not None:
        files, read = cache.shard_files(), lambda ref: cache.read(ref.shard, ref.jpg)
    else:
        files, opened = list_shards(cfg.logging.probe_shards if probe else cfg.data.shards), {}
        read = lambda ref: read_span(ref.shard, ref.jpg, opened)  # noqa: E731
    images = []
    for ref in first_refs(files, FIXED_IMAGES)[rank::world_size]:
        try:
            images.append(eval_view(ref, read(ref), cfg.data.crop_size, FIXED_FIX))
        except DataError:
            if cfg.data.on_bad_sample != "skip" or probe:
                raise
        except OSError as err:  # a shard shorter than its index says (read_span names it)
            raise DataError(f"{err}; rebuild the folder with shard_dataset.py") from None
    size = cfg.data.crop_size
    return torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)


def agreed(fn, *args):
    """`fn(*args)` on every rank; an error about the user's data that any rank raises is raised on every rank, so
    none is left waiting in the next collective for one that gave up."""
    value, message = None, None
    try:
        value = fn(*args)
    except UserError as err:
        message = str(err)
    if messages := [m for m in gather(message) if m]:
        raise TrainingError(messages[0])
    return value


@torch.no_grad()
def encode(target: torch.nn.Module, images: torch.Tensor, device: torch.device) -> tuple[FeatureMoments, ...]:
    """uint8 (n, 3, S, S) → the moments of the target encoder's output, (per image: its tokens averaged; per patch
    token). In fp32, not the training dtype: bf16's rounding of features that differ by a percent of their size
    adds a spread of its own, which the effective rank counts as dimensions."""
    pooled, tokens = FeatureMoments(), FeatureMoments()
    mean, std = imagenet_stats(device)
    with torch.autocast(device.type, enabled=False):
        for chunk in images.split(CHUNK):
            x = target((chunk.to(device).float() - mean) / std).float()  # (b, T, D)
            pooled.add(x.mean(dim=1))
            tokens.add(x.flatten(0, 1))
    return pooled, tokens


def summed(moments: FeatureMoments, dim: int, device: torch.device) -> FeatureMoments:
    """The moments of every rank added up (an all-reduce; a rank with no image of the set adds zeros)."""
    flat = torch.zeros(1 + dim + dim * dim, dtype=torch.float64)
    if moments.count:
        flat = torch.cat([torch.tensor([float(moments.count)], dtype=torch.float64), moments.total,
                          moments.outer.flatten()])
    flat = flat.to(device)
    dist.all_reduce(flat)
    flat = flat.cpu()
    return FeatureMoments(int(flat[0].item()), flat[1:1 + dim], flat[1 + dim:].view(dim, dim))


class FixedSet:
    """The fixed images of one rank and their diagnostics; read at the first check (the loader's cache exists then)."""

    def __init__(self, cfg, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.images: Optional[torch.Tensor] = None
        self.source = cfg.logging.probe_shards or cfg.data.shards

    def measure(self, trainer) -> Optional[dict]:
        """Every rank, on a diagnostics step, after the target's EMA landed: its share encoded, the moments of all
        ranks summed (two all-reduces of a D x D matrix); rank 0 gets the figures, the others None: of the images'
        pooled features the std, the effective rank and its ceiling; of their patch tokens the effective rank
        (token_rank) and its ceiling; `images`, the count. None as well when fewer than 2 images could be read."""
        if self.images is None:
            self.images = agreed(read_share, self.cfg, trainer.loader.backend.cache, self.rank, self.world_size)
        device = trainer.guard.device
        mine = encode(trainer.target, self.images, device)
        pooled, tokens = (summed(m, trainer.target.embed_dim, device) for m in mine)
        if self.rank != 0 or pooled.count < 2:
            return None
        token = tokens.diagnostics()
        return {**pooled.diagnostics(), "token_rank": token["effective_rank"],
                "token_rank_ceiling": token["effective_rank_ceiling"], "images": pooled.count}


# ------------------------------------------------------------------------------------------------ the rule

@dataclass
class Watch:
    """One watched figure: its peak so far and the run of consecutive checks below the rule's share of it."""

    peak: float = -math.inf
    peak_step: int = 0
    below: int = 0
    since: int = 0  # the first check of the current run below


@dataclass(frozen=True)
class Fired:
    """The alarm: which figure, at which check, against which peak, falling since which check."""

    step: int
    name: str
    value: float
    watch: Watch


class CollapseRule:
    """A watched figure under `fraction` of its own peak so far for `patience` consecutive checks fires the alarm,
    once per fall (again only after it came back above). Watched: the effective rank of the fixed set's patch tokens
    and of its pooled features, and the kNN top-1; a collapse drives the ranks towards 1 and the kNN towards chance.
    Not the feature std: it depends on the features' scale, which a healthy run shrinks too (docs/training.md,
    "Collapse", has the figures). `patience` keeps one noisy check from firing."""

    def __init__(self, fraction: float, patience: int):
        self.fraction, self.patience = fraction, patience
        self.watches: dict[str, Watch] = {}

    def check(self, step: int, figures: dict) -> Optional[Fired]:
        """The figures of a check at `step` (any of WATCHED; others are ignored) → the alarm when it fires now."""
        fired = None
        for name in (n for n in WATCHED if n in figures):
            value, w = float(figures[name]), self.watches.setdefault(name, Watch())
            if value > w.peak:
                w.peak, w.peak_step = value, step
            if not value >= self.fraction * w.peak:  # a NaN figure is no healthy one
                w.below, w.since = w.below + 1, w.since if w.below else step
            else:
                w.below = 0
            if w.below == self.patience and fired is None:
                fired = Fired(step, name, value, Watch(**vars(w)))
        return fired

    @property
    def firing(self) -> bool:
        """Whether a figure is under its share of its peak for `patience` checks or more (the TensorBoard flag)."""
        return any(w.below >= self.patience for w in self.watches.values())


def alarm_line(fired: Fired, fraction: float, out_dir: Path) -> str:
    """The alarm in one line: the step, the figure against its peak, and what to do: go back with gentler settings to
    the newest checkpoint saved before the fall began, a tag or checkpoints/best, when there is one."""
    w, ckpt_dir, best = fired.watch, checkpoint_dir(out_dir), read_best(checkpoint_dir(out_dir))
    before = [ckpt_dir / tag for tag in complete_tags(ckpt_dir) if tag_step(tag) < w.since]
    if best is not None and best["step"] < w.since and (not before or best["step"] > tag_step(before[-1].name)):
        before.append(ckpt_dir / BEST)
    gentler = "a lower optimization.lr or a higher ema.momentum"
    todo = (f"go back to the newest checkpoint before it (--resume {before[-1]}) with {gentler}" if before
            else f"no checkpoint was saved before it: start again with {gentler}")
    if best is not None and before[-1:] != [ckpt_dir / BEST]:
        todo += f"; {ckpt_dir / BEST} holds the checkpoint of the best kNN probe (step {best['step']})"
    return (f"collapse alarm: step {fired.step}: {WATCHED[fired.name]} {fired.value:.4g} is under {fraction:g} x its "
            f"peak {w.peak:.4g} (step {w.peak_step}) for {w.below} checks in a row, since step {w.since}: the target "
            f"encoder's features are collapsing (the loss does not show it); {todo}")


# ------------------------------------------------------------------------------------------------ across launches

class History:
    """Rank 0: run.out_dir/collapse.json, each check's figures, so that a resumed run's rule starts from the peaks
    its checkpoint's steps reached (a launch resumed from an earlier checkpoint drops the checks after it)."""

    def __init__(self, out_dir: Path, step: int):
        self.path = Path(out_dir) / HISTORY
        self.checks = [c for c in self._read() if c["step"] <= step]

    def _read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        try:
            checks = json.loads(self.path.read_text())["checks"]
            return [{"step": int(c["step"]), **{k: float(c[k]) for k in WATCHED if k in c}} for c in checks]
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning(f"{self.path}: not a record of collapse checks ({type(err).__name__}: {err}); the alarm's "
                           f"peaks start again from this launch")
            return []

    def replay(self, rule: CollapseRule) -> None:
        for check in self.checks:
            rule.check(check["step"], check)

    def add(self, step: int, figures: dict) -> None:
        self.checks.append({"step": step, **{k: float(v) for k, v in figures.items() if k in WATCHED}})
        write_file_atomic(self.path, json.dumps({"checks": self.checks}, indent=0).encode())
