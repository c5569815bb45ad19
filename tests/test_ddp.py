"""Data-parallel training on CPU (gloo): two ranks average their gradients exactly like one
process with the combined batch, end with identical weights, and the sync check notices a
rank that drifted; `torchrun -m tokensr train` runs the VQGAN task on two processes."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from tokensr.train.checkpoint import list_checkpoints, load_checkpoint
from tokensr.train.config import build_config
from tokensr.train.distributed import DistInfo, check_in_sync
from tokensr.train.engine import train

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")


class ToyData(Dataset):
    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([0.5, -1.0, 2.0, 1.0]) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class ToyTask:
    def __init__(self, cfg: dict[str, Any], device: torch.device) -> None:
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def param_groups(self) -> dict[str, Any]:
        return {"g": self.net.parameters()}

    def train_dataset(self) -> Dataset[Any]:
        return ToyData()

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        loss = (self.net(batch["x"]).squeeze(1) - batch["y"]).pow(2).mean()
        return {"g": loss}, {}

    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        return {}, {}

    def export(self, folder: str) -> None:
        pass


def toy_config(run_dir: Path, batch_size: int) -> Any:
    return build_config(
        {
            "task": "toy",
            "engine": {
                "run_dir": str(run_dir),
                "max_steps": 6,
                "batch_size": batch_size,
                "num_workers": 0,
                "ckpt_every": 3,
                "val_every": 0,
                "progress": False,
                "tensorboard": False,
                "device": "cpu",
                "ema_decay": 0.8,
                "optim": {"g": {"type": "sgd", "lr": 0.05, "momentum": 0.5}},
            },
            "task_config": {},
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    dist.init_process_group("gloo", rank=rank, world_size=world)
    trainer = train(toy_config(Path(out) / "run", batch_size=4), task_factory=ToyTask)
    info = DistInfo(rank, world, rank)
    clean = check_in_sync(trainer.modules, info)
    if rank == 1:
        with torch.no_grad():
            trainer.modules["net"][2].bias.add_(1e-7)
    drifted = check_in_sync(trainer.modules, info)
    torch.save(
        {"state": trainer.modules["net"].state_dict(), "clean": clean, "drifted": drifted}, Path(out) / f"rank{rank}.pt"
    )
    dist.barrier()  # no rank tears gloo down while its peer is still in a collective
    dist.destroy_process_group()


def test_two_ranks_match_one_process_with_the_combined_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["clean"] == [] and r1["clean"] == []
    assert r0["drifted"] == ["net.2.bias"] and r1["drifted"] == ["net.2.bias"]
    # both ranks ended with identical weights (before the deliberate drift)
    r1["state"]["2.bias"] -= 1e-7
    for k, v in r0["state"].items():
        assert torch.allclose(v, r1["state"][k], atol=0, rtol=1e-6), k
    assert torch.equal(r0["state"]["0.weight"], r1["state"]["0.weight"])
    # two ranks x batch 4 averaged == one process x batch 8 (same samples per step; SGD, so a
    # sum instead of a mean would show)
    torch.set_num_threads(1)
    single = train(toy_config(tmp_path / "single", batch_size=8), task_factory=ToyTask)
    for k, v in single.modules["net"].state_dict().items():
        assert torch.allclose(v, r0["state"][k], atol=1e-5), k
    # and differs from one process that sees only one rank's half of the data
    half = train(toy_config(tmp_path / "half", batch_size=4), task_factory=ToyTask)
    assert not torch.allclose(half.modules["net"][0].weight, r0["state"]["0.weight"], atol=1e-4)
    ck = load_checkpoint(list_checkpoints(tmp_path / "run" / "checkpoints")[-1][1])
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # per-rank random streams


def test_torchrun_vqgan_ranks_stay_in_sync(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    y, x = np.mgrid[0:40, 0:40].astype(np.float64)
    for i in range(4):
        img = np.stack([np.sin(0.2 * (c + 1) * x + i) + np.cos(0.3 * (i + 1) * y) for c in range(3)], -1)
        Image.fromarray(((img + 2) / 4 * 255).clip(0, 255).astype(np.uint8)).save(photos / f"{i}.png")
    run = tmp_path / "run"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tokensr",
        "train",
        str(REPO / "configs" / "vqgan_tiny.yaml"),
        "max_steps=4",
        "ckpt_every=2",
        "losses.disc_start=0",
        "ema_decay=0.9",
        f"run_dir={run}",
        f"data.root={photos}",
        "progress=false",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the engine compared every module tensor (VQGAN, EMA codebook buffers, discriminator with
    # BatchNorm statistics) bit for bit across the ranks at each checkpoint
    with open(run / "log.csv", newline="") as f:
        sync = [(int(r["step"]), r["key"], float(r["value"])) for r in csv.DictReader(f) if r["split"] == "sync"]
    assert (2, "ranks_in_sync", 1.0) in sync and (4, "ranks_in_sync", 1.0) in sync
    assert (4, "world_size", 2.0) in sync
    ck = load_checkpoint(list_checkpoints(run / "checkpoints")[-1][1])
    assert ck["world_size"] == 2 and "discriminator" in ck["modules"]
    assert (run / "export" / "model.safetensors").is_file()
