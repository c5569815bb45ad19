"""Atomic training checkpoints and exact-resume state.

One file per checkpoint, ``run_dir/checkpoints/step_00001234.pt``, written to a temporary
name in the same folder and renamed over the final name (``os.replace``), so a run killed at
any moment (even by SIGKILL) leaves either the complete file or none. Loading uses
``torch.load(weights_only=True)``: the file holds only tensors and plain containers of
numbers/strings, and nothing is ever unpickled. A truncated or unreadable file is skipped
and the next older one is used.

A checkpoint holds every task module's state, the optimizers, the AMP grad scaler, the EMA
weights, the step, the data position (epoch and batches consumed in it) and the random
number generator states of every rank (torch CPU and CUDA, NumPy, Python).
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokensr.pretrained import atomic_write_bytes

log = logging.getLogger(__name__)

FORMAT = "tokensr-train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


# --- RNG states as tensors / plain values -------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's RNG states in a weights_only-loadable form."""
    # numpy's stubs type the no-argument call as the dict form; legacy=True (the default) gives
    # the (name, keys, pos, has_gauss, cached_gaussian) tuple of the global MT19937 generator
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    npd = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npd["keys"].numpy().astype(np.uint32),
            int(npd["pos"]),
            int(npd["has_gauss"]),
            float(npd["cached_gaussian"]),
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- files ----------------------------------------------------------------------------------------
def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoint files in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(folder: Path, step: int, state: dict[str, Any], keep: int = 0) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; prune to the ``keep`` newest."""
    path = folder / checkpoint_name(step)
    payload = {"format": FORMAT, "version": VERSION, "step": int(step), **state}
    atomic_write_bytes(path, lambda tmp: torch.save(payload, tmp))
    if keep > 0:
        for _, old in list_checkpoints(folder)[:-keep]:
            try:
                old.unlink()
            except OSError:  # another process pruned it first
                pass
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint (weights_only); raises on a damaged or foreign file."""
    data = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a tokensr training checkpoint")
    return data


def load_latest(folder: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``folder`` (damaged ones are skipped with a warning)."""
    for _step, path in reversed(list_checkpoints(folder)):
        try:
            return path, load_checkpoint(path, map_location)
        except Exception as e:  # truncated zip, foreign file, ...
            log.warning(
                "skipping unreadable checkpoint %s (%s)",
                path.name,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
            )
    return None


def remove_temp_files(folder: Path) -> None:
    """Delete temporary files left by a checkpoint write that was killed."""
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            try:
                p.unlink()
            except OSError:
                pass


__all__ = [
    "checkpoint_name",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest",
    "remove_temp_files",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
]
