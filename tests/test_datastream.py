"""DataStream with persistent workers: the same batches as without workers, across epochs and
after a resume, and the workers' decoded-photo caches survive an epoch change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokensr.data.datasets import HRCropDataset
from tokensr.train.data import DataStream


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    return tmp_path


def batches(stream: DataStream, n: int) -> list[torch.Tensor]:
    return [stream.next()["lr"] for _ in range(n)]


def test_persistent_workers_give_the_batches_of_a_serial_stream(photos: Path) -> None:
    ds = HRCropDataset(photos, crop_size=16, scale=4, degradation="bsrgan", seed=2, length=6, texture_threshold=0)
    serial = DataStream(ds, batch_size=2, rank=0, world=1, seed=5, num_workers=0)
    parallel = DataStream(ds, batch_size=2, rank=0, world=1, seed=5, num_workers=1)
    assert parallel.persistent and not serial.persistent
    want, got = batches(serial, 7), batches(parallel, 7)  # 3 batches per epoch: crosses two epoch ends
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=False))
    assert not torch.equal(want[0], want[3])  # a new epoch draws new crops
    loader = parallel._loader
    batches(parallel, 2)
    assert parallel._loader is loader  # one loader (and its workers) for every epoch
    # resume in the middle of epoch 1 in a fresh stream
    resumed = DataStream(ds, batch_size=2, rank=0, world=1, seed=5, num_workers=1)
    resumed.load_state({"epoch": 1, "batch_in_epoch": 1})
    assert all(torch.equal(a, b) for a, b in zip(want[4:7], batches(resumed, 3), strict=False))
    parallel.close()
    resumed.close()


def test_epoch_tagged_items_ignore_set_epoch(photos: Path) -> None:
    ds = HRCropDataset(photos, crop_size=16, scale=4, degradation="bsrgan", seed=2, length=6, texture_threshold=0)
    ds.set_epoch(3)
    item = ds[1]["lr"]
    ds.set_epoch(0)
    assert torch.equal(ds[(3, 1)]["lr"], item) and not torch.equal(ds[1]["lr"], item)
    with pytest.raises(IndexError):
        ds[(0, 6)]
