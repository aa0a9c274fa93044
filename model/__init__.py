"""I-JEPA models: ViT encoder (vit), predictor, objective (jepa), EMA, schedules, official checkpoints (official).

`import model` stays free of torch (config.py needs only model.sizes); the public loader is imported on first use.
"""


def __getattr__(name):
    if name in ("load_official_checkpoint", "load_encoder_for_eval", "to_timm", "export_timm"):
        from model import official
        return getattr(official, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
