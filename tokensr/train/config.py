"""Training configuration: a YAML file plus ``key=value`` command-line overrides.

A config file has three top-level keys::

    task: vqgan                 # a name in tokensr.train.tasks.TASKS, or "package.module:Class"
    engine: {...}               # EngineConfig fields (run_dir, max_steps, batch_size, optim, ...)
    task_config: {...}          # free-form, read by the task (model, data, losses, ...)

Overrides are dotted keys with YAML-typed values (``max_steps=3``, ``optim.g.lr=2e-4``,
``data.root=photos/``, ``model.ch_mult=[1,2,4]``). A key whose first part is an engine field
goes to ``engine``; ``task=NAME`` sets the task; anything else goes to ``task_config``. The
prefixes ``engine.`` and ``task_config.`` force the section.

Relative paths in the file (string values containing a ``/`` or starting with ``.``) are
resolved against the config file's folder when that path exists there; otherwise they stay as
written, i.e. relative to the current directory. Values given on the command line are never
rewritten. ``engine.run_dir`` is always relative to the current directory.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokensr.errors import OptionError


class ConfigError(OptionError):
    """A config file or override is malformed or names an unknown setting."""


@dataclass
class EngineConfig:
    """Settings of the generic training engine (everything not specific to a method)."""

    run_dir: str = "runs/train"  # checkpoints/, val/, export/, log.csv, config.yaml
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process and micro-step; global = batch_size * world * grad_accum
    grad_accum: int = 1  # micro-batches per optimizer step
    num_workers: int = 2  # DataLoader worker processes per rank
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torchrun: cuda:LOCAL_RANK)
    threads: int | None = None  # torch CPU threads per process (None: torch's default)
    amp: str = "none"  # none | bf16 (CPU and CUDA) | fp16 (CUDA only; uses a GradScaler)
    optim: dict[str, dict[str, Any]] = field(default_factory=dict)  # per optimizer name, plus "default"
    lr_schedule: str = "cosine"  # cosine | constant (both after the linear warm-up)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # final lr of the cosine, as a fraction of the base lr
    grad_clip: float | None = None  # max global grad norm per optimizer (None: off)
    ema_decay: float = 0.0  # EMA of trainable weights (0: off); used for validation and export
    ema_warmup: bool = True  # decay_t = min(decay, (1 + t) / (10 + t))
    log_every: int = 10
    val_every: int = 500  # 0: only at the end
    ckpt_every: int = 500
    keep_checkpoints: int = 3  # newest checkpoints kept (0: all)
    export_dir: str | None = None  # default: run_dir/export (written at each checkpoint and at the end)
    tensorboard: str | bool = "auto"  # auto: when the tensorboard package is installed
    progress: bool = True  # tqdm progress bar on rank 0
    check_sync: bool = True  # with several ranks: verify at each checkpoint that all hold identical states
    ddp_timeout_s: int = 1800

    def validate(self) -> None:
        positive = ("max_steps", "batch_size", "grad_accum", "log_every", "ckpt_every")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"engine.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0 or self.val_every < 0 or self.warmup_steps < 0 or self.keep_checkpoints < 0:
            raise ConfigError("num_workers, val_every, warmup_steps and keep_checkpoints must be >= 0")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"engine.amp must be none, bf16 or fp16, got '{self.amp}'")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"engine.lr_schedule must be cosine or constant, got '{self.lr_schedule}'")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"engine.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not isinstance(self.optim, dict) or not all(isinstance(v, dict) for v in self.optim.values()):
            raise ConfigError("engine.optim must map optimizer names to settings, e.g. {g: {lr: 1e-4}}")


ENGINE_FIELDS = {f.name: f for f in dataclasses.fields(EngineConfig)}


@dataclass
class TrainConfig:
    """A whole training run: task name, engine settings, task settings."""

    task: str
    engine: EngineConfig
    task_config: dict[str, Any]
    source: str | None = None  # the YAML file it came from

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "engine": dataclasses.asdict(self.engine), "task_config": self.task_config}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# --- YAML with sane floats --------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A command-line value typed like YAML (``3`` -> int, ``1e-4`` -> float, ``[1,2]`` -> list)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return text


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping with task, engine and task_config")
    return data


# --- overrides ------------------------------------------------------------------------------------
def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """``tree[a][b][c] = value`` for ``key = "a.b.c"``, creating missing dicts."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"bad override key '{key}'")
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set '{key}': '{'.'.join(parts[: i + 1])}' is not a mapping")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw config dict with ``key=value`` overrides applied."""
    data = copy.deepcopy(data)
    data.setdefault("engine", {})
    data.setdefault("task_config", {})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        value = parse_value(text)
        head = key.split(".", 1)[0]
        if key == "task":
            data["task"] = value
        elif head in ("engine", "task_config") and "." in key:
            set_dotted(data[head] if data[head] is not None else data.setdefault(head, {}), key.split(".", 1)[1], value)
        elif head in ENGINE_FIELDS:
            set_dotted(data["engine"], key, value)
        else:
            set_dotted(data["task_config"], key, value)
    return data


# --- paths ----------------------------------------------------------------------------------------
def _looks_like_path(value: str) -> bool:
    return ("/" in value or value.startswith(".")) and "://" not in value and not Path(value).is_absolute()


def resolve_paths(tree: Any, base: Path) -> Any:
    """Copy of ``tree`` with relative path strings that exist under ``base`` made absolute."""
    if isinstance(tree, dict):
        return {k: resolve_paths(v, base) for k, v in tree.items()}
    if isinstance(tree, list):
        return [resolve_paths(v, base) for v in tree]
    if isinstance(tree, str) and _looks_like_path(tree):
        candidate = base / tree
        if candidate.exists():
            return str(candidate.resolve())
    return tree


# --- building --------------------------------------------------------------------------------------
def _coerce(name: str, value: Any) -> Any:
    """Check/convert one engine value against the field's declared type."""
    default = ENGINE_FIELDS[name].default
    if name == "optim":
        return value or {}
    if name == "tensorboard":
        return value
    if value is None:
        if name in ("threads", "grad_clip", "export_dir"):
            return None
        raise ConfigError(f"engine.{name} cannot be empty")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"engine.{name} must be true or false, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool) or name == "threads":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"engine.{name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float) or name == "grad_clip":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"engine.{name} must be a number, got {value!r}") from None
    return str(value)


def engine_config(raw: dict[str, Any] | None) -> EngineConfig:
    raw = dict(raw or {})
    unknown = [k for k in raw if k not in ENGINE_FIELDS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(ENGINE_FIELDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown engine setting '{unknown[0]}'{hint}")
    cfg = EngineConfig(**{k: _coerce(k, v) for k, v in raw.items()})
    cfg.validate()
    return cfg


def build_config(data: dict[str, Any], source: str | None = None) -> TrainConfig:
    unknown = [k for k in data if k not in ("task", "engine", "task_config")]
    if unknown:
        raise ConfigError(f"unknown top-level key '{unknown[0]}' (expected task, engine, task_config)")
    task = data.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigError("the config needs 'task: NAME'")
    task_cfg = data.get("task_config") or {}
    if not isinstance(task_cfg, dict):
        raise ConfigError("task_config must be a mapping")
    return TrainConfig(task, engine_config(data.get("engine")), task_cfg, source)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, resolve its relative paths, apply command-line overrides."""
    p = Path(path)
    raw = load_yaml(p)
    data = resolve_paths(raw, p.resolve().parent)
    # run_dir stays relative to the current directory whatever the file says
    raw_engine = raw.get("engine")
    if isinstance(raw_engine, dict) and "run_dir" in raw_engine:
        data["engine"]["run_dir"] = raw_engine["run_dir"]
    return build_config(apply_overrides(data, list(overrides or [])), str(p))


__all__ = [
    "ConfigError",
    "EngineConfig",
    "TrainConfig",
    "apply_overrides",
    "build_config",
    "engine_config",
    "load_config",
    "parse_value",
]
