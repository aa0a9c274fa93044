"""Data pipeline: the shard format, the mask sampler, the DALI and plain-PyTorch loaders."""
