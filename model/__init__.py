"""I-JEPA models: ViT encoder, predictor, objective and EMA. Submodules are imported explicitly (no torch at import)."""
