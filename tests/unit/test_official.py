"""Official-format checkpoints load exactly, for any size, and only as tensors and plain values; damaged ones are
named in one line; the encoder exports to timm."""
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from checkpoint_files import Planted

from model.ema import make_target_encoder
from model.export import export_timm, to_timm
from model.official import load_encoder_for_eval, load_official_checkpoint
from model.predictor import Predictor
from model.safe_load import CheckpointError
from model.vit import VisionTransformer

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_tiny"


def test_fixture_outputs_reproduced():
    encoder, predictor, target = load_official_checkpoint(FIXTURE / "checkpoint.pth.tar")
    want = torch.load(FIXTURE / "expected.pt")
    for m in (encoder, predictor, target):
        m.eval()
    with torch.no_grad():
        z = encoder(want["images"], want["context_indices"])
        errors = {
            "target_encoder_out": (target(want["images"]) - want["target_encoder_out"]).abs().max().item(),
            "encoder_out": (z - want["encoder_out"]).abs().max().item(),
            "predictor_out": (predictor(z, want["context_indices"], want["target_indices"])
                              - want["predictor_out"]).abs().max().item(),
        }
    assert max(errors.values()) <= 1e-5, errors
    assert not torch.equal(encoder.blocks[0].attn.qkv.weight, target.blocks[0].attn.qkv.weight)


def official_predictor_forward(state, z, ctx_idx, tgt_idx, num_heads):
    """The official predictor, re-derived from the spec with plain tensor ops and explicit softmax attention."""
    def linear(x, name):
        return x @ state[name + ".weight"].T + state[name + ".bias"]

    def ln(x, name):
        return torch.nn.functional.layer_norm(x, x.shape[-1:], state[name + ".weight"], state[name + ".bias"], 1e-6)

    pos = state["predictor_pos_embed"][0]
    x = linear(z, "predictor_embed") + torch.stack([pos[i] for i in ctx_idx])
    rows = []
    for m in range(tgt_idx.shape[0]):
        for b in range(tgt_idx.shape[1]):
            tokens = state["mask_token"][0] + pos[tgt_idx[m, b]]
            rows.append(torch.cat([x[b], tokens]))
    x = torch.stack(rows)
    depth = len({k.split(".")[1] for k in state if k.startswith("predictor_blocks.")})
    for i in range(depth):
        p = f"predictor_blocks.{i}"
        h = ln(x, p + ".norm1")
        q, k, v = linear(h, p + ".attn.qkv").reshape(*h.shape[:2], 3, num_heads, -1).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v
        x = x + linear(a.transpose(1, 2).reshape(h.shape), p + ".attn.proj")
        h = torch.nn.functional.gelu(linear(ln(x, p + ".norm2"), p + ".mlp.fc1"))
        x = x + linear(h, p + ".mlp.fc2")
    x = ln(x, "predictor_norm")[:, ctx_idx.shape[1]:]
    return linear(x, "predictor_proj")


@pytest.mark.parametrize("img, patch, dim, depth, heads, pdim, pdepth, pass_heads", [
    (48, 8, 64, 3, 4, 32, 2, True),     # width with no official size: heads passed in
    (56, 14, 192, 1, 3, 48, 3, False),  # vit_tiny width: heads looked up; patch 14, 4x4 grid
    (40, 4, 96, 2, 2, 64, 1, True),     # 10x10 grid, head dim 48
])
def test_generated_official_checkpoints_of_other_shapes(tmp_path, img, patch, dim, depth, heads, pdim, pdepth,
                                                        pass_heads):
    encoder = VisionTransformer(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads)
    predictor = Predictor(encoder.grid, dim, pdim, pdepth, heads)
    target = make_target_encoder(encoder)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.01 * torch.randn_like(p))  # the target must differ from the context encoder
    module = lambda m: {"module." + k: v for k, v in m.state_dict().items()}  # noqa: E731  DDP-style keys
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"encoder": module(encoder), "predictor": module(predictor), "target_encoder": module(target),
                "opt": {}, "scaler": None, "epoch": 1, "loss": 0.1, "batch_size": 2, "world_size": 1, "lr": 1e-3}, path)
    enc2, pred2, tgt2 = load_official_checkpoint(path, num_heads=heads if pass_heads else None)
    images = torch.randn(2, 3, img, img)
    n = encoder.num_patches
    ctx = torch.sort(torch.randperm(n)[: n // 2]).values.repeat(2, 1)
    tgt = torch.stack([torch.sort(torch.randperm(n)[:3]).values.repeat(2, 1) for _ in range(4)])
    with torch.no_grad():
        timm_target = to_timm(tgt2).forward_features(images)  # an independent implementation of the encoder
        assert (tgt2.eval()(images) - timm_target).abs().max() <= 1e-5
        assert (tgt2(images) - target(images)).abs().max() == 0
        z = enc2.eval()(images, ctx)
        assert (z - encoder(images, ctx)).abs().max() == 0
        out = pred2.eval()(z, ctx, tgt)
        ref = official_predictor_forward({k: v for k, v in predictor.state_dict().items()}, z, ctx, tgt, heads)
        assert (out - ref).abs().max() <= 1e-5


def test_bad_checkpoints_are_named(tmp_path):
    encoder, predictor, target = load_official_checkpoint(FIXTURE / "checkpoint.pth.tar")
    state = {"encoder": encoder.state_dict(), "predictor": predictor.state_dict(),
             "target_encoder": target.state_dict()}
    with pytest.raises(CheckpointError, match="missing.pth: checkpoint not found"):
        load_official_checkpoint(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth: not a readable torch checkpoint"):
        load_official_checkpoint(garbage)
    partial = tmp_path / "partial.pth"
    torch.save({"encoder": state["encoder"]}, partial)
    with pytest.raises(ValueError, match=r"partial.pth: not in the official I-JEPA format: missing \['predictor'"):
        load_official_checkpoint(partial)
    extra = tmp_path / "extra.pth"
    torch.save({**state, "target_encoder": {**state["target_encoder"], "head.weight": torch.zeros(1)}}, extra)
    with pytest.raises(ValueError, match=r"(?s)extra.pth\[target_encoder\].*head.weight"):
        load_official_checkpoint(extra)
    shape = tmp_path / "shape.pth"
    bad_pred = dict(state["predictor"])
    bad_pred["predictor_proj.bias"] = torch.zeros(7)
    torch.save({**state, "predictor": bad_pred}, shape)
    with pytest.raises(ValueError, match=r"(?s)shape.pth\[predictor\].*predictor_proj.bias"):
        load_official_checkpoint(shape)


def _edited(state: dict, part: str, key: str, value) -> dict:
    edited = {name: dict(tensors) for name, tensors in state.items()}
    if value is None:
        del edited[part][key]
    else:
        edited[part][key] = value
    return edited


def test_damaged_files_give_one_line_naming_file_part_and_key(tmp_path):
    """Each damage is refused with a CheckpointError of one line naming the file (and part and key); none
    escapes as an EOFError, KeyError or AttributeError."""
    raw = (FIXTURE / "checkpoint.pth.tar").read_bytes()
    state = torch.load(FIXTURE / "checkpoint.pth.tar", weights_only=True)
    state = {part: state[part] for part in ("encoder", "predictor", "target_encoder")}
    cases = {
        "empty": (b"", "the file is empty"),
        "truncated": (raw[: len(raw) // 2], "not a readable torch checkpoint"),
        "list": ([1, 2], "not in the official I-JEPA format"),
        "int_state": ({**state, "encoder": 3}, r"\[encoder\]: holds a value of type int, not a state dict"),
        "int_keys": ({**state, "predictor": {1: torch.zeros(1)}}, r"\[predictor\]: key 1 is of type int, not a name"),
        "str_value": (_edited(state, "encoder", "module.pos_embed", "x"), r"\[encoder\]: entry 'module.pos_embed'"),
        "mask_token": (_edited(state, "predictor", "module.mask_token", torch.zeros(1, 1, 7)),
                       r"\[predictor\]: mask_token has shape \(1, 1, 7\), expected \(1, 1, 96\)"),
        "no_mask_token": (_edited(state, "predictor", "module.mask_token", None),
                          r"\[predictor\]: missing key 'mask_token'"),
        "no_patch_embed": (_edited(state, "encoder", "module.patch_embed.proj.weight", None),
                           r"\[encoder\]: missing key 'patch_embed.proj.weight'"),
        "pos_embed": (_edited(state, "target_encoder", "module.pos_embed", torch.zeros(1, 15, 192)),
                      r"\[target_encoder\]: does not match .* pos_embed is \(1, 15, 192\), not \(1, 64, 192\)"),
        "pos_embed_width": (_edited(state, "encoder", "module.pos_embed", torch.zeros(1, 16, 7)),
                            r"\[encoder\]: pos_embed \(1, 16, 7\) .* do not describe a ViT"),
        "patch_2d": (_edited(state, "encoder", "module.patch_embed.proj.weight", torch.zeros(3, 3)),
                     r"\[encoder\]: patch_embed.proj.weight has shape \(3, 3\), expected 4 dimensions"),
        "width_no_size": (_edited(_edited(state, "encoder", "module.patch_embed.proj.weight",
                                          torch.zeros(100, 3, 16, 16)), "encoder", "module.pos_embed",
                                  torch.zeros(1, 64, 100)), r"\[encoder\]: width 100 matches no official ViT size"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(CheckpointError) as err:
            load_official_checkpoint(path)
        text = str(err.value)
        assert "\n" not in text and text.startswith(str(path)), (name, text)
        assert re.search(message, text), (name, text)


def test_a_planted_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "planted.pth.tar"
    torch.save({"encoder": {"pos_embed": Planted(marker)}, "predictor": {}, "target_encoder": {}}, path)
    with pytest.raises(CheckpointError, match=r"planted.pth.tar: holds objects other than tensors and plain "
                                                  r"values \(.*\); not loaded, because unpickling them could run"):
        load_official_checkpoint(path)
    assert not marker.exists()


def test_eval_encoder_is_the_target_by_default_and_timm_export_matches(tmp_path):
    path = FIXTURE / "checkpoint.pth.tar"
    _, _, target = load_official_checkpoint(path)
    chosen = load_encoder_for_eval(path)
    assert all(torch.equal(a, b) for a, b in zip(chosen.state_dict().values(), target.state_dict().values()))
    context = load_encoder_for_eval(path, which="context")
    assert not torch.equal(context.norm.weight, target.norm.weight)

    import timm
    from safetensors.torch import load_file

    kwargs = export_timm(chosen, tmp_path / "encoder_timm.safetensors")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    model.load_state_dict(load_file(tmp_path / "encoder_timm.safetensors"), strict=True)  # safetensors: no pickle
    images = torch.load(FIXTURE / "expected.pt")["images"]
    with torch.no_grad():
        ours, theirs = chosen(images), model.eval().forward_features(images)
        assert (ours - theirs).abs().max() <= 1e-5
        assert (model(images) - ours.mean(1)).abs().max() <= 1e-5  # global_pool='avg' pools our tokens


class _Plain:
    """A plain data class, allowed by name in the test below."""

    def __init__(self, value):
        self.value = value


def test_nested_allowances_keep_the_outer_ones(tmp_path):
    """A safe_load inside a weights_only_loads block (DeepSpeed loads universal checkpoints so: its own torch.load
    calls, and our checkpoint engine's) must not strip the outer block's allowed classes on leaving."""
    from model.safe_load import safe_load, weights_only_loads

    path = tmp_path / "plain.pt"
    torch.save({"x": _Plain(3)}, path)
    # what the allow-list holds, not its order: torch keeps it in a set, and a block leaving clears it and adds back
    # what it keeps, so the order after depends on where the classes lie in memory
    before = Counter(torch.serialization.get_safe_globals())
    with weights_only_loads([_Plain]):
        assert safe_load(path, allowed=[_Plain])["x"].value == 3  # the inner block allows _Plain too, then leaves
        assert torch.load(path, weights_only=False)["x"].value == 3  # forced weights_only: needs the outer allowance
    assert Counter(torch.serialization.get_safe_globals()) == before
    with pytest.raises(CheckpointError, match="_Plain"):
        safe_load(path)
