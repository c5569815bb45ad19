"""VGG19 feature extractor for perceptual losses, loaded from a local torchvision state dict.

tokensr never downloads weights. The perceptual loss needs the ImageNet VGG19 weights in
torchvision's format (a state dict with ``features.N.weight`` / ``features.N.bias`` keys,
e.g. torchvision's own ``vgg19-dcbf9e4f.pth``). :func:`find_vgg19` looks for it in, in order:
an explicit path, the ``TOKENSR_VGG19`` environment variable (a file), the
``TOKENSR_METRIC_WEIGHTS`` folder (shared with the LPIPS/DISTS metrics) and torch hub's
checkpoint cache (``$TORCH_HOME/hub/checkpoints``), so a user who already has the file from
torchvision needs no configuration.

Layers are named as in the VGG paper (``conv3_4``, ``relu3_4``, ``pool3``); the module's
``features`` follows torchvision's numbering so its state dict keys match the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tokensr.errors import OptionError, TokensrError

#: torchvision's download name first, then a plain name
VGG19_FILES = ("vgg19-dcbf9e4f.pth", "vgg19.pth")
ENV_FILE = "TOKENSR_VGG19"
ENV_FOLDER = "TOKENSR_METRIC_WEIGHTS"

# VGG19 ("configuration E"): channels per conv, "M" = 2x2 max-pool
_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGGWeightsError(TokensrError):
    """The VGG19 weight file is missing or is not a torchvision VGG19 state dict."""


def layer_names() -> list[str]:
    """Names of ``vgg19().features`` entries in torchvision order (``conv1_1``, ``relu1_1``, ...)."""
    names: list[str] = []
    block, conv = 1, 0
    for v in _CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
    return names


def find_vgg19(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The VGG19 weight file to use, or None when none is found (see the module docstring).

    An explicit ``path`` that does not exist is an error, not a fall-back.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise VGGWeightsError(
                f"VGG19 weights not found: {p} (a torchvision vgg19 state dict, e.g. {VGG19_FILES[0]})"
            )
        return p
    env = os.environ.get(ENV_FILE)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise VGGWeightsError(f"{ENV_FILE}={env} is not a file")
        return p
    folders: list[Path] = []
    if os.environ.get(ENV_FOLDER):
        folders.append(Path(os.environ[ENV_FOLDER]).expanduser())
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")  # only a path; never downloads
    for folder in folders:
        for name in VGG19_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


class VGG19Features(nn.Module):
    """Frozen VGG19 returning the activations of the requested layers.

    Args:
        layers: layer names (see :func:`layer_names`); the network is cut after the deepest.
        weights: path of a torchvision VGG19 state dict, or None for random weights (tests).
        input_range: value range of the input images; they are mapped to [0, 1] and then
            normalised with the ImageNet mean/std, as the weights expect.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(
        self,
        layers: Sequence[str] = ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"),
        weights: str | os.PathLike[str] | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        super().__init__()
        names = layer_names()
        unknown = [n for n in layers if n not in names]
        if unknown or not layers:
            raise OptionError(
                f"unknown VGG19 layer '{unknown[0] if unknown else ''}' (e.g. {', '.join(names[:4])}, ...)"
            )
        self.layers = tuple(layers)
        self._index = {n: names.index(n) for n in self.layers}
        last = max(self._index.values())
        modules: list[nn.Module] = []
        ch = 3
        for v in _CFG:
            if v == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                # not in-place: conv outputs are tapped before the ReLU
                modules += [nn.Conv2d(ch, int(v), 3, padding=1), nn.ReLU()]
                ch = int(v)
        self.features = nn.Sequential(*modules[: last + 1])
        lo, hi = input_range
        self.input_range = (float(lo), float(hi))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights is not None:
            self.load_torchvision(weights)
        self.requires_grad_(False)
        self.eval()

    def load_torchvision(self, path: str | os.PathLike[str]) -> None:
        """Load the ``features.*`` entries of a torchvision VGG19 state dict (other keys ignored)."""
        p = Path(path)
        if not p.is_file():
            raise VGGWeightsError(f"VGG19 weights not found: {p}")
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated file, pickle with code, not a torch file
            raise VGGWeightsError(f"{p}: not a readable PyTorch state dict ({e})") from e
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise VGGWeightsError(f"{p}: expected a state dict, got {type(state).__name__}")
        own = self.features.state_dict()
        sub = {k[len("features.") :]: v for k, v in state.items() if isinstance(k, str) and k.startswith("features.")}
        missing = [k for k in own if k not in sub]
        if missing:
            raise VGGWeightsError(f"{p}: not a torchvision VGG19 state dict (no features.{missing[0]})")
        for k, v in own.items():
            if tuple(sub[k].shape) != tuple(v.shape):
                raise VGGWeightsError(
                    f"{p}: features.{k} has shape {tuple(sub[k].shape)}, VGG19 needs {tuple(v.shape)}"
                )
        self.features.load_state_dict({k: sub[k] for k in own})

    def train(self, mode: bool = True) -> VGG19Features:
        """Always stays in eval mode (it is a fixed feature extractor)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        lo, hi = self.input_range
        if (lo, hi) != (0.0, 1.0):
            x = (x - lo) / (hi - lo)
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        wanted = {i: n for n, i in self._index.items()}
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in wanted:
                out[wanted[i]] = h
        return out


def gram(feat: torch.Tensor) -> torch.Tensor:
    """Normalised Gram matrix ``[B, C, C]`` of a feature map (for style losses)."""
    b, c, h, w = feat.shape
    f = feat.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


__all__ = ["VGG19Features", "VGGWeightsError", "find_vgg19", "gram", "layer_names"]
