"""The DALI backend: webdataset shards → decode with the random crop fused in → resize → normalize, on the GPU
(`device="mixed"`, nvJPEG / the hardware JPEG decoder) or, with no CUDA device, on the CPU (device_id=None).

The only module that imports DALI. `DaliBackend` implements the loader's Backend protocol (pipeline/loading/backend.py):

    backend = DaliBackend(data, seed, list_shards(dest), batches_per_epoch, rank, world_size, device, batch_size, dtype)
    for images, labels, keys in backend.epoch_batches(epoch, start): ...

Every rank indexes every shard and DALI's reader splits the samples (shard_id=rank, num_shards=world_size); a
pass of the reader is one loader epoch, its surplus batches dropped. Resume restores DALI's own reader checkpoint. A
sample DALI cannot decode stops the pipeline; the backend then names its shard and key. A shard deleted or cut while
the run reads it is named as such (the reader reads the shards, never maps them: a mapped file cut under the reader
kills the process with SIGBUS, no message). DALI cannot skip a sample (NVIDIA/DALI#3913), and DALI 2.4's decoders
can die with SIGSEGV on some batches holding a bad JPEG. The epoch and rank arithmetic, the resume, the keys, the
seeds and that defect are written down in docs/data-pipeline.md.
"""
from __future__ import annotations

import logging
import re
from bisect import bisect_right
from itertools import accumulate
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from nvidia.dali import Pipeline, fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from model.inputs import IMAGENET_MEAN, IMAGENET_STD
from pipeline import DataError
from pipeline.loading.backend import SHARD_CHANGED_TODO, shard_change, shard_sizes
from pipeline.remote.cache import CacheStats, ShardCache
from pipeline.seeds import hashed_seed
from pipeline.shards.format import (ManifestError, SampleRef, ShardFile, member_key, parse_index, read_index,
                                    read_samples, read_span)
from util.urls import redact

logger = logging.getLogger(__name__)

READER = "Reader"
OUTPUTS = ["images", "labels", "source_info"]
STATE_VERSION = 1
MAX_CANDIDATES = 20_000  # samples re-decoded, at most, to find the one that stopped the pipeline
_REBUILD = "rebuild the shards with shard_dataset.py (it verifies every image)"


@pipeline_def(enable_checkpointing=True)
def training_pipeline(paths: list[str], index_paths: list[str], shard_id: int, num_shards: int, crop_size: int,
                      crop_scale: Sequence[float], crop_ratio: Sequence[float], shuffle_buffer: int, reader_seed: int,
                      out_dtype):
    """images (B, 3, S, S) normalised in `out_dtype`, labels (B, W) zero-padded ASCII of `.cls`, source_info (B, L)
    zero-padded "<tar>:<offset>:<member>"; the decoder runs on the GPU when the pipeline has a device_id."""
    jpg, cls = fn.readers.webdataset(paths=paths, index_paths=index_paths, ext=["jpg", "cls"],
                                     missing_component_behavior="empty", random_shuffle=True,
                                     initial_fill=max(1, shuffle_buffer), seed=reader_seed, shard_id=shard_id,
                                     num_shards=num_shards, stick_to_shard=False, pad_last_batch=True,
                                     dont_use_mmap=True, name=READER)  # a mapped shard cut under it: SIGBUS
    source_info = fn.get_property(jpg, key="source_info")
    decode_device = "cpu" if Pipeline.current().device_id is None else "mixed"
    # adjust_orientation=False: the stored pixels, EXIF orientation ignored, as in the PyTorch backend, the eval
    # reader and the official code (PIL without exif_transpose)
    images = fn.decoders.image_random_crop(jpg, device=decode_device, output_type=types.RGB,
                                           random_area=list(crop_scale), random_aspect_ratio=list(crop_ratio),
                                           num_attempts=10, adjust_orientation=False)  # (h, w, 3) uint8: the crop
    images = fn.resize(images, size=[crop_size, crop_size])  # (S, S, 3), antialiased linear
    images = fn.crop_mirror_normalize(images, dtype=out_dtype, output_layout="CHW",
                                      mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD])
    return images, fn.pad(cls, fill_value=0), fn.pad(source_info, fill_value=0)


STAGES = ("read", "decode", "crop-decode", "resize", "normalize")


@pipeline_def
def stage_pipeline(paths: list[str], index_paths: list[str], crop_size: int, stage: str):
    """The training pipeline cut after `stage` (STAGES; "normalize" is all of it), for finding what limits it
    (benchmarks/data.py): "read" is the webdataset reader on the host, "decode" a full decode without the crop, then
    the fused random-crop decode, the resize, the normalisation. Sequential read, fixed crop ranges (0.3-1, 3/4-4/3)."""
    jpg = fn.readers.webdataset(paths=paths, index_paths=index_paths, ext=["jpg"], dont_use_mmap=True, name=READER)
    decode_device = "cpu" if Pipeline.current().device_id is None else "mixed"
    if stage == "read":
        return jpg
    if stage == "decode":
        return fn.decoders.image(jpg, device=decode_device, output_type=types.RGB, adjust_orientation=False)
    images = fn.decoders.image_random_crop(jpg, device=decode_device, output_type=types.RGB, random_area=[0.3, 1.0],
                                           random_aspect_ratio=[0.75, 4 / 3], num_attempts=10,
                                           adjust_orientation=False)
    if stage == "crop-decode":
        return images
    images = fn.resize(images, size=[crop_size, crop_size])
    if stage == "resize":
        return images
    return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                    mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD])


@pipeline_def
def decode_check_pipeline():
    """Decodes what is fed to "jpg": used to find the sample that stopped the training pipeline."""
    jpg = fn.external_source(name="jpg", dtype=types.UINT8, ndim=1)
    decode_device = "cpu" if Pipeline.current().device_id is None else "mixed"
    return fn.decoders.image(jpg, device=decode_device, output_type=types.RGB, adjust_orientation=False)


def parse_labels(ascii_digits: torch.Tensor) -> torch.Tensor:
    """(B, W) uint8: zero-padded ASCII class indices → (B,) int64; -1 for a sample without digits (unlabeled)."""
    codes = ascii_digits.to(torch.int64)
    is_digit = (codes >= ord("0")) & (codes <= ord("9"))
    labels = torch.zeros(codes.shape[0], dtype=torch.int64)
    for col in range(codes.shape[1]):
        labels = torch.where(is_digit[:, col], labels * 10 + codes[:, col] - ord("0"), labels)
    return torch.where(is_digit.any(dim=1), labels, torch.full_like(labels, -1))


def parse_keys(source_info: torch.Tensor) -> list[str]:
    """(B, L) zero-padded "<tar>:<offset>:<member>" → the sample keys."""
    rows = source_info.cpu().numpy()
    return [member_key(row.tobytes().rstrip(b"\0").decode("utf-8", "replace").rsplit(":", 1)[-1]) for row in rows]


def dali_seed(seed: int, rank: int, stream: int) -> int:
    """A 31-bit seed for DALI hashed from (run.seed, rank), one per stream (0: operators, 1: reader shuffle); distinct
    from the mask sampler's streams (pipeline.masks.sampler.stream_seed)."""
    return hashed_seed([seed, rank], (0xDA11, stream), bits=31)


def dali_message(err: BaseException) -> str:
    """The operator's own words from a DALI pipeline error, without the traceback DALI wraps around them."""
    text = str(err)
    match = re.search(r"encountered:\s*(.*?)\s*(?:Current pipeline object is no longer valid|$)", text, re.S)
    core = re.sub(r"\s*C\+\+ context: \[[^\]]*\]", "", match.group(1) if match else text)  # DALI's source line
    return " ".join(core.split())[:500]


def index_line_key(shard: ShardFile, line: int) -> Optional[str]:
    """The key of the sample on `line` of the shard's index as DALI counts them (the header is line 0, sample i on
    line i + 1); None when the index cannot tell."""
    try:
        entries = parse_index(shard.index_path.read_text(encoding="ascii"), str(shard.index_path))
    except (OSError, UnicodeDecodeError, ManifestError):
        return None
    return member_key(entries[line - 1][0][3]) if 1 <= line <= len(entries) else None


def fetch_for_dali(cache: ShardCache, shards: list[ShardFile], rank: int, world_size: int) -> None:
    """Every shard into the cache, this rank's share of the first pass first (the reader's split is contiguous)."""
    total = cache.total_tar_bytes()
    if cache.bound is not None and cache.bound < total:
        raise DataError(f"data.cache_gb {cache.bound / 1e9:g}: the DALI backend opens every shard as it starts, "
                        f"{total / 1e9:.3g} GB for {redact(cache.url)}; raise data.cache_gb to at least that, or use "
                        f"data.backend torch, which reads within a smaller cache")
    ends = list(accumulate(s.samples for s in shards))  # the sample after each shard
    start = bisect_right(ends, rank * ends[-1] // world_size) if ends else 0  # the shard holding rank's first sample
    cache.ensure_all([s.path for s in shards[start:] + shards[:start]])


class DaliBackend:
    """The loader's backend (pipeline/loading/loader.py): this rank's share of all `shards`, through DALI."""

    name = "DALI"  # in the log

    takes_offset = False  # DALI's reader splits each pass by (shard_id, num_shards): it cannot start mid-order

    def __init__(self, data, seed: int, shards: Sequence[ShardFile], batches_per_epoch: int, rank: int,
                 world_size: int, device: torch.device, batch_size: int, dtype: torch.dtype = torch.float32,
                 cache: ShardCache | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.shards, self.rank, self.world_size = list(shards), rank, world_size
        self.cache = cache
        if cache is not None:  # DALI's reader opens every shard as the pipeline builds: all must be in the cache
            fetch_for_dali(cache, self.shards, rank, world_size)
        for shard in self.shards:  # DALI reads the .idx files itself, trusting them: check them first (one at a time)
            read_index(shard)
        self.shard_bytes = shard_sizes(s.path for s in self.shards)  # to tell a shard changed under the run
        self.device, self.dtype = device, dtype
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.samples = sum(s.samples for s in self.shards)  # N, over all ranks
        if batches_per_epoch * self.batch_size > self.samples // world_size:
            raise DataError(f"{batches_per_epoch} batches of {self.batch_size} per rank need "
                            f"{batches_per_epoch * self.batch_size} samples on each of {world_size} ranks; the "
                            f"shards hold {self.samples} in all")
        self.on_bad_sample = data.on_bad_sample
        self.skipped = 0  # stays 0: DALI cannot skip a sample (docs/data-pipeline.md)
        self.prefetch, self.shuffle_buffer = max(1, data.prefetch), data.shuffle_buffer
        out_dtype = types.FLOAT16 if dtype in (torch.float16, torch.bfloat16) else types.FLOAT
        self._pipe_args = dict(
            paths=[str(s.path) for s in self.shards], index_paths=[str(s.index_path) for s in self.shards],
            shard_id=rank, num_shards=world_size,
            crop_size=data.crop_size, crop_scale=list(data.crop_scale), crop_ratio=list(data.crop_ratio),
            shuffle_buffer=data.shuffle_buffer, reader_seed=dali_seed(seed, rank, 1), out_dtype=out_dtype,
            batch_size=self.batch_size, num_threads=max(1, data.num_workers), device_id=self._device_id(),
            seed=dali_seed(seed, rank, 0), prefetch_queue_depth=self.prefetch)
        self.fingerprint = {
            "shards": [[s.path.name, s.samples] for s in self.shards], "batch_size": self.batch_size,
            "batches_per_epoch": batches_per_epoch, "crop_size": data.crop_size,
            "crop_scale": list(data.crop_scale), "crop_ratio": list(data.crop_ratio),
            "shuffle_buffer": data.shuffle_buffer, "seed": seed, "rank": rank, "world_size": world_size,
            "decode": "cpu" if self._device_id() is None else "mixed", "dtype": str(out_dtype)}
        self._iter: Optional[DALIGenericIterator] = None
        self._epoch, self._batch = 0, 0  # position: batches handed out in the current epoch
        self._first_epoch = 0  # the loader epoch of the reader's first pass (restart)
        self._checkpoint: Optional[bytes] = None  # what the next pipeline is built from (DALI's serialized bytes)
        self._returned: set[str] = set()  # keys handed out in the current epoch (narrows down a bad sample)
        self._failed: Optional[DataError] = None
        self._dead: list = []  # failed pipelines, freed with this backend (not mid-failure)
        self._order: Optional[list[list[SampleRef]]] = None
        if self.on_bad_sample == "skip":
            logger.warning("data.on_bad_sample: skip does not apply to the DALI backend: a sample DALI cannot decode "
                           "stops the run with an error naming it (use data.backend: torch to skip and count)")

    def _device_id(self) -> Optional[int]:
        if self.device.type != "cuda":
            return None
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    # ------------------------------------------------------------------------------------------------ iteration

    def epoch_batches(self, epoch: int, start: int, offset: int = 0,
                      batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        if offset or batches not in (None, self.batches_per_epoch):
            raise ValueError(f"DALI backend: an epoch starts at its first sample and has {self.batches_per_epoch} "
                             f"batches (asked: offset {offset}, {batches} batches)")
        if self._failed is not None:
            raise self._failed
        if (epoch, start) != (self._epoch, self._batch):
            raise DataError(f"DALI backend of rank {self.rank} is at epoch {self._epoch} batch {self._batch}, asked "
                            f"for epoch {epoch} batch {start}: a DALI pipeline only goes on from where it is; resume "
                            f"through Loader.load_state_dict with the state saved at that batch")
        if self._iter is None:
            self._build()
        if self.cache is not None and start == 0:  # the reader reads its 1/world_size of the shards each pass
            self.cache.add(CacheStats(read_bytes=self.cache.total_tar_bytes() // self.world_size))
        while self._batch < self.batches_per_epoch:
            out = self._next()
            if out is None:
                raise DataError(f"rank {self.rank}: DALI ended epoch {self._epoch} after {self._batch} batches, "
                                f"{self.batches_per_epoch} were expected ({self.samples} samples in its shards)")
            keys = parse_keys(out["source_info"])
            self._returned.update(keys)
            self._batch += 1
            yield out["images"], parse_labels(out["labels"]), keys
        while self._next() is not None:
            pass  # the rest of the pass: this rank's surplus over batches_per_epoch, and the padded batch
        self._iter.reset()
        self._epoch, self._batch, self._returned = self._epoch + 1, 0, set()

    def _build(self) -> None:
        pipe = training_pipeline(**self._pipe_args, checkpoint=self._checkpoint)
        try:  # builds the pipeline, restores the checkpoint and runs the first batches
            self._iter = DALIGenericIterator([pipe], OUTPUTS, reader_name=READER,
                                             last_batch_policy=LastBatchPolicy.FILL, auto_reset=False)
        except RuntimeError as err:
            self._fail(err, pipe)

    def _next(self) -> Optional[dict]:
        """The next batch of the DALI pass; None at its end."""
        try:
            return next(self._iter)[0]
        except StopIteration:
            return None
        except RuntimeError as err:
            self._fail(err, self._iter)

    def _fail(self, err: RuntimeError, failed) -> None:
        # DALI: "Current pipeline object is no longer valid". It is kept, not freed here: its threads may still be
        # finishing the failed batch, and freeing a pipeline under them was seen to crash (DALI 2.4, CPU).
        self._dead.append(failed)
        self._iter = None
        self._failed = self._diagnose(err)
        raise self._failed from err

    # ------------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        checkpoint = self._iter.checkpoints()[0] if self._iter is not None else self._checkpoint
        return {"backend": "dali", "version": STATE_VERSION, "epoch": self._epoch, "batch": self._batch,
                "first_epoch": self._first_epoch, "checkpoint": checkpoint, "fingerprint": self.fingerprint,
                "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        if state.get("backend") != "dali" or state.get("version") != STATE_VERSION:
            raise DataError(f"rank {self.rank}: the data state was saved by the {state.get('backend', 'torch')!r} "
                            f"backend (version {state.get('version')}), not by this DALI backend (version "
                            f"{STATE_VERSION}); resume with the data.backend it was saved with")
        changed = sorted(k for k in self.fingerprint.keys() | state["fingerprint"].keys()
                         if self.fingerprint.get(k) != state["fingerprint"].get(k))
        if changed:
            raise DataError(f"rank {self.rank}: the DALI checkpoint was saved with other {', '.join(changed)} "
                            f"(saved: {[state['fingerprint'].get(k) for k in changed]}, now: "
                            f"{[self.fingerprint.get(k) for k in changed]}); resume with the same shards, data "
                            f"settings, seed, rank and device kind, or start a fresh run")
        self._iter, self._failed = None, None
        self._checkpoint, self._epoch, self._batch = state["checkpoint"], state["epoch"], state["batch"]
        self._first_epoch = state.get("first_epoch", 0)
        self._returned, self.skipped = set(), state["skipped"]

    def restart(self, epoch: int, skipped: int, order: dict | None = None) -> None:
        """Continues a run of another layout (Loader.continue_from): a fresh reader whose first pass is `epoch` (its
        order is DALI's own: `order` is the PyTorch backend's)."""
        self._iter, self._failed, self._checkpoint = None, None, None
        self._epoch, self._batch, self._first_epoch = epoch, 0, epoch
        self._returned, self.skipped = set(), skipped

    # ------------------------------------------------------------------------------------------------ bad data

    def _diagnose(self, err: RuntimeError) -> DataError:
        """A DataError naming the shard and sample key behind a DALI pipeline error."""
        said = dali_message(err)
        where = f"rank {self.rank}, epoch {self._epoch}, after batch {self._batch}"
        if self.on_bad_sample == "skip":
            todo = ("DALI cannot skip a sample inside a running pipeline (NVIDIA/DALI#3913), so data.on_bad_sample: "
                    "skip does not apply to it: use data.backend: torch to skip and count such samples, or "
                    + _REBUILD)
        else:
            todo = f"set data.backend: torch and data.on_bad_sample: skip to skip and count such samples, or {_REBUILD}"
        changed = self._changed_shard(said)
        if changed:
            return DataError(f"{changed} ({where}; DALI: {said}); {SHARD_CHANGED_TODO}")
        if self._order is None:
            self._order = read_samples(self.shards)  # tar order, as the reader sees them (ManifestError: a DataError)
        try:
            bad = self._find_undecodable()
        except RuntimeError as check_err:  # the check itself could not run: say what DALI said first
            logger.error("could not re-decode samples to find the bad one: %s", dali_message(check_err))
            bad = []
        if bad:
            listed = "; ".join(f"shard {shard}, sample {key}" for shard, key in bad[:5])
            return DataError(f"{listed}: DALI cannot decode it ({where}; DALI: {said}); {todo}")
        return DataError(f"DALI pipeline failed ({where}) over shards {[str(s.path) for s in self.shards]} and no "
                         f"sample the reader can have reached fails to decode alone: {said}")

    def _changed_shard(self, said: str) -> Optional[str]:
        """"shard <path>[, sample <key>]: the shard <how it changed>" for the first shard deleted, moved or resized
        since this backend started (not a bad sample: data.on_bad_sample does not apply); None when none was. The key
        comes from DALI's words when they name a line of its index."""
        for shard in self.shards:
            change = shard_change(str(shard.path), self.shard_bytes[str(shard.path)])
            if change is None:
                continue
            key = None
            line = re.search(r'Malformed index file at "([^"]+)" line (\d+)', said)
            if line and line.group(1) == str(shard.index_path):
                key = index_line_key(shard, int(line.group(2)))
            return f"shard {shard.path}{f', sample {key}' if key else ''}: the shard {change}"
        return None

    def _slice(self, epoch: int) -> list[SampleRef]:
        """The samples this rank's reader reads in `epoch`, in the order it reads them: DALI's contiguous slice
        (rank + pass) % world_size of the concatenated shards (dali/operators/reader/loader/loader.cc start_index),
        where pass counts the reader's passes from its first (epoch - first epoch)."""
        flat = [sample for samples in self._order for sample in samples]
        part = (self.rank + epoch - self._first_epoch) % self.world_size
        n = len(flat)
        return flat[part * n // self.world_size:(part + 1) * n // self.world_size]

    def _candidates(self) -> list[SampleRef]:
        """Samples the failed run can have read: those of the current pass within the reader's reach (shuffle buffer
        plus the batches DALI runs ahead) not yet handed out, and, near the end of the pass, the next pass's first."""
        ahead = (2 * self.prefetch + 2) * self.batch_size + max(1, self.shuffle_buffer)
        current = self._slice(self._epoch)
        reach = min(len(current), self._batch * self.batch_size + ahead)
        out = [s for s in current[:reach] if s.key not in self._returned]
        if reach == len(current):
            listed = {s.key for s in out}
            out += [s for s in self._slice(self._epoch + 1)[:ahead] if s.key not in listed]
        return out[:MAX_CANDIDATES]

    def _find_undecodable(self) -> list[tuple[str, str]]:
        """(shard, key) of each candidate that DALI's decoder rejects on its own.

        One sample per run: DALI 2.4's CPU decoders can segfault when a batch holds an undecodable JPEG followed by
        more samples (docs/data-pipeline.md), never seen with the bad sample alone or last. A pipeline that failed is
        replaced (DALI: "no longer valid")."""
        candidates = self._candidates()
        logger.info("DALI pipeline failed: re-decoding %d sample(s) one by one to find the bad one", len(candidates))
        bad, pipe, files = [], None, {}
        try:
            for sample in candidates:
                try:
                    data = np.frombuffer(read_span(sample.shard, sample.jpg, files), dtype=np.uint8)
                except OSError:  # the shard is shorter than its index says: that sample cannot decode
                    bad.append((sample.shard, sample.key))
                    continue
                if pipe is None:
                    pipe = decode_check_pipeline(batch_size=1, num_threads=1, device_id=self._device_id(),
                                                 prefetch_queue_depth=1)
                    pipe.build()
                try:
                    pipe.feed_input("jpg", [data])
                    pipe.run()
                except RuntimeError:
                    bad.append((sample.shard, sample.key))
                    pipe = None
        finally:
            for f in files.values():
                f.close()
        return bad
