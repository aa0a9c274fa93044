"""The data pipeline: shards (format, writer), the multiblock mask sampler, the two sources (DALI, PyTorch) and the
one loader that turns either into training batches. It receives its settings (the config's data section, a dtype,
a mask sampler) from the caller and imports no configuration of its own."""


from util.errors import UserError


class DataError(UserError):
    """Data that cannot be read: a damaged shard folder (pipeline.shards.ManifestError, a subclass) or sample; the
    message names the shard, and the sample key where there is one."""
