"""The training engine shared by every method and stage.

``Trainer(config).run()`` (or ``tokensr train CONFIG``) builds the task named in the config
and runs its optimisation loop with everything generic handled here: device choice,
torchrun data parallelism (:mod:`tokensr.train.distributed`), AMP (bf16, or fp16 with a
grad scaler) on CUDA, gradient accumulation, one optimizer per task parameter group with
a cosine (or constant) learning rate after a linear warm-up, optional gradient clipping,
EMA of the trained weights (:mod:`tokensr.train.ema`), atomic checkpoints with exact resume
(:mod:`tokensr.train.checkpoint`), CSV/TensorBoard logs and validation images
(:mod:`tokensr.train.logs`), a progress bar, and the export of the trained model.

One optimizer step:

1. for each of ``grad_accum`` micro-batches: ``task.losses(batch, step)`` under autocast,
   then each returned loss (divided by ``grad_accum``) is back-propagated into *its own*
   optimizer's parameters only (``torch.autograd.backward(..., inputs=params)``), so a
   generator loss that flows through the discriminator leaves the discriminator's
   gradients untouched;
2. gradients are averaged across ranks, unscaled (fp16), clipped, and every optimizer that
   received a loss steps (a loss left out of the dict, e.g. the discriminator's before it
   starts, means that optimizer does not step);
3. buffers are broadcast from rank 0, the EMA is updated, the step counter advances;
4. logging, validation (rank 0, EMA weights, eval mode, no grad), checkpoint + export.

``step`` passed to the task is the number of optimizer steps completed before this one.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokensr.errors import OptionError, TokensrError
from tokensr.inference.precision import native_bf16
from tokensr.pretrained import atomic_write_bytes
from tokensr.train import checkpoint as ckpt
from tokensr.train import distributed as ddp
from tokensr.train.config import ConfigError, EngineConfig, TrainConfig
from tokensr.train.data import DataStream
from tokensr.train.ema import WeightEMA
from tokensr.train.logs import RunLogger
from tokensr.train.tasks import build_task

log = logging.getLogger(__name__)

OPTIM_DEFAULTS: dict[str, Any] = {"type": "adamw", "lr": 1e-4, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.0}
OPTIM_KEYS = set(OPTIM_DEFAULTS) | {"decay_1d", "momentum"}

TaskFactory = Callable[[dict[str, Any], torch.device], Any]


class TrainingError(TokensrError):
    """Training cannot go on (non-finite loss, ranks out of sync, existing run, ...)."""


def pick_device(name: str, local_rank: int) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``cuda`` means this
    process's GPU under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"device '{name}' asked for, but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    return dev


def lr_factor(step: int, cfg: EngineConfig) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine decay to
    ``min_lr_ratio`` at ``max_steps`` (or constant)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    name: str, params: list[nn.Parameter], optim_cfg: dict[str, dict[str, Any]]
) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD for one parameter group from ``engine.optim[name]`` over
    ``engine.optim.default`` (keys: type, lr, betas, eps, weight_decay, momentum (SGD), decay_1d).

    With weight decay, 1-D parameters (biases, norm scales) get none unless ``decay_1d: true``."""
    settings = {**OPTIM_DEFAULTS, **(optim_cfg.get("default") or {}), **(optim_cfg.get(name) or {})}
    unknown = set(settings) - OPTIM_KEYS
    if unknown:
        raise ConfigError(
            f"engine.optim.{name}: unknown setting '{sorted(unknown)[0]}' (use {', '.join(sorted(OPTIM_KEYS))})"
        )
    kind = str(settings["type"]).lower()
    if kind not in ("adam", "adamw", "sgd"):
        raise ConfigError(f"engine.optim.{name}.type must be adam, adamw or sgd, got '{kind}'")
    try:
        lr = float(settings["lr"])
        betas = tuple(float(b) for b in settings["betas"])
        eps = float(settings["eps"])
        wd = float(settings["weight_decay"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"engine.optim.{name}: {e}") from e
    if len(betas) != 2:
        raise ConfigError(f"engine.optim.{name}.betas needs two numbers")
    if wd > 0 and not settings.get("decay_1d", False):
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": wd},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [{"params": params, "weight_decay": wd}]
    for g in groups:
        g["base_lr"] = lr
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(settings.get("momentum", 0.0)))  # type: ignore[arg-type]
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=betas, eps=eps)  # type: ignore[arg-type]


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class Trainer:
    """Runs one training config. ``task_factory`` replaces the task table (tests, notebooks)."""

    def __init__(self, config: TrainConfig, resume: bool = False, task_factory: TaskFactory | None = None) -> None:
        self.config = config
        self.cfg = config.engine
        self.resume = resume
        self.task_factory = task_factory
        self.run_dir = Path(self.cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.export_dir = Path(self.cfg.export_dir) if self.cfg.export_dir else self.run_dir / "export"
        self.step = 0
        self.last_val: dict[str, float] = {}

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        _, _, local_rank = ddp.env_world()
        self.device = pick_device(cfg.device, local_rank)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.dist = ddp.init(self.device, cfg.ddp_timeout_s)
        ckpt.seed_everything(cfg.seed)  # identical initialisation on every rank
        factory = self.task_factory or (lambda c, d: build_task(self.config.task, c, d))
        self.task = factory(copy.deepcopy(self.config.task_config), self.device)
        self.modules: dict[str, nn.Module] = dict(self.task.modules())
        for m in self.modules.values():
            m.to(self.device)
        raw_groups = self.task.param_groups()
        self.groups: dict[str, list[nn.Parameter]] = {}
        for name, ps in raw_groups.items():
            params = [p for p in ps if p.requires_grad]
            if not params:
                raise TrainingError(f"optimizer '{name}' has no trainable parameters")
            self.groups[name] = params
        if not self.groups:
            raise TrainingError("the task has no trainable parameters")
        self.trainable = {id(p) for ps in self.groups.values() for p in ps}
        owned = {id(p) for m in self.modules.values() for p in m.parameters()}
        orphans = sum(1 for ps in self.groups.values() for p in ps if id(p) not in owned)
        if orphans:
            raise TrainingError(
                f"{orphans} trained parameters belong to no module in task.modules() (they would not be checkpointed)"
            )
        for extra in set(cfg.optim) - set(self.groups) - {"default"}:
            log.warning(
                "engine.optim.%s is set but the task has no optimizer '%s' (it has %s)",
                extra,
                extra,
                ", ".join(self.groups),
            )
        ddp.broadcast_modules(self.modules, self.dist)
        self._train_modes()
        self.optimizers = {n: build_optimizer(n, ps, cfg.optim) for n, ps in self.groups.items()}

        self.amp_dtype: torch.dtype | None = None
        if cfg.amp == "fp16" and self.device.type != "cuda":
            log.warning("engine.amp=fp16 ignored: float16 autocast is used on CUDA only (bf16 runs on CPU too)")
        elif cfg.amp != "none":
            # bf16 on a CPU: its convolutions and matmuls take about a quarter of the time where
            # the CPU has native bfloat16 (AVX512-BF16, AMX), and longer where it is emulated
            if cfg.amp == "bf16" and not native_bf16(self.device):
                log.warning("engine.amp=bf16 on %s, which has no native bfloat16: expect it slower", self.device)
            self.amp_dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        self.ema: WeightEMA | None = None
        if cfg.ema_decay > 0:
            names = list(getattr(self.task, "ema_modules", lambda: list(self.modules))())
            unknown = [n for n in names if n not in self.modules]
            if unknown:
                raise TrainingError(f"task.ema_modules() names '{unknown[0]}', which is not in task.modules()")
            self.ema = WeightEMA({n: self.modules[n] for n in names}, self.trainable, cfg.ema_decay, cfg.ema_warmup)

        dataset = self.task.train_dataset()
        self.stream = DataStream(
            dataset,
            cfg.batch_size,
            self.dist.rank,
            self.dist.world_size,
            cfg.seed,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.logger = RunLogger(self.run_dir, enabled=self.dist.is_main, tensorboard=cfg.tensorboard)
        # per-rank randomness from here on (dropout, masks, quantizer restarts)
        ckpt.seed_everything(cfg.seed + 1_000_003 * self.dist.rank + 1)
        self._maybe_resume()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            text = self.config.to_yaml()
            atomic_write_bytes(self.run_dir / "config.yaml", lambda p: Path(p).write_text(text, encoding="utf-8"))
            self.logger.truncate_after(self.step)

    def _train_modes(self) -> None:
        """Modules with trained parameters in train mode, frozen ones in eval mode."""
        for m in self.modules.values():
            m.train(any(id(p) in self.trainable for p in m.parameters()))

    def _maybe_resume(self) -> None:
        existing = ckpt.list_checkpoints(self.ckpt_dir)
        if not self.resume:
            if existing:
                raise TrainingError(
                    f"{self.run_dir} already has checkpoints: pass --resume to continue it, or choose another run_dir"
                )
            return
        if self.dist.is_main:
            ckpt.remove_temp_files(self.ckpt_dir)
        found = ckpt.load_latest(self.ckpt_dir)
        if found is None:
            log.info("no checkpoint in %s: starting from scratch", self.ckpt_dir)
            return
        path, state = found
        self._load_state(state)
        log.info("resumed from %s (step %d)", path, self.step)

    # ------------------------------------------------------------------ state
    def _state(self, rngs: list[object]) -> dict[str, Any]:
        return {
            "task": self.config.task,
            "world_size": self.dist.world_size,
            "modules": {n: m.state_dict() for n, m in self.modules.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "data": self.stream.state(),
            "rng": rngs,
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        mods = state.get("modules", {})
        for n, m in self.modules.items():
            if n not in mods:
                raise TrainingError(f"the checkpoint has no module '{n}' (was it written by another task?)")
            try:
                m.load_state_dict(mods[n])
            except RuntimeError as e:
                raise TrainingError(
                    f"checkpoint module '{n}' does not match the config: {str(e).splitlines()[0]}"
                ) from e
        for n, o in self.optimizers.items():
            if n in state.get("optimizers", {}):
                # keep the moments, but take lr / betas / weight decay from the current config
                fresh = [{k: v for k, v in g.items() if k != "params"} for g in o.param_groups]
                try:
                    o.load_state_dict(state["optimizers"][n])
                except ValueError as e:
                    raise TrainingError(f"checkpoint optimizer '{n}' does not match the task's parameters: {e}") from e
                for g, f in zip(o.param_groups, fresh, strict=False):
                    g.update(f)
            else:
                log.warning("the checkpoint has no state for optimizer '%s': it starts fresh", n)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema"):
                self.ema.load_state_dict(state["ema"])
            else:
                log.warning("the checkpoint has no EMA weights: the EMA restarts from the current weights")
        self.step = int(state["step"])
        rngs = state.get("rng") or []
        if int(state.get("world_size", 1)) == self.dist.world_size and len(rngs) == self.dist.world_size:
            self.stream.load_state(state["data"])
            ckpt.set_rng_state(rngs[self.dist.rank])
        else:
            log.warning(
                "the checkpoint was written by %s processes, this run has %d: continuing with the next "
                "data epoch and fresh random streams (not an exact resume)",
                state.get("world_size"),
                self.dist.world_size,
            )
            data = state["data"]
            self.stream.load_state({"epoch": int(data["epoch"]) + 1, "batch_in_epoch": 0})
            ckpt.seed_everything(self.cfg.seed + 1_000_003 * self.dist.rank + self.step)

    # ------------------------------------------------------------------ loop pieces
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _set_lr(self) -> dict[str, float]:
        f = lr_factor(self.step, self.cfg)
        lrs = {}
        for n, opt in self.optimizers.items():
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * f
            lrs[n] = opt.param_groups[0]["lr"]
        return lrs

    def _micro_step(self) -> tuple[set[str], dict[str, float]]:
        batch = _to_device(self.stream.next(), self.device)
        with self._autocast():
            losses, logs = self.task.losses(batch, self.step)
        unknown = set(losses) - set(self.groups)
        if unknown:
            raise TrainingError(
                f"task.losses() returned '{sorted(unknown)[0]}', "
                f"which is not an optimizer name ({', '.join(self.groups)})"
            )
        names = [n for n in self.groups if n in losses and losses[n].requires_grad]
        scalars = {k: float(v) for k, v in logs.items()}
        for i, n in enumerate(names):
            loss = losses[n].float() / self.cfg.grad_accum
            value = float(loss.detach()) * self.cfg.grad_accum
            if not math.isfinite(value):
                raise TrainingError(
                    f"loss '{n}' is {value} at step {self.step}: training diverged (lower the learning rate, "
                    "add warm-up or grad_clip, or use bf16 instead of fp16)"
                )
            scalars[f"loss_{n}"] = value
            scaled = self.scaler.scale(loss) if self.scaler is not None else loss
            torch.autograd.backward(scaled, inputs=self.groups[n], retain_graph=i < len(names) - 1)
        return set(names), scalars

    def _optimizer_step(self, stepped: set[str]) -> dict[str, float]:
        extra: dict[str, float] = {}
        for n in self.groups:
            if n not in stepped:
                continue
            params = self.groups[n]
            opt = self.optimizers[n]
            ddp.average_gradients(params, self.dist)
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            if self.cfg.grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
                extra[f"grad_norm_{n}"] = float(norm)
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()
            extra["amp_scale"] = float(self.scaler.get_scale())
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        ddp.broadcast_modules(self.modules, self.dist, buffers_only=True)
        if self.ema is not None:
            self.ema.update()
        return extra

    @contextlib.contextmanager
    def _eval_context(self) -> Iterator[None]:
        """EMA weights (when on), eval mode and no gradients, restored afterwards."""
        modes = {n: m.training for n, m in self.modules.items()}
        swap = self.ema.swap() if self.ema is not None else contextlib.nullcontext()
        try:
            with swap, torch.no_grad():
                for m in self.modules.values():
                    m.eval()
                yield
        finally:
            for n, m in self.modules.items():
                m.train(modes[n])

    def validate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.dist.is_main:
            with self._eval_context():
                metrics, images = self.task.validate(self.step)
            metrics = {k: float(v) for k, v in metrics.items()}
            self.logger.scalars(self.step, metrics, split="val")
            self.logger.images(self.step, images)
            if metrics:
                log.info("step %d validation: %s", self.step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        ddp.barrier(self.dist)
        self.last_val = metrics
        return metrics

    def export(self) -> None:
        if self.dist.is_main:
            with self._eval_context():
                self.task.export(str(self.export_dir))
        ddp.barrier(self.dist)

    def save(self) -> None:
        rngs = ddp.all_gather_objects(ckpt.rng_state(), self.dist)
        if self.cfg.check_sync and self.dist.enabled:
            bad = ddp.check_in_sync(self.modules, self.dist)
            if bad:
                raise TrainingError(f"ranks out of sync at step {self.step}: {len(bad)} tensors differ, e.g. {bad[0]}")
            self.logger.scalars(
                self.step, {"ranks_in_sync": 1.0, "world_size": float(self.dist.world_size)}, split="sync"
            )
        if self.dist.is_main:
            path = ckpt.save_checkpoint(self.ckpt_dir, self.step, self._state(rngs), keep=self.cfg.keep_checkpoints)
            log.debug("checkpoint %s", path)
        ddp.barrier(self.dist)
        self.export()

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, float]:
        """Train to ``max_steps``; returns the last validation metrics."""
        try:
            self._setup()
            self._loop()
            return self.last_val
        finally:
            if hasattr(self, "stream"):
                self.stream.close()
            if hasattr(self, "logger"):
                self.logger.close()
            if hasattr(self, "dist"):
                ddp.shutdown(self.dist)

    def _loop(self) -> None:
        cfg = self.cfg
        if self.step >= cfg.max_steps:
            log.info("already at step %d of %d: nothing to train", self.step, cfg.max_steps)
            return
        bar = None
        redirect: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self.dist.is_main and cfg.progress:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            bar = tqdm(
                total=cfg.max_steps,
                initial=self.step,
                desc=self.config.task,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=1.0,
                unit="step",
            )
            redirect = logging_redirect_tqdm()  # log lines print above the bar
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        t0 = time.time()
        steps_since = 0
        validated_at = -1
        try:
            with redirect:
                while self.step < cfg.max_steps:
                    lrs = self._set_lr()
                    stepped: set[str] = set()
                    for _ in range(cfg.grad_accum):
                        names, scalars = self._micro_step()
                        stepped |= names
                        for k, v in scalars.items():
                            sums[k] = sums.get(k, 0.0) + v
                            counts[k] = counts.get(k, 0) + 1
                    for k, v in self._optimizer_step(stepped).items():
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                    self.step += 1
                    steps_since += 1
                    if bar is not None:
                        bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                        dt = time.time() - t0
                        row = {k: sums[k] / counts[k] for k in sums}
                        row.update({f"lr_{n}": v for n, v in lrs.items()})
                        row["sec_per_step"] = dt / max(1, steps_since)
                        row["samples_per_sec"] = (
                            steps_since * cfg.batch_size * cfg.grad_accum * self.dist.world_size / max(dt, 1e-9)
                        )
                        self.logger.scalars(self.step, row)
                        if bar is not None:
                            shown = {k: f"{v:.4g}" for k, v in row.items() if k.startswith("loss_")}
                            bar.set_postfix(shown, refresh=False)
                        sums, counts, steps_since, t0 = {}, {}, 0, time.time()
                    if cfg.val_every and self.step % cfg.val_every == 0:
                        self.validate()
                        validated_at = self.step
                    if self.step % cfg.ckpt_every == 0 or self.step == cfg.max_steps:
                        if self.step == cfg.max_steps and validated_at != self.step:
                            self.validate()
                            validated_at = self.step
                        self.save()
        finally:
            if bar is not None:
                bar.close()


def train(config: TrainConfig, resume: bool = False, task_factory: TaskFactory | None = None) -> Trainer:
    """Run a training config to the end; returns the finished :class:`Trainer`."""
    trainer = Trainer(config, resume=resume, task_factory=task_factory)
    trainer.run()
    return trainer


__all__ = ["Trainer", "TrainingError", "build_optimizer", "lr_factor", "pick_device", "train"]
