"""I-JEPA models: the ViT encoder (vit), the predictor, the objective (jepa), the target EMA (ema), the input contract
(inputs: mean and std), checkpoint files read as data (safe_load), official checkpoints (official), the encoder in
transformers' and timm's formats (export), sizes, and torch.compile of the blocks (compile)."""
