"""Our encoder in other libraries' formats: transformers' IJepaModel and timm's VisionTransformer, each as a folder
that its library loads offline (config.json + model.safetensors: tensors only, nothing that unpickles).

    save_transformers(encoder, "out")   →  IJepaModel.from_pretrained("out")
    save_timm(encoder, "out/timm", mean, std)  →  timm.create_model("local-dir:out/timm", pretrained=True)

Both give our encoder's output tokens: IJepaModel's last_hidden_state, timm's forward_features (and timm's forward
their average, global_pool="avg"). transformers, timm's factory and safetensors are imported inside the functions:
transformers takes seconds to import, and the rest of the package imports without it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from model.official import describe_mismatch
from model.sizes import VIT_SIZES
from model.vit import VisionTransformer
from util.errors import UserError

# timm's name for a ViT without class token, average-pooled, no fc_norm: used when timm has no I-JEPA name for the size
TIMM_FALLBACK_ARCH = "vit_base_patch16_gap_224"
WEIGHTS_FILE = "model.safetensors"


class ExportError(UserError, ValueError):
    """An export that cannot be written or does not reproduce the encoder; the message is one line saying which
    format and what differs."""


def _fp32_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Detached contiguous fp32 copies on the CPU (safetensors refuses views and shared storage)."""
    return {k: v.detach().to("cpu", torch.float32, copy=True, memory_format=torch.contiguous_format)
            for k, v in encoder.state_dict().items()}


def _shape(encoder: VisionTransformer) -> dict:
    """What a config needs beyond embed_dim / depth / heads: image and patch side, channels, qkv bias."""
    patch = encoder.patch_embed.patch_size[0]
    return dict(img_size=encoder.grid[0] * patch, patch_size=patch, in_chans=encoder.patch_embed.proj.in_channels,
                qkv_bias=encoder.blocks[0].attn.qkv.bias is not None)


# ----------------------------------------------------------------------------------------------------------- timm

def timm_kwargs(encoder: VisionTransformer) -> dict:
    """timm VisionTransformer arguments that give our encoder's features from forward_features."""
    shape = _shape(encoder)
    return dict(img_size=shape["img_size"], patch_size=shape["patch_size"], in_chans=shape["in_chans"],
                embed_dim=encoder.embed_dim, depth=len(encoder.blocks), num_heads=encoder.num_heads,
                mlp_ratio=encoder.mlp_ratio, qkv_bias=shape["qkv_bias"], class_token=False, global_pool="avg",
                fc_norm=False, num_classes=0)


def to_timm(encoder: VisionTransformer) -> nn.Module:
    """A timm VisionTransformer holding this encoder's weights (same names: the state dict loads strictly)."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    model = TimmViT(**timm_kwargs(encoder))
    model.load_state_dict(_fp32_state(encoder), strict=True)
    return model.eval()


def export_timm(encoder: VisionTransformer, path: str | Path) -> dict:
    """Writes the encoder's fp32 state dict (our names = timm's) as one safetensors file; returns the timm_kwargs that
    build the model loading it."""
    from safetensors.torch import save_file

    save_file(_fp32_state(encoder), str(path), metadata={"format": "pt"})
    return timm_kwargs(encoder)


def timm_architecture(encoder: VisionTransformer) -> str:
    """The timm registry name the folder's config.json names: timm's own name for an official I-JEPA size when it
    has one (ViT-H/14 at 224 → vit_huge_patch14_gap_224, the architecture of timm's `in1k_ijepa` weights), else
    vit_base_patch16_gap_224. Either builds a ViT without class token, average-pooled, without fc_norm; the
    config's model_args set every size."""
    import timm

    dims = (encoder.embed_dim, len(encoder.blocks), encoder.num_heads, encoder.mlp_ratio)
    shape = _shape(encoder)
    for size, official in VIT_SIZES.items():
        name = f"{size}_patch{shape['patch_size']}_gap_{shape['img_size']}"
        if tuple(official) == dims and timm.is_model(name):
            return name
    return TIMM_FALLBACK_ARCH


def timm_config(encoder: VisionTransformer, architecture: str, mean: Sequence[float], std: Sequence[float]) -> dict:
    """timm's local-folder config.json: architecture + model_args build the model, pretrained_cfg gives the eval
    transform our probes use (short side to S/0.875, centre crop S, normalised by `mean` and `std` in [0, 1] units:
    the data pipeline's, which the caller passes)."""
    kwargs = timm_kwargs(encoder)
    size = kwargs["img_size"]
    return {
        "architecture": architecture,
        "num_classes": 0,
        "num_features": encoder.embed_dim,
        "global_pool": "avg",
        "model_args": kwargs,
        "pretrained_cfg": {
            "tag": "ijepa", "custom_load": False, "input_size": [kwargs["in_chans"], size, size],
            "fixed_input_size": True, "interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center",
            "mean": list(mean), "std": list(std), "num_classes": 0, "pool_size": None,
            "first_conv": "patch_embed.proj", "classifier": "head", "paper_name": "I-JEPA",
            "paper_ids": "arXiv:2301.08243",
        },
    }


def save_timm(encoder: VisionTransformer, folder: str | Path, mean: Sequence[float], std: Sequence[float]) -> str:
    """Writes timm's local-folder format: config.json + model.safetensors (our names are timm's), so that
    `timm.create_model("local-dir:FOLDER", pretrained=True)` builds and loads it offline.

    Args:
        encoder: the encoder to export (any dtype or device; written as fp32).
        folder: created if missing; its config.json and model.safetensors are (over)written.
        mean, std: the per-channel normalisation of the images the encoder was trained on, in [0, 1] units.
    Returns:
        The timm architecture name the config names.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    architecture = timm_architecture(encoder)
    export_timm(encoder, folder / WEIGHTS_FILE)
    (folder / "config.json").write_text(json.dumps(timm_config(encoder, architecture, mean, std), indent=2) + "\n")
    return architecture


# --------------------------------------------------------------------------------------------------- transformers

def ijepa_config(encoder: VisionTransformer):
    """transformers.IJepaConfig of this encoder: LayerNorm eps 1e-6, exact GELU, no dropout, as ours."""
    from transformers import IJepaConfig

    shape = _shape(encoder)
    return IJepaConfig(hidden_size=encoder.embed_dim, num_hidden_layers=len(encoder.blocks),
                       num_attention_heads=encoder.num_heads, intermediate_size=int(encoder.embed_dim *
                                                                                    encoder.mlp_ratio),
                       image_size=shape["img_size"], patch_size=shape["patch_size"], num_channels=shape["in_chans"],
                       layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=shape["qkv_bias"], hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)


def transformers_state_dict(encoder: VisionTransformer) -> dict[str, torch.Tensor]:
    """Our weights under the names of the installed transformers' IJepaModel (5.x: layers.N.attention.q_proj, ...);
    the fused qkv (3·D, D) splits into q, k, v in that order, as our Attention reshapes it."""
    ours = _fp32_state(encoder)
    out = {"embeddings.position_embeddings": ours["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": ours["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": ours["patch_embed.proj.bias"],
           "layernorm.weight": ours["norm.weight"], "layernorm.bias": ours["norm.bias"]}
    renames = {"attn.proj": "attention.o_proj", "norm1": "layernorm_before", "norm2": "layernorm_after",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for i in range(len(encoder.blocks)):
        src, dst = f"blocks.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            if src + f"attn.qkv.{kind}" in ours:
                for name, part in zip(("q_proj", "k_proj", "v_proj"), ours[src + f"attn.qkv.{kind}"].chunk(3)):
                    out[dst + f"attention.{name}.{kind}"] = part.clone()  # own storage: safetensors refuses views
            for a, b in renames.items():
                out[dst + f"{b}.{kind}"] = ours[src + f"{a}.{kind}"]
    return out


def to_transformers(encoder: VisionTransformer) -> nn.Module:
    """A transformers IJepaModel (eval mode) holding this encoder's weights, every key used.

    Raises:
        ExportError: the installed transformers names or shapes its weights differently.
    """
    import transformers
    from transformers import IJepaModel

    with torch.device("meta"):  # no random init of weights that are replaced at once (seconds for a ViT-H)
        model = IJepaModel(ijepa_config(encoder))
    state = transformers_state_dict(encoder)
    mismatch = describe_mismatch(model, state)
    if mismatch:
        raise ExportError(f"transformers {transformers.__version__}: its IJepaModel does not take our weights "
                          f"({mismatch}); export with the version in requirements.txt")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def save_transformers(encoder: VisionTransformer, folder: str | Path) -> None:
    """Writes config.json + model.safetensors with IJepaModel.save_pretrained, so that
    `IJepaModel.from_pretrained(FOLDER)` loads it offline. transformers 5 writes the hub's legacy key names
    (encoder.layer.N.attention.attention.query, ...), which transformers 4.47+ read as well."""
    to_transformers(encoder).save_pretrained(str(folder), safe_serialization=True)


# ---------------------------------------------------------------------------------------------------- verification

def sample_images(encoder: VisionTransformer, count: int = 2, seed: int = 0) -> torch.Tensor:
    """(count, C, S, S) deterministic normalised-looking images at the encoder's size (seeded randn)."""
    shape = _shape(encoder)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, shape["in_chans"], shape["img_size"], shape["img_size"], generator=generator)


@torch.no_grad()
def transformers_gap(encoder: VisionTransformer, folder: str | Path, images: torch.Tensor) -> float:
    """max |Δ| between IJepaModel.from_pretrained(folder)'s last_hidden_state and our encoder's tokens.

    Raises:
        ExportError: the folder loads with missing or unexpected weights.
    """
    from transformers import IJepaModel

    model, info = IJepaModel.from_pretrained(str(folder), output_loading_info=True)
    bad = [f"{kind} ({len(keys)}): {', '.join(sorted(map(str, keys))[:3])}" for kind, keys in info.items()
           if kind in ("missing_keys", "unexpected_keys", "mismatched_keys") and keys]
    if bad:
        raise ExportError(f"{folder}: IJepaModel.from_pretrained does not load the weights as written: "
                          f"{'; '.join(bad)}")
    theirs = model.eval()(pixel_values=images).last_hidden_state
    return (theirs - encoder.eval()(images)).abs().max().item()


@torch.no_grad()
def timm_gap(encoder: VisionTransformer, folder: str | Path, images: torch.Tensor) -> float:
    """max |Δ| between timm.create_model("local-dir:folder", pretrained=True).forward_features and our tokens."""
    import timm

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    return (model.forward_features(images) - encoder.eval()(images)).abs().max().item()
