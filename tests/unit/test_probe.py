"""kNN, linear, low-shot and attentive probes can succeed and can fail; eval.py names a missing checkpoint. (eval.py
on a checkpoint and its random init through its CLI: e2e/test_eval_cli.py.)"""
import importlib

import pytest
import torch
import torch.nn as nn

from evaluation.attentive import ATTENTIVE_GRID, AttentiveClassifier, Tokens, attentive_sweep
from evaluation.probes import knn_accuracy
from evaluation.sweep import (LINEAR_GRID, Setting, linear_heads, linear_sweep, low_shot_subset, low_shot_sweep,
                              parse_low_shot, train_heads, warmup_cosine)

eval_main = importlib.import_module("eval")  # the entry script (its name shadows the builtin, hence not `import eval`)


def blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen) * 5
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centers[y] + spread * torch.randn(len(y), dim, generator=gen)
    return x, y


def test_probes_near_perfect_on_separable_features():
    x, y = blobs(60, 5, 16, spread=0.5, seed=0)
    vx, vy = blobs(20, 5, 16, spread=0.5, seed=0)  # same centers (same seed), fresh noise below
    vx = vx + 0.5 * torch.randn_like(vx)
    assert knn_accuracy(x, y, vx, vy) >= 0.98
    result = linear_sweep(x, y, vx, vy, epochs=30)
    assert result.top1 >= 0.98 and result.setting in LINEAR_GRID and len(result.grid) == len(LINEAR_GRID)
    assert result.top1 == max(top1 for _, top1 in result.grid)


def test_probes_at_chance_on_noise():
    gen = torch.Generator().manual_seed(1)
    x, vx = torch.randn(500, 16, generator=gen), torch.randn(500, 16, generator=gen)
    y, vy = torch.randint(0, 5, (500,), generator=gen), torch.randint(0, 5, (500,), generator=gen)
    assert abs(knn_accuracy(x, y, vx, vy) - 0.2) < 0.07
    result = linear_sweep(x, y, vx, vy, epochs=30)
    # the best of 12 heads on val is optimistic: each head alone is near chance, their maximum a little above it
    assert all(abs(top1 - 0.2) < 0.07 for _, top1 in result.grid) and result.top1 < 0.3


def test_heads_trained_at_once_equal_heads_trained_alone():
    """One pass, several heads: each head ends exactly where training it alone with its setting ends."""
    x, y = blobs(40, 4, 8, spread=2.0, seed=3)
    settings = [Setting(1e-2, 0.0), Setting(1e-1, 0.1), Setting(3e-3, 1e-2)]
    torch.manual_seed(5)
    together = linear_heads(8, 4, len(settings))
    alone = [linear_heads(8, 4, 1) for _ in settings]
    for one, head in zip(alone, together.heads):
        one.heads[0].load_state_dict(head.state_dict())
    train_heads(together, settings, lambda idx: x[idx], y, epochs=3, batch_size=32, seed=7, warmup_epochs=1)
    for one, setting, trained in zip(alone, settings, together.heads):
        train_heads(one, [setting], lambda idx: x[idx], y, epochs=3, batch_size=32, seed=7, warmup_epochs=1)
        for a, b in zip(one.heads[0].state_dict().values(), trained.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_warmup_cosine_schedule():
    factor = warmup_cosine(total_steps=10, warmup_steps=2)
    assert [round(factor(s), 4) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]


# ------------------------------------------------------------------------------------------------ low-shot

def test_low_shot_subsets_take_the_labels_asked_per_class():
    y = torch.arange(4).repeat_interleave(torch.tensor([10, 20, 30, 3]))  # classes of 10, 20, 30 and 3 samples
    five = low_shot_subset(y, 5, seed=0)
    assert torch.bincount(y[five]).tolist() == [5, 5, 5, 3]  # a class with fewer gives all it has
    tenth = low_shot_subset(y, 0.1, seed=0)
    assert torch.bincount(y[tenth]).tolist() == [1, 2, 3, 1]  # at least one label per class
    assert torch.equal(low_shot_subset(y, 5, seed=0), five) and not torch.equal(low_shot_subset(y, 5, seed=1), five)
    assert len(set(five.tolist())) == len(five)


@pytest.mark.parametrize("text, value", [("1%", 0.01), ("12.5%", 0.125), (" 100% ", 1.0), ("5", 5), ("1", 1)])
def test_low_shot_spec(text, value):
    assert parse_low_shot(text) == value and type(parse_low_shot(text)) is type(value)


@pytest.mark.parametrize("text", ["0%", "101%", "0", "-3", "five", "2.5", "%"])
def test_bad_low_shot_specs_say_what_is_expected(text):
    with pytest.raises(ValueError, match="percentage in \\(0%, 100%\\]"):
        parse_low_shot(text)


def test_low_shot_on_separable_versus_noise():
    x, y = blobs(50, 5, 16, spread=0.5, seed=0)
    vx, vy = blobs(20, 5, 16, spread=0.5, seed=0)
    vx = vx + 0.5 * torch.randn_like(vx)
    shots = low_shot_sweep(x, y, vx, vy, per_class=2, epochs=30)
    assert [r["seed"] for r in shots["runs"]] == [0, 1, 2] and all(r["labels"] == 10 for r in shots["runs"])
    assert shots["mean"] >= 0.95 and shots["std"] < 0.05
    gen = torch.Generator().manual_seed(2)
    x, vx = torch.randn(250, 16, generator=gen), torch.randn(500, 16, generator=gen)
    y, vy = torch.randint(0, 5, (250,), generator=gen), torch.randint(0, 5, (500,), generator=gen)
    noise = low_shot_sweep(x, y, vx, vy, per_class=0.1, epochs=30)
    assert noise["mean"] < 0.3 and all(r["labels"] >= 5 for r in noise["runs"])
    runs = torch.tensor([r["top1"] for r in noise["runs"]])
    assert noise["std"] == pytest.approx(runs.std().item()) and noise["mean"] == pytest.approx(runs.mean().item())


# ----------------------------------------------------------------------------------------------- attentive

def test_folded_cross_attention_is_the_reference_cross_attention():
    """The probe's cheap forward (no per-token keys or values) computes V-JEPA's cross-attention block: outputs and
    every gradient equal the plain SDPA form, in float64."""
    torch.manual_seed(0)
    probe = AttentiveClassifier(dim=24, num_heads=3, num_classes=7).double()
    with torch.no_grad():  # away from the init (unit LayerNorm, zero biases), so every term counts
        for p in probe.parameters():
            p.add_(0.3 * torch.randn_like(p))
    tokens = 2 * torch.randn(5, 13, 24, dtype=torch.float64) + 1
    torch.testing.assert_close(probe(tokens), probe.reference_forward(tokens), rtol=1e-10, atol=1e-12)
    named = [(n, p) for n, p in probe.named_parameters()]
    ours = torch.autograd.grad(probe(tokens).square().sum(), [p for _, p in named], allow_unused=True)
    ref = torch.autograd.grad(probe.reference_forward(tokens).square().sum(), [p for _, p in named])
    for (name, _), a, b in zip(named, ours, ref):
        if a is None:  # the key bias: a constant per head's logits, which the softmax removes (zero in the reference)
            assert name == "kv.bias" and b[:24].abs().max() < 1e-12 and b[24:].abs().max() > 1e-3, name
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


class TokenEncoder(nn.Module):
    """Stands in for a frozen encoder: images (B, 3, 4, 4) → tokens (B, 16, 8), one token per pixel (its channels
    through a fixed projection, plus a fixed code of its position), so that a class can live in one position."""
    num_patches, embed_dim, num_heads = 16, 8, 2

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3, 8, generator=gen))
        self.register_buffer("pos", torch.randn(16, 8, generator=gen))

    def forward(self, x):
        return x.flatten(2).transpose(1, 2) @ self.proj + self.pos


def pixel_images(n_per_class: int, seed: int, separable: bool):
    """uint8 (N, 3, 4, 4) noise, 3 classes; for separable data, class c tints every pixel in channel c."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per_class)
    images = torch.randint(60, 160, (len(y), 3, 4, 4), generator=gen, dtype=torch.uint8)
    if separable:
        images[torch.arange(len(y)), y] += 60
    return images, y


def attentive_results(cache: bool, kinds: tuple[bool, ...] = (True, False)) -> dict:
    """{separable: the attentive sweep's result} on separable data and on noise (`kinds`)."""
    results = {}
    for separable in kinds:
        images, y = pixel_images(60, seed=0, separable=separable)
        val_images, val_y = pixel_images(30, seed=1, separable=separable)
        train, val = Tokens(TokenEncoder(), images, "cpu", cache), Tokens(TokenEncoder(), val_images, "cpu", cache)
        results[separable] = attentive_sweep(train, y, val, val_y, num_heads=2, num_classes=3, epochs=25,
                                             batch_size=32)
    return results


def test_attentive_probe_on_separable_versus_noise_with_tokens_cached_or_recomputed():
    cached = attentive_results(cache=True)
    assert cached[True].top1 >= 0.98 and cached[True].setting in ATTENTIVE_GRID
    assert all(abs(top1 - 1 / 3) < 0.15 for _, top1 in cached[False].grid) and cached[False].top1 < 0.48
    # the same heads whether the encoder runs once or every batch
    assert attentive_results(cache=False, kinds=(True,))[True] == cached[True]


def test_eval_cli_names_a_missing_checkpoint(digit_shards, tmp_path, capsys):
    """Refused before any work: eval.py's main() in this process."""
    missing = tmp_path / "nope.pth"
    code = eval_main.main(["--checkpoint", str(missing), "--train-shards", str(digit_shards["train"]),
                           "--val-shards", str(digit_shards["val"])])
    assert code != 0 and "nope.pth" in capsys.readouterr().err
