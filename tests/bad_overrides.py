"""The overrides of issue 15 that loaded (or crashed) before the range checks, each with the key its refusal must
name: refused at load (unit/test_config_ranges.py) and through train.py's real CLI (e2e/test_train_hardening.py)."""

ISSUE_EXAMPLES = [("optimization.lr=-0.001", "optimization.lr"), ("optimization.start_lr=-1", "optimization.start_lr"),
                  ("optimization.weight_decay=-0.04", "optimization.weight_decay"),
                  ("ema.momentum=[1.5, 1.5]", "ema.momentum"), ("optimization.ipe_scale=0", "optimization.ipe_scale"),
                  ("optimization.max_steps=0", "optimization.max_steps"), ("model.depth=0", "model.depth"),
                  ("model.embed_dim=0", "model.embed_dim"), ("data.num_workers=-1", "data.num_workers"),
                  ("mask.nenc=2", "mask.nenc")]
