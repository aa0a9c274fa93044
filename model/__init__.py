"""I-JEPA models: the ViT encoder (vit), the predictor, the objective (jepa), the target EMA (ema), official
checkpoints and the timm export (official), sizes, and torch.compile of the blocks (compile)."""
