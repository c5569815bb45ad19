"""What every checkpoint converter shares: reading a foreign checkpoint without running pickle
code, finding its state dict, loading it strictly with a one-line report of what does not fit,
and the :class:`Family` record that names a model family, its source and its licence.

A family module (``tokensr/convert/<family>.py``) defines ``FAMILIES: list[Family]``; each
``Family`` says whether a state dict is one of its checkpoints (``matches``) and turns the
checkpoints it is given into a tokensr model with ``save_pretrained`` (``convert``).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokensr.errors import TokensrError

StateDict = dict[str, torch.Tensor]

# Where training frameworks put the weights inside a checkpoint file, most specific first
# (BasicSR: params_ema / params; Lightning and taming: state_dict; others: model, net, ...).
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net", "generator", "module")


class ConversionError(TokensrError):
    """A checkpoint that cannot be read or does not map onto a tokensr model."""


@dataclass(frozen=True)
class Family:
    """One convertible model family (a released checkpoint layout).

    Attributes:
        name: the ``--from`` value, e.g. ``realsrt`` or ``femasr-x4``.
        title: the paper and authors, for the model card.
        source: where the released file comes from (URL of the release).
        licence: the licence of the released weights.
        matches: whether a state dict has this family's keys.
        convert: the state dicts of the given files (in command-line order) -> a tokensr model
            (any model with ``save_pretrained``) with the converted weights loaded.
        files: what files the family needs, for help and error messages.
    """

    name: str
    title: str
    source: str
    licence: str
    matches: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[Sequence[StateDict]], nn.Module]
    files: str = "one checkpoint"


def _describe(obj: Any, depth: int = 0) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)
        head = ", ".join(str(k) for k in keys[:6]) + (", ..." if len(keys) > 6 else "")
        return f"a dict of {len(keys)} entries ({head})"
    return type(obj).__name__


def find_state_dict(obj: Any) -> StateDict:
    """The tensor dict inside a loaded checkpoint: the object itself when all its values are
    tensors, else the first of :data:`WRAPPER_KEYS` that holds one (searched recursively)."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        for key in WRAPPER_KEYS:
            if key in obj:
                try:
                    return find_state_dict(obj[key])
                except ConversionError:
                    continue
    raise ConversionError(f"no state dict found: the file holds {_describe(obj)}")


def read_checkpoint(path: str | Path) -> StateDict:
    """A checkpoint's state dict, read with ``torch.load(weights_only=True)`` (no pickle code
    runs) or from safetensors. A ``module.`` prefix (DataParallel/DDP) is removed."""
    file = Path(path)
    if not file.is_file():
        raise ConversionError(f"no such file: {path}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(file))
        else:
            obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a weights-only load refused a Python object, or garbage
        if "Unsupported global" not in str(e):
            raise ConversionError(
                f"{path} is not a PyTorch checkpoint or safetensors file ({file.stat().st_size} bytes, "
                f"starts with {file.read_bytes()[:8]!r})"
            ) from e
        glob = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({glob.group(1)})" if glob else ""
        raise ConversionError(
            f"{path} holds Python objects{what} that a weights-only load refuses to run; "
            "save its state_dict alone, or convert a file that holds only tensors"
        ) from e
    except Exception as e:  # torch raises many kinds for a file that is not a checkpoint
        raise ConversionError(
            f"{path} is not a PyTorch checkpoint or safetensors file ({file.stat().st_size} bytes, "
            f"starts with {file.read_bytes()[:8]!r})"
        ) from e
    state = find_state_dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def some_keys(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``model`` with every key and shape matching, or raise a
    :class:`ConversionError` that names the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({some_keys(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({some_keys(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({some_keys(shapes, 2)})")
    if problems:
        raise ConversionError(f"{what} does not map: " + "; ".join(problems))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def list_indices(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted list indices ``i`` of the keys ``{prefix}{i}.*`` (the entries of a ModuleList or
    Sequential in a state dict)."""
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def learned_codebook_buffers(codebook: torch.Tensor, prefix: str = "quantizer.") -> StateDict:
    """The bookkeeping buffers of tokensr's quantizer for a codebook learned by gradient (the
    authors' files have none): no EMA counts, sums equal to the codes, initialised. They only
    matter if the converted model is trained on with an EMA codebook."""
    return {
        f"{prefix}cluster_size": torch.zeros(codebook.shape[0], dtype=codebook.dtype),
        f"{prefix}embed_sum": codebook.detach().clone(),
        f"{prefix}initialized": torch.tensor(True),
    }


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """The entries under ``prefix`` (e.g. ``"quantize."``), with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


__all__ = [
    "ConversionError",
    "Family",
    "StateDict",
    "WRAPPER_KEYS",
    "find_state_dict",
    "learned_codebook_buffers",
    "list_indices",
    "load_strict",
    "read_checkpoint",
    "some_keys",
    "strip_prefix",
]
