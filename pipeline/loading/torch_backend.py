"""The PyTorch backend: random access into the shards through their index files, torchvision decode and crop.

An epoch is one seeded permutation of all samples (the global order, data.epoch_order: pipeline/loading/order.py) of
which rank r takes every world_size-th, starting at the epoch's offset (0, or where the ranks of a run with another
world size stopped); a resume starts at any batch without reading what came before. DataLoader workers build whole
batches, each crop drawn from a generator seeded by (seed, epoch, rank, batch), so the output does not depend on the
number of workers. On a GPU the JPEGs are decoded there, batched through nvJPEG; on the CPU the workers decode
(docs/data-pipeline.md). A worker hands a DataError back as data and the main process raises it, so the user's first
line is its message, not torch's "Caught DataError in DataLoader worker process 0" and a worker traceback.
"""
from __future__ import annotations

import logging
import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import resized_crop

from pipeline import DataError
from pipeline.loading.backend import SHARD_CHANGED_TODO, shard_change, shard_sizes
from pipeline.loading.order import DATA_STREAM, EpochOrder, OrderSpec, choose, fetches_ahead
from pipeline.remote.cache import ShardCache
from pipeline.seeds import hashed_seed
from pipeline.shards.format import SampleRef, ShardFile, read_samples, read_span
from util.processes import forking_workers

logger = logging.getLogger(__name__)


def crop_box(gen: torch.Generator, height: int, width: int, scale: tuple[float, float],
             ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop, torchvision's algorithm with an explicit generator."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=gen).tolist()
        target_area = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1)), h, w
    in_ratio = width / height  # fallback: the central crop of the closest allowed aspect
    w, h = (width, int(round(width / ratio[0]))) if in_ratio < ratio[0] else (
        (int(round(height * ratio[1])), height) if in_ratio > ratio[1] else (width, height))
    h, w = max(h, 1), max(w, 1)  # an extreme ratio on a tiny image would round a side to 0 pixels
    return (height - h) // 2, (width - w) // 2, h, w


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from the JPEG header alone."""
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(data)) as im:
        return im.height, im.width


class EpochBatches(Dataset):
    """Batch i of one epoch: images cropped to (B, 3, S, S) uint8 — or, with decode_on_gpu, the JPEG bytes and the
    crop boxes for the main process to decode and crop on the GPU."""

    def __init__(self, samples: list[SampleRef], order: torch.Tensor, batch_size: int, crop_size: int, scale, ratio,
                 seed: tuple[int, ...], decode_on_gpu: bool, on_bad_sample: str, shard_bytes: dict[str, int],
                 cache: ShardCache | None = None, sample_bytes: dict[str, int] | None = None):
        self.samples, self.order, self.batch_size = samples, order, batch_size
        self.crop_size, self.scale, self.ratio, self.seed = crop_size, scale, ratio, seed
        self.decode_on_gpu, self.on_bad_sample = decode_on_gpu, on_bad_sample
        self.shard_bytes = shard_bytes  # {shard: size when the backend started}, to say how a shard that fails changed
        self.cache = cache  # data.shards a URL: the shards are read through the node's cache, opened per read
        self.sample_bytes = sample_bytes  # then {shard: what a sample read counts as: its share of the shard's bytes}
        self._files = {}

    def __len__(self) -> int:
        return len(self.order) // self.batch_size

    def _read(self, ref: SampleRef) -> tuple[bytes, bytes | None]:
        """The sample's JPEG and .cls bytes. A shard that cannot be read changed under the run (its index was checked
        against it at start): not a bad sample, so a DataError whatever data.on_bad_sample says."""
        if self.cache is not None:  # a cached file is not held open: eviction frees its room
            jpg = self.cache.read(ref.shard, ref.jpg, counted=self.sample_bytes[ref.shard])
            return jpg, self.cache.read(ref.shard, ref.cls, counted=0) if ref.cls else None
        try:
            jpg = read_span(ref.shard, ref.jpg, self._files)
            return jpg, read_span(ref.shard, ref.cls, self._files) if ref.cls else None
        except OSError as err:
            change = shard_change(ref.shard, self.shard_bytes[ref.shard]) or f"cannot be read ({err})"
            raise DataError(f"shard {ref.shard}, sample {ref.key}: the shard {change}; {SHARD_CHANGED_TODO}") from err

    def _load(self, ref: SampleRef):
        """(image (3, H, W) uint8 or JPEG bytes tensor, (H, W), label)."""
        data, cls = self._read(ref)
        label = int(cls) if cls is not None else -1
        jpg = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if self.decode_on_gpu:
            return jpg, jpeg_size(data), label
        image = decode_jpeg(jpg, mode=ImageReadMode.RGB)
        return image, tuple(image.shape[-2:]), label

    def __getitem__(self, i: int):
        """Batch i, or the DataError that stops it, handed back as data: raised in a DataLoader worker, torch would
        re-raise it in the main process with a message that starts with its own words and the worker's traceback."""
        try:
            in_worker = self.cache is not None and torch.utils.data.get_worker_info() is not None
            return self._batch(i), self.cache.take_stats() if in_worker else None  # a worker's counts, handed back
        except DataError as err:
            return err, None

    def _batch(self, i: int):
        gen = torch.Generator().manual_seed(hashed_seed((*self.seed, i), DATA_STREAM))  # (seed, epoch, rank, batch)
        picks = self.order[i * self.batch_size:(i + 1) * self.batch_size].tolist()
        loaded, keys, skipped = [], [], 0
        for j in picks:
            ref = self.samples[j]
            try:
                loaded.append(self._load(ref))
                keys.append(ref.key)
            except (OSError, RuntimeError, ValueError) as err:
                if self.on_bad_sample == "raise":
                    raise DataError(bad_sample_message(ref.shard, ref.key, err)) from err
                logger.warning("skipping shard %s sample %s: %s", ref.shard, ref.key, err)
                skipped += 1
        if not loaded:
            shards = sorted({self.samples[j].shard for j in picks})
            raise DataError(f"batch {i}: every sample is unreadable (shards {shards})")
        for k in range(skipped):  # keep the batch size: repeat good samples in place of skipped ones
            loaded.append(loaded[k % (len(picks) - skipped)])
            keys.append(keys[k % (len(picks) - skipped)])
        boxes = [crop_box(gen, h, w, self.scale, self.ratio) for _, (h, w), _ in loaded]
        labels = torch.tensor([label for _, _, label in loaded])
        if self.decode_on_gpu:
            return [x for x, _, _ in loaded], boxes, labels, keys, skipped
        size = [self.crop_size, self.crop_size]
        images = torch.stack([resized_crop(x, *box, size, antialias=True) for (x, _, _), box in zip(loaded, boxes)])
        return images, None, labels, keys, skipped


def bad_sample_message(shard: str, key: str, err: Exception) -> str:
    return (f"shard {shard}, sample {key}: cannot decode it ({err}); set data.on_bad_sample: skip to skip and "
            f"count such samples, or rebuild the shards with shard_dataset.py")


def decode_crop_on_gpu(jpgs: list[torch.Tensor], boxes, keys: list[str], shard_of: dict, crop_size: int,
                       device: torch.device, on_bad_sample: str = "raise") -> tuple[torch.Tensor, list[int]]:
    """nvJPEG batched decode, then each image's crop resized to (S, S) on the GPU: (images, picks), where image j
    is sample picks[j] of the batch.

    A JPEG whose header parsed (in the worker) but whose data nvJPEG rejects raises DataError naming the sample,
    or, with on_bad_sample "skip", is replaced by a good sample of the batch (picks[j] != j: its image and crop; the
    caller takes its key and label) and counted by the caller.
    """
    try:
        images = list(decode_jpeg(jpgs, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        images = []
        for jpg, key in zip(jpgs, keys):  # find the sample that broke the batch
            try:
                images.append(decode_jpeg(jpg, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as err:
                if on_bad_sample == "raise":
                    raise DataError(bad_sample_message(shard_of.get(key, "?"), key, err)) from err
                logger.warning("skipping shard %s sample %s: %s", shard_of.get(key, "?"), key, err)
                images.append(None)
    bad = [j for j, x in enumerate(images) if x is None]
    good = [j for j, x in enumerate(images) if x is not None]
    if not good:
        shards = sorted({shard_of.get(k, "?") for k in keys})
        raise DataError(f"every sample of a batch is undecodable (shards {shards}); rebuild them with "
                        f"shard_dataset.py")
    picks = list(range(len(images)))
    for n, j in enumerate(bad):  # keep the batch size, as the CPU path does
        picks[j] = good[n % len(good)]
    size = [crop_size, crop_size]
    crops = torch.stack([resized_crop(images[i], *boxes[i], size, antialias=True) for i in picks])
    return crops, picks


def _as_is(batch):
    return batch  # batches are built whole by EpochBatches


def forked_iter(loader: DataLoader):
    """iter(loader), whose workers fork with the garbage collector frozen (util/processes.py)."""
    with forking_workers():
        return iter(loader)


def _worker_start(_: int) -> None:
    dataset = torch.utils.data.get_worker_info().dataset
    if dataset.cache is not None:  # a fork copies the parent's counts and, maybe held, its lock
        dataset.cache.forked()


class TorchBackend:
    """Backend (pipeline/loading/backend.py) over all shards; `data` is the config's data section."""

    name = "PyTorch"  # in the log

    takes_offset = True  # an epoch can start at any sample of its global order

    def __init__(self, data, seed: int, shards: Sequence[ShardFile], batches_per_epoch: int, rank: int,
                 world_size: int, device: torch.device, batch_size: int, cache: ShardCache | None = None):
        # every rank indexes every shard: it reads 1/world_size of them
        self.samples = [ref for refs in read_samples(shards) for ref in refs]
        self.cache = cache
        self.world_size = world_size
        self.shard_of = {s.key: s.shard for s in self.samples}
        self.batches_per_epoch, self.rank, self.device = batches_per_epoch, rank, device
        self.batch_size, self.crop_size = batch_size, data.crop_size
        self.scale, self.ratio = data.crop_scale, data.crop_ratio
        self.num_workers, self.prefetch = data.num_workers, data.prefetch
        self.seed, self.on_bad_sample = seed, data.on_bad_sample
        self.decode_on_gpu = device.type == "cuda"
        self.shard_bytes = {str(s.path): s.bytes for s in shards} if cache else shard_sizes(s.path for s in shards)
        self.shards, self.skipped = list(shards), 0
        self.order = self._order(data.epoch_order)
        # data.shards a URL: a sample read counts as its share of its shard's bytes (the cache's hit rate)
        self.sample_bytes = {str(s.path): self.shard_bytes[str(s.path)] // s.samples for s in shards} if cache else None

    def _order(self, setting: str) -> EpochOrder:
        bound = self.cache.bound if self.cache is not None else None
        if setting == "cache_blocks" and bound is None:
            raise DataError("data.epoch_order cache_blocks: its blocks are cut for a bounded shard cache, and this run "
                            "has none; set data.shards to a URL with data.cache_gb, or data.epoch_order auto")
        sizes = [self.shard_bytes[str(s.path)] for s in self.shards]
        spec = choose(setting, sum(sizes), max(sizes, default=0), bound)
        if self.rank == 0:
            logger.info(spec.describe(sum(sizes)))
        return EpochOrder(spec, [s.samples for s in self.shards], sizes, self.seed)

    def epoch_order(self, epoch: int, offset: int = 0, batches: int | None = None) -> torch.Tensor:
        """This rank's samples of `epoch`: every `world_size`-th of one permutation shared by all ranks (the global
        order), from its sample `offset` on, for `batches` batches (default: a whole epoch)."""
        mine = self.order.permutation(epoch)[offset + self.rank::self.world_size]
        return mine[: (self.batches_per_epoch if batches is None else batches) * self.batch_size]

    def epoch_batches(self, epoch: int, start: int, offset: int = 0,
                      batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        # crops are seeded by (seed, epoch, rank[, offset], batch): a continued epoch draws crops of its own
        seed = (self.seed, epoch, self.rank) + ((offset,) if offset else ())
        order = self.epoch_order(epoch, offset, batches)
        dataset = EpochBatches(self.samples, order, self.batch_size, self.crop_size, self.scale, self.ratio, seed,
                               self.decode_on_gpu, self.on_bad_sample, self.shard_bytes, self.cache,
                               self.sample_bytes)
        fetching = self.cache is not None and fetches_ahead(self.order.spec, self.cache.bound, self.order.total_bytes)
        ahead = FetchAhead(self, epoch) if fetching else None
        workers = self.num_workers
        loader = DataLoader(dataset, batch_size=None, sampler=range(start, len(dataset)), num_workers=workers,
                            prefetch_factor=self.prefetch if workers else None,
                            pin_memory=self.device.type == "cuda" and not self.decode_on_gpu,
                            collate_fn=_as_is, worker_init_fn=_worker_start if workers else None)
        step = self.batch_size * self.world_size  # samples of the global order per batch of this rank
        if ahead is not None:
            ahead.at(offset + start * step)
        for i, (batch, cached) in enumerate(forked_iter(loader), start):  # no name holds the iterator: an error
            if isinstance(batch, DataError):                              # shuts its workers down
                raise batch  # from a worker: its message first, no worker traceback (EpochBatches.__getitem__)
            if cached is not None:
                self.cache.add(cached)
            if ahead is not None:
                ahead.at(offset + (i + 1) * step)
            images, boxes, labels, keys, skipped = batch
            self.skipped += skipped
            if self.decode_on_gpu:
                images, picks = decode_crop_on_gpu(images, boxes, keys, self.shard_of, self.crop_size, self.device,
                                                   self.on_bad_sample)
                if picks != list(range(len(picks))):
                    self.skipped += sum(i != j for j, i in enumerate(picks))
                    keys, labels = [keys[i] for i in picks], labels[picks]
            yield images, labels, keys

    def state_dict(self) -> dict:
        """The position lives in the loader (epoch, batch); the order's parameters here, so that a resume reads the
        same order whatever data.cache_gb is now."""
        return {"skipped": self.skipped, "order": self.order.spec.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = state["skipped"]
        self.keep_order(state.get("order"))

    def restart(self, epoch: int, skipped: int, order: dict | None = None) -> None:
        """Continues a run of another layout (Loader.continue_from): the position lives in the loader."""
        self.skipped = skipped
        self.keep_order(order)

    def keep_order(self, saved: dict | None) -> None:
        """The order a resumed run started with (none saved: global, the only order before data.epoch_order)."""
        spec = OrderSpec(**saved) if saved else OrderSpec()
        if spec != self.order.spec:
            logger.info(f"data: the run goes on with the epoch order it started with ({spec.kind}), not the "
                        f"{self.order.spec.kind} order data.epoch_order and data.cache_gb give now")
            self.order = EpochOrder(spec, self.order.counts, self.order.bytes, self.seed)


class FetchAhead:
    """The shards a rank's readers need next, fetched ahead within the cache (less two shards, the readers' room);
    told the position in the epoch's global order as batches arrive, it renews the cache's prefetch when the set
    changes."""

    def __init__(self, backend: TorchBackend, epoch: int):
        self.backend, self.epoch, self.names = backend, epoch, None
        self.budget = backend.order.fetch_budget(backend.cache.bound)

    def at(self, position: int) -> None:
        order, shards = self.backend.order, self.backend.shards
        names = [shards[s].path for s in order.upcoming(self.epoch, position, self.budget)]
        if names != self.names:
            self.names = names
            self.backend.cache.prefetch(names)
