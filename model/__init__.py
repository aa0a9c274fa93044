"""I-JEPA models: the ViT encoder (vit), the predictor, the objective (jepa), the target EMA (ema), official
checkpoints (official), the encoder in transformers' and timm's formats (export), sizes, and torch.compile of the
blocks (compile)."""
