"""The data pipeline, from an image folder to training batches, in four sub-packages:

1. shards/   an image folder becomes WebDataset tars + DALI indexes + manifest.json, once (shard_dataset.py); the
             manifest is how every reader opens a shard folder.
2. remote/   a shard folder on a server or in a bucket is fetched into each node's verified cache, which the readers
             then read like a local folder.
3. loading/  the loader turns the shards into batches on the training device through one of two backends (DALI on
             the GPU, or PyTorch), each rank reading its share of one global sample order per epoch.
4. masks/    the multiblock sampler gives each batch its context and target patch indices, a pure function of
             (seed, step, rank).

It receives its settings (the config's data section, a dtype, a mask sampler, the run's batch layout) from its caller
and imports no configuration of its own.
"""
from util.errors import UserError


class DataError(UserError):
    """Data that cannot be read: a damaged shard folder (pipeline.shards.format.ManifestError, a subclass) or sample;
    the message names the shard, and the sample key where there is one."""
