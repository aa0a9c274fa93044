"""Schedules: the spec's values at step 1, end of warmup and the last step; any step computed directly."""
import math

import pytest

from model.predictor import Predictor
from training.engine import param_groups
from training.schedules import lr_at, momentum_at, wd_at
from model.vit import VisionTransformer

WARMUP, TOTAL = 40 * 625, 300 * 625  # the paper's recipe at ImageNet-1K, global batch 2048


def test_lr_at_key_steps():
    assert lr_at(1, WARMUP, TOTAL, 2e-4, 1e-3, 1e-6) == pytest.approx(2e-4 + (1 / WARMUP) * (1e-3 - 2e-4))
    assert lr_at(WARMUP, WARMUP, TOTAL, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert lr_at(TOTAL, WARMUP, TOTAL, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-6)
    mid = (WARMUP + TOTAL) // 2
    assert lr_at(mid, WARMUP, TOTAL, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5, rel=1e-4)


def test_wd_and_momentum_at_key_steps():
    assert wd_at(1, TOTAL, 0.04, 0.4) == pytest.approx(0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi / TOTAL)))
    assert wd_at(TOTAL, TOTAL, 0.04, 0.4) == pytest.approx(0.4)
    assert wd_at(TOTAL // 2, TOTAL, 0.04, 0.4) == pytest.approx(0.22)
    assert momentum_at(1, TOTAL, 0.996, 1.0) == 0.996
    assert momentum_at(TOTAL + 1, TOTAL, 0.996, 1.0) == 1.0
    assert momentum_at(TOTAL // 2 + 1, TOTAL, 0.996, 1.0) == pytest.approx(0.998)


class OfficialWarmupCosine:
    """The official stateful scheduler (src/utils/schedulers.py), replayed step by step for comparison."""

    def __init__(self, warmup, start_lr, ref_lr, final_lr, total):
        self.warmup, self.start_lr, self.ref_lr, self.final_lr, self.total = warmup, start_lr, ref_lr, final_lr, total
        self._step = 0

    def step(self):
        self._step += 1
        if self._step < self.warmup:
            return self.start_lr + (self._step / float(max(1, self.warmup))) * (self.ref_lr - self.start_lr)
        progress = (self._step - self.warmup) / float(max(1, self.total - self.warmup))
        return max(self.final_lr,
                   self.final_lr + (self.ref_lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def test_direct_values_equal_the_official_replay():
    warmup, total = 7, 50
    official = OfficialWarmupCosine(warmup, 2e-4, 1e-3, 1e-6, total)
    momenta = (0.996 + i * (1.0 - 0.996) / total for i in range(total + 1))  # the official generator
    for step in range(1, total + 1):
        assert lr_at(step, warmup, total, 2e-4, 1e-3, 1e-6) == pytest.approx(official.step(), rel=1e-12)
        assert momentum_at(step, total, 0.996, 1.0) == pytest.approx(next(momenta), rel=1e-12)


def test_param_groups_exclude_biases_and_1d_but_decay_mask_token():
    enc = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    pred = Predictor(enc.grid, 32, 16, 1, 2)
    groups = param_groups(pred, 0.04)
    decay, no_decay = ({id(p) for p in g["params"]} for g in groups)
    assert id(pred.mask_token) in decay and id(pred.predictor_proj.weight) in decay
    assert id(pred.predictor_proj.bias) in no_decay and id(pred.predictor_norm.weight) in no_decay
    assert id(pred.predictor_pos_embed) not in decay | no_decay  # fixed: not optimized
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 0.04
