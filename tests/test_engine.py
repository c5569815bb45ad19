"""The training engine: configs and overrides, LR schedule, optimizers, data sharding,
gradient accumulation, per-optimizer gradients, EMA, checkpoints and exact resume after
SIGKILL, a tiny VQGAN overfit, and `tokensr train` end to end."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from tokensr.cli import main as cli_main
from tokensr.nn.vqgan import VQGAN
from tokensr.train.checkpoint import list_checkpoints, load_checkpoint
from tokensr.train.config import ConfigError, build_config, load_config
from tokensr.train.data import ShardSampler
from tokensr.train.engine import Trainer, TrainingError, build_optimizer, lr_factor, train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "vqgan_tiny.yaml"


# --- a toy task: linear regression ------------------------------------------------------------
class ToyData(Dataset):
    def __init__(self, n: int = 32) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class ToyTask:
    """``net`` fits the data; ``other`` only enters the ``g`` loss, and is trained by its own
    ``d`` loss from ``d_start`` on."""

    def __init__(self, cfg: dict[str, Any], device: torch.device) -> None:
        self.cfg = cfg
        self.net = nn.Linear(4, 1)
        self.other = nn.Linear(1, 1)
        self.d_start = int(cfg.get("d_start", 10**9))

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, "other": self.other}

    def ema_modules(self) -> list[str]:
        return ["net"]

    def param_groups(self) -> dict[str, Any]:
        groups: dict[str, Any] = {"g": self.net.parameters()}
        if self.d_start < 10**9:
            groups["d"] = self.other.parameters()
        return groups

    def train_dataset(self) -> Dataset[Any]:
        return ToyData(int(self.cfg.get("n", 32)))

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        pred = self.other(self.net(batch["x"])).squeeze(1)
        g = (pred - batch["y"]).pow(2).mean()
        out = {"g": g}
        if step >= self.d_start:
            out["d"] = (self.other.weight - 2.0).pow(2).sum()
        return out, {"mse": g.item()}

    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        return {"w0": self.net.weight[0, 0].item()}, {"flat": torch.full((3, 4, 4), 0.5)}

    def export(self, folder: str) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), Path(folder) / "net.pt")


def toy_config(run_dir: Path, **engine: Any) -> Any:
    base = dict(
        run_dir=str(run_dir),
        max_steps=6,
        batch_size=4,
        num_workers=0,
        log_every=1,
        val_every=0,
        ckpt_every=3,
        progress=False,
        tensorboard=False,
        device="cpu",
        lr_schedule="constant",
        optim={"default": {"type": "adam", "lr": 0.05}},
    )
    base.update(engine)
    task_cfg = {k: engine.pop(k) for k in list(engine) if k in ("d_start", "n")}
    for k in task_cfg:
        base.pop(k)
    return build_config({"task": "toy", "engine": base, "task_config": task_cfg})


def run_toy(run_dir: Path, resume: bool = False, **engine: Any) -> Trainer:
    return train(toy_config(run_dir, **engine), resume=resume, task_factory=ToyTask)


def final_state(run_dir: Path) -> dict[str, Any]:
    return load_checkpoint(list_checkpoints(run_dir / "checkpoints")[-1][1])


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested checkpoint contents."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def read_log(run_dir: Path, split: str = "train") -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    with open(run_dir / "log.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == split:
                out.setdefault(row["key"], []).append(float(row["value"]))
    return out


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    y, x = np.mgrid[0:48, 0:56].astype(np.float64)
    for i in range(4):
        img = np.stack([np.sin(0.15 * (c + 1) * x + i) + np.cos(0.2 * (i + 1) * y + c) for c in range(3)], -1)
        img = (img - img.min()) / (img.max() - img.min()) * 255
        Image.fromarray(img.astype(np.uint8)).save(folder / f"p{i}.png")
    return folder


# --- config --------------------------------------------------------------------------------------
def test_config_file_overrides_and_paths(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "task: vqgan\n"
        "engine: {max_steps: 10, optim: {g: {lr: 1e-4}}, run_dir: runs/x}\n"
        "task_config: {data: {root: ./imgs, crop_size: 32}, vgg: ./missing.pth, tokenizer: vqgan-small}\n"
    )
    cfg = load_config(
        cfg_file,
        [
            "max_steps=7",
            "optim.d.betas=[0.5,0.9]",
            "data.crop_size=64",
            "task_config.seed=3",
            "engine.seed=5",
            "model.ch_mult=[1,2]",
            "optim.g.lr=2e-4",
        ],
    )
    assert cfg.engine.max_steps == 7 and cfg.engine.seed == 5
    assert cfg.engine.optim == {"g": {"lr": 2e-4}, "d": {"betas": [0.5, 0.9]}}
    assert cfg.engine.run_dir == "runs/x"  # relative to the current directory, not the file
    tc = cfg.task_config
    assert tc["data"] == {"root": str((tmp_path / "imgs").resolve()), "crop_size": 64}
    assert tc["vgg"] == "./missing.pth" and tc["tokenizer"] == "vqgan-small"  # left as written
    assert tc["seed"] == 3 and tc["model"] == {"ch_mult": [1, 2]}
    assert isinstance(load_config(cfg_file).engine.optim["g"]["lr"], float)  # "1e-4" is a float


@pytest.mark.parametrize(
    "override, message",
    [
        ("engine.max_step=3", "did you mean 'max_steps'"),
        ("amp=fp8", "amp"),
        ("batch_size=0", "batch_size"),
        ("max_steps=2.5", "integer"),
        ("oops", "key=value"),
        ("ema_decay=1.5", "ema_decay"),
    ],
)
def test_config_errors(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_lr_schedule() -> None:
    cfg = toy_config(Path("unused"), warmup_steps=10, max_steps=110, min_lr_ratio=0.1, lr_schedule="cosine").engine
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.55)
    assert lr_factor(110, cfg) == pytest.approx(0.1)
    cfg.lr_schedule = "constant"
    assert lr_factor(60, cfg) == 1.0


def test_build_optimizer_per_name_settings() -> None:
    net = nn.Linear(3, 2)
    params = list(net.parameters())
    optim = {"default": {"lr": 1e-3, "betas": [0.5, 0.9]}, "g": {"lr": 2e-4, "weight_decay": 0.01}}
    g = build_optimizer("g", params, optim)
    assert isinstance(g, torch.optim.AdamW)
    assert [pg["weight_decay"] for pg in g.param_groups] == [0.01, 0.0]  # no decay on the bias
    assert g.param_groups[0]["lr"] == 2e-4 and g.param_groups[0]["betas"] == (0.5, 0.9)
    d = build_optimizer("d", params, optim)
    assert d.param_groups[0]["lr"] == 1e-3 and len(d.param_groups) == 1
    with pytest.raises(ConfigError, match="nesterov"):
        build_optimizer("g", params, {"g": {"nesterov": True}})
    sgd = build_optimizer("d", params, {"d": {"type": "sgd", "lr": 0.1, "momentum": 0.9}})
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9


def test_shard_sampler_splits_and_resumes() -> None:
    shards = [list(ShardSampler(10, r, 3, seed=1, epoch=0)) for r in range(3)]
    assert all(len(s) == 3 for s in shards)
    flat = sum(shards, [])
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))
    assert list(ShardSampler(10, 1, 3, seed=1, epoch=0, start=2)) == shards[1][2:]
    assert list(ShardSampler(10, 0, 3, seed=1, epoch=1)) != shards[0]  # new epoch, new order


# --- engine math ------------------------------------------------------------------------------
def test_gradient_accumulation_equals_a_big_batch(tmp_path: Path) -> None:
    sgd = {"default": {"type": "sgd", "lr": 0.05, "momentum": 0.5}}  # unlike Adam, sensitive to the loss scale
    a = run_toy(tmp_path / "a", batch_size=4, grad_accum=2, max_steps=4, optim=sgd)
    b = run_toy(tmp_path / "b", batch_size=8, grad_accum=1, max_steps=4, optim=sgd)
    wa, wb = a.modules["net"].weight, b.modules["net"].weight
    assert torch.allclose(wa, wb, atol=1e-6)
    c = run_toy(tmp_path / "c", batch_size=4, grad_accum=1, max_steps=4, optim=sgd)
    assert not torch.allclose(wa, c.modules["net"].weight, atol=1e-4)  # the comparison can fail


def test_bf16_autocast_trains_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """amp=bf16 runs the losses under CPU autocast (weights and optimizer stay float32);
    amp=fp16 is CUDA only and ignored on the CPU."""
    seen: list[torch.dtype] = []
    losses = ToyTask.losses

    def spy(self: ToyTask, batch: dict[str, torch.Tensor], step: int) -> Any:
        seen.append(self.net(batch["x"]).dtype)
        return losses(self, batch, step)

    monkeypatch.setattr(ToyTask, "losses", spy)
    bf16 = run_toy(tmp_path / "bf16", amp="bf16", max_steps=3)
    assert bf16.amp_dtype == torch.bfloat16 and seen == [torch.bfloat16] * 3
    assert bf16.modules["net"].weight.dtype == torch.float32
    plain = run_toy(tmp_path / "fp32", max_steps=3)
    assert not torch.equal(bf16.modules["net"].weight, plain.modules["net"].weight)
    assert torch.allclose(bf16.modules["net"].weight, plain.modules["net"].weight, atol=0.05)
    seen.clear()
    assert run_toy(tmp_path / "fp16", amp="fp16", max_steps=1).amp_dtype is None and seen == [torch.float32]


def test_each_loss_trains_only_its_own_optimizer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    start = ToyTask({}, torch.device("cpu")).other.weight.detach().clone()
    early = run_toy(tmp_path / "early", d_start=3, max_steps=3)
    # 'g' flows through `other`, but only the 'd' loss (from step 3) may change it
    assert torch.equal(early.modules["other"].weight.detach(), start)
    assert not torch.equal(early.modules["net"].weight.detach(), ToyTask({}, torch.device("cpu")).net.weight)
    late = run_toy(tmp_path / "late", d_start=3, max_steps=5)
    assert not torch.equal(late.modules["other"].weight.detach(), start)


def test_ema_weights_are_validated_and_exported(tmp_path: Path) -> None:
    t = run_toy(tmp_path / "ema", ema_decay=0.5, ema_warmup=False, max_steps=4, val_every=2)
    state = final_state(tmp_path / "ema")
    shadow = state["ema"]["shadow"]["net"]["weight"]
    live = state["modules"]["net"]["weight"]
    assert not torch.equal(shadow, live)
    exported = torch.load(tmp_path / "ema" / "export" / "net.pt", weights_only=True)
    assert torch.equal(exported["weight"], shadow)
    assert torch.equal(t.modules["net"].weight.detach(), live)  # live weights restored after the swap
    assert read_log(tmp_path / "ema", "val")["w0"][-1] == pytest.approx(shadow[0, 0].item())
    assert (tmp_path / "ema" / "val" / "step_00000002_flat.png").is_file()


# --- checkpoints ------------------------------------------------------------------------------------
def test_existing_run_needs_resume_and_bad_checkpoint_is_skipped(tmp_path: Path) -> None:
    run_toy(tmp_path / "ref", max_steps=6, ckpt_every=2, keep_checkpoints=0)
    ref = final_state(tmp_path / "ref")
    run_toy(tmp_path / "r", max_steps=4, ckpt_every=2, keep_checkpoints=0)
    with pytest.raises(TrainingError, match="--resume"):
        run_toy(tmp_path / "r", max_steps=6, ckpt_every=2)
    # damage the newest checkpoint: resume falls back to the one before (step 2)
    newest = list_checkpoints(tmp_path / "r" / "checkpoints")[-1][1]
    newest.write_bytes(newest.read_bytes()[:200])
    (tmp_path / "r" / "checkpoints" / ".step_00000006.pt.x.tmp").write_bytes(b"half")  # killed mid-write
    t = run_toy(tmp_path / "r", resume=True, max_steps=6, ckpt_every=2, keep_checkpoints=0)
    assert t.step == 6
    assert_same(final_state(tmp_path / "r")["modules"], ref["modules"])
    assert not (tmp_path / "r" / "checkpoints" / ".step_00000006.pt.x.tmp").exists()
    steps = read_log(tmp_path / "r")["mse"]
    assert len(steps) == 6  # rows after the resumed step were dropped, then logged again


def test_resume_keeps_optimizer_moments_but_takes_new_hyperparameters(tmp_path: Path) -> None:
    run_toy(tmp_path / "r", max_steps=2, ckpt_every=2)
    t = run_toy(tmp_path / "r", resume=True, max_steps=3, optim={"default": {"type": "adam", "lr": 0.01}})
    opt = t.optimizers["g"]
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["base_lr"] == 0.01
    p = opt.param_groups[0]["params"][0]
    assert int(opt.state[p]["step"]) == 3  # two steps before the restart, one after


KILL_SCRIPT = """
import os, signal, sys
from tokensr.train import engine
from tokensr.train.config import load_config
from tokensr.train.tasks import build_task
cfg = load_config(sys.argv[1], sys.argv[3:])
kill_at = int(sys.argv[2])
def factory(c, d):
    task = build_task(cfg.task, c, d)
    losses = task.losses
    def killing(batch, step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return losses(batch, step)
    task.losses = killing
    return task
engine.train(cfg, task_factory=factory)
"""


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path, photos: Path) -> None:
    common = [
        f"data.root={photos}",
        "max_steps=8",
        "ckpt_every=2",
        "keep_checkpoints=0",
        "val_every=0",
        "losses.disc_start=3",
        "ema_decay=0.9",
        "threads=1",
        "progress=false",
    ]
    train(load_config(TINY, common + [f"run_dir={tmp_path / 'full'}"]))
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(TINY), "5", *common, f"run_dir={killed}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [s for s, _ in list_checkpoints(killed / "checkpoints")] == [2, 4]
    t = train(load_config(TINY, common + [f"run_dir={killed}"]), resume=True)
    assert t.step == 8
    a, b = final_state(tmp_path / "full"), final_state(killed)
    for key in ("modules", "optimizers", "ema", "data", "step"):
        assert_same(a[key], b[key], key)
    assert_same(a["rng"][0]["torch"], b["rng"][0]["torch"])


# --- the VQGAN task through the engine ---------------------------------------------------------------
def test_tiny_vqgan_overfits_one_image(tmp_path: Path, photos: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "p0.png").write_bytes((photos / "p0.png").read_bytes())
    cfg = load_config(
        TINY,
        [
            f"data.root={one}",
            f"run_dir={tmp_path / 'fit'}",
            "max_steps=40",
            "log_every=5",
            "data.length=8",
            "losses.gan=0",
            "optim.g.lr=3e-3",
            "val_every=20",
            "ema_decay=0",
            "progress=false",
        ],
    )
    train(cfg)
    l1 = read_log(tmp_path / "fit")["l1"]
    assert len(l1) == 8 and l1[-1] < 0.6 * l1[0], l1
    val = read_log(tmp_path / "fit", "val")["psnr"]
    assert val[-1] > val[0]


def test_cli_train_end_to_end(tmp_path: Path, photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    rc = cli_main(["train", str(TINY), "max_steps=3", f"run_dir={run}", f"data.root={photos}"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "3/3" in err and "trained to step 3" in err  # progress bar and summary
    model = VQGAN.from_pretrained(run / "export")
    assert model.config.codebook_size == 16
    assert (run / "config.yaml").is_file() and list((run / "val").glob("step_00000003_*.png"))
    assert "loss_g" in read_log(run)
    # a new run continues from the exported weights (strict init)
    rc = cli_main(
        [
            "train",
            str(TINY),
            "max_steps=1",
            f"run_dir={tmp_path / 'next'}",
            f"data.root={photos}",
            f"init={run / 'export'}",
            "progress=false",
        ]
    )
    assert rc == 0, capsys.readouterr().err


def test_cli_missing_data_folder_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["train", str(TINY), f"run_dir={tmp_path / 'r'}", f"data.root={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("tokensr: error: data folder not found") and "Traceback" not in "".join(err)
