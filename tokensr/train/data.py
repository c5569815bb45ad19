"""Endless, resumable, per-rank sharded batches.

Each epoch draws a permutation of the dataset from ``(seed, epoch)``; rank ``r`` of ``W``
takes every ``W``-th index starting at ``r`` (all ranks get the same count; the remainder
is dropped), and batches are cut from that shard (incomplete last batch dropped). The
position (epoch, batches consumed in it) is saved in checkpoints; on resume the shard of the
interrupted epoch is re-created and the consumed batches skipped, without loading them.

Datasets with ``set_epoch(epoch)`` (e.g. :class:`tokensr.data.datasets.HRCropDataset`) are told
the epoch before each pass, so crops and degradations change between epochs. Resume is exact
when items are pure functions of (seed, epoch, index), as HRCropDataset's are. Datasets that
also take ``dataset[(epoch, index)]`` (``accepts_epoch_index``) are served by one DataLoader
whose workers persist across epochs, so their caches (HRCropDataset's decoded photos) stay
warm instead of being rebuilt by new workers every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tokensr.errors import OptionError


class ShardSampler(Sampler[int]):
    """Indices of one rank's shard of one epoch, from ``start`` on."""

    def __init__(
        self, length: int, rank: int, world: int, seed: int, epoch: int, start: int = 0, shuffle: bool = True
    ) -> None:
        self.length, self.rank, self.world = length, rank, world
        self.seed, self.epoch, self.start, self.shuffle = seed, epoch, start, shuffle

    def indices(self) -> np.ndarray:
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
            if self.shuffle
            else np.arange(self.length)
        )
        per_rank = self.length // self.world
        return order[self.rank : per_rank * self.world : self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(int(i) for i in self.indices()[self.start :])

    def __len__(self) -> int:
        return max(0, self.length // self.world - self.start)


class EpochTaggedSampler(ShardSampler):
    """A :class:`ShardSampler` that yields ``(epoch, index)`` and can be moved to another epoch,
    for datasets with ``accepts_epoch_index``: one DataLoader with persistent workers then
    serves every epoch."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return iter((epoch, int(i)) for i in self.indices()[self.start :])


class DataStream:
    """Endless batches for one rank with a saveable position."""

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        shuffle: bool = True,
    ) -> None:
        self.dataset = dataset
        self.length = len(dataset)  # type: ignore[arg-type]
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.num_workers, self.pin_memory, self.shuffle = num_workers, pin_memory, shuffle
        self.batches_per_epoch = self.length // world // batch_size
        if self.batches_per_epoch < 1:
            raise OptionError(
                f"the training set has {self.length} items, fewer than one batch of {batch_size} "
                f"per process ({world} processes); add data or lower batch_size"
            )
        self.epoch = 0
        self.batch_in_epoch = 0
        self._it: Iterator[Any] | None = None
        # Workers that live across epochs keep what they cached (decoded photos): used when the
        # dataset takes (epoch, index) items, since persistent workers never see set_epoch.
        self.persistent = bool(num_workers > 0 and getattr(dataset, "accepts_epoch_index", False))
        self._loader: DataLoader[Any] | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self._it = None

    def _start_epoch(self) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        start = self.batch_in_epoch * self.batch_size
        if self.persistent and self._loader is not None:
            # the same workers serve the next epoch: only the sampler moves
            self._loader.sampler.epoch, self._loader.sampler.start = self.epoch, start  # type: ignore[attr-defined]
        else:
            sampler_cls = EpochTaggedSampler if self.persistent else ShardSampler
            sampler = sampler_cls(
                self.length, self.rank, self.world, self.seed, self.epoch, start=start, shuffle=self.shuffle
            )
            # DataLoader worker seeds depend on the epoch (workers made once: not even that) and
            # rank only (reproducible across resumes for datasets that are pure functions of the index)
            key = [self.seed, self.rank, 7] if self.persistent else [self.seed, self.epoch, self.rank, 7]
            gen = torch.Generator().manual_seed(int(np.random.default_rng(key).integers(2**62)))
            self._loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                sampler=sampler,
                drop_last=True,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                generator=gen,
                persistent_workers=self.persistent,
            )
        self._it = iter(self._loader)

    def next(self) -> Any:
        if self.batch_in_epoch >= self.batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self._it = None
        if self._it is None:
            self._start_epoch()
        assert self._it is not None
        batch = next(self._it)
        self.batch_in_epoch += 1
        return batch

    def close(self) -> None:
        self._it = None
        self._loader = None  # lets (persistent) workers shut down


__all__ = ["DataStream", "EpochTaggedSampler", "ShardSampler"]
