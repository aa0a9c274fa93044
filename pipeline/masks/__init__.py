"""I-JEPA's multiblock masks.

    sampler.py   MultiBlockMaskSampler: ctx_idx (B, K_enc) and tgt_idx (M, B, K_pred) as a pure function of
                 (seed, step, rank), the official collator's semantics with a switch per quirk
    stats.py     token counts and coverage over many steps (docs/masks.md, the mask bench)
    pictures.py  a batch's masks drawn over its images (TensorBoard, report.py)
"""
