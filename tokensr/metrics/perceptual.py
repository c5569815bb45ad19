"""Learned perceptual distances: LPIPS (Zhang et al., CVPR 2018) and DISTS (Ding et al.,
TPAMI 2020). Lower is closer for both.

tokensr ships no weights for them and never downloads anything: both load an ImageNet
backbone from a local torchvision-format state dict (keys ``features.N.weight`` /
``features.N.bias``) plus the metric's own calibration weights, all from one folder given
as ``weights_dir`` (CLI: ``--metric-weights DIR``) or the environment variable
``TOKENSR_METRIC_WEIGHTS``. The file names they look for are in ``BACKBONE_FILES`` and
``HEAD_FILES``; a missing file stops with :class:`WeightsNotFoundError` naming it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tokensr.errors import OptionError, TokensrError
from tokensr.metrics.image import ImageLike, to_array255

ENV_VAR = "TOKENSR_METRIC_WEIGHTS"

# Accepted file names, first one preferred (torchvision's own download names come first).
BACKBONE_FILES = {
    "vgg": ("vgg16-397923af.pth", "vgg16.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "alexnet.pth"),
}
HEAD_FILES = {
    # LPIPS v0.1 linear layers: the files lpips/weights/v0.1/{vgg,alex}.pth of the LPIPS release.
    "lpips-vgg": ("lpips_vgg.pth",),
    "lpips-alex": ("lpips_alex.pth",),
    # DISTS alpha/beta: the file DISTS_pytorch/weights.pt of the DISTS release.
    "dists": ("dists_weights.pt",),
}
HEAD_ORIGIN = {
    "lpips-vgg": "LPIPS v0.1 linear weights, lpips/weights/v0.1/vgg.pth of the LPIPS package",
    "lpips-alex": "LPIPS v0.1 linear weights, lpips/weights/v0.1/alex.pth of the LPIPS package",
    "dists": "DISTS alpha/beta weights, DISTS_pytorch/weights.pt of the DISTS package",
}
BACKBONE_ORIGIN = {
    "vgg": "torchvision VGG16 ImageNet weights (state dict with features.* keys)",
    "alex": "torchvision AlexNet ImageNet weights (state dict with features.* keys)",
}


class WeightsNotFoundError(TokensrError):
    """A weight file a metric needs is not in the weights folder."""


def weights_folder(weights_dir: str | Path | None) -> Path | None:
    if weights_dir:
        return Path(weights_dir)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else None


def find_file(metric: str, names: tuple[str, ...], origin: str, weights_dir: str | Path | None) -> Path:
    """The first of ``names`` present in the weights folder, or a clear error naming it."""
    folder = weights_folder(weights_dir)
    if folder is not None:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    where = f"in {folder}" if folder is not None else f"(no folder given: use --metric-weights DIR or set {ENV_VAR})"
    raise WeightsNotFoundError(f"{metric} needs the file {names[0]} ({origin}) {where}")


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, ...
        raise OptionError(f"{path}: not a readable PyTorch state dict ({e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise OptionError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _load_features(features: nn.Sequential, path: Path) -> None:
    """Load the ``features.*`` entries of a torchvision state dict into ``features``."""
    state = _load_state(path)
    wanted = {k: v for k, v in state.items() if k.startswith("features.")}
    own = features.state_dict()
    sub = {k[len("features.") :]: v for k, v in wanted.items() if k[len("features.") :] in own}
    missing = sorted(set(own) - set(sub))
    if missing:
        raise OptionError(
            f"{path}: not a matching backbone, missing features.{missing[0]} (and {len(missing) - 1} more)"
        )
    for k, v in sub.items():
        if v.shape != own[k].shape:
            raise OptionError(f"{path}: features.{k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
    features.load_state_dict(sub)


_VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` up to relu5_3 (indices 0..29, same numbering)."""
    layers: list[nn.Module] = []
    ch = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(ch, int(v), 3, padding=1), nn.ReLU()]
            ch = int(v)
    return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` up to relu5 (indices 0..11, same numbering)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    )  # fmt: skip


def _to_batch(img: ImageLike | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``[1, 3, H, W]`` float32 in [0, 1] on ``device``; tensors with 4 dims pass through."""
    if isinstance(img, torch.Tensor) and img.dim() == 4 and img.dtype != torch.uint8:
        return img.to(device=device, dtype=torch.float32)
    arr = to_array255(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32) / 255.0)
    return t[None].to(device)


class LPIPS(nn.Module):
    """LPIPS v0.1: unit-normalised backbone activations, squared difference, learned
    per-channel weights (a 1x1 conv), spatial mean, summed over five layers."""

    shift: torch.Tensor  # buffers, registered in __init__
    scale: torch.Tensor

    # (layer index after which a feature is taken, channels) in torchvision numbering
    TAPS = {
        "vgg": ((3, 64), (8, 128), (15, 256), (22, 512), (29, 512)),
        "alex": ((1, 64), (4, 192), (7, 384), (9, 256), (11, 256)),
    }

    def __init__(
        self, net: str = "vgg", weights_dir: str | Path | None = None, device: str | torch.device = "cpu"
    ) -> None:
        super().__init__()
        if net not in self.TAPS:
            raise OptionError(f"LPIPS backbone must be 'vgg' or 'alex', got {net!r}")
        self.net = net
        self.features = vgg16_features() if net == "vgg" else alexnet_features()
        self.taps = [i for i, _ in self.TAPS[net]]
        self.features = cast(nn.Sequential, self.features[: self.taps[-1] + 1])  # a slice is a Sequential
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for _, c in self.TAPS[net])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        name = f"LPIPS ({net})"
        _load_features(self.features, find_file(name, BACKBONE_FILES[net], BACKBONE_ORIGIN[net], weights_dir))
        self._load_heads(find_file(name, HEAD_FILES[f"lpips-{net}"], HEAD_ORIGIN[f"lpips-{net}"], weights_dir))
        self.eval().requires_grad_(False).to(device)

    def _load_heads(self, path: Path) -> None:
        state = _load_state(path)
        for i, lin in enumerate(self.lins):
            lin_w = cast(nn.Conv2d, lin).weight
            # The LPIPS release stores lin{i}.model.1.weight (dropout, then conv); accept lin{i}.weight too.
            w = state.get(f"lin{i}.model.1.weight", state.get(f"lin{i}.weight"))
            if w is None:
                raise OptionError(f"{path}: no weights for LPIPS layer {i} (expected key lin{i}.model.1.weight)")
            if w.shape != lin_w.shape:
                raise OptionError(f"{path}: lin{i} has shape {tuple(w.shape)}, expected {tuple(lin_w.shape)}")
            lin_w.data.copy_(w)

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x * 2.0 - 1.0 - self.shift) / self.scale
        feats = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                feats.append(h)
        return feats

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per image for ``[B, 3, H, W]`` batches in [0, 1]."""
        total = torch.zeros(x.shape[0], device=x.device)
        for fx, fy, lin in zip(self._activations(x), self._activations(y), self.lins, strict=False):
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((nx - ny) ** 2).mean(dim=(1, 2, 3))
        return total

    def score(self, sr: ImageLike, ref: ImageLike) -> float:
        dev = self.shift.device
        return float(self(_to_batch(sr, dev), _to_batch(ref, dev))[0])


class L2Pool(nn.Module):
    """DISTS's replacement for max pooling: sqrt of a Hanning-weighted (3x3, stride 2) mean
    of squares, which avoids the aliasing of max pooling."""

    kernel: torch.Tensor  # buffer, registered in __init__

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5])
        g = a[:, None] * a[None, :]
        self.register_buffer("kernel", (g / g.sum()).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.kernel, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTS(nn.Module):
    """DISTS: structure (correlation) and texture (mean) similarity of VGG16 feature maps
    with L2 pooling, weighted by learned alpha / beta per channel; 0 means identical."""

    CHANNELS = (3, 64, 128, 256, 512, 512)
    POOLS = (4, 9, 16, 23)  # max-pool indices of vgg16.features, replaced by L2 pooling
    TAPS = (3, 8, 15, 22, 29)

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, weights_dir: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__()
        feats = vgg16_features()
        _load_features(feats, find_file("DISTS", BACKBONE_FILES["vgg"], BACKBONE_ORIGIN["vgg"], weights_dir))
        layers = list(feats)
        for i in self.POOLS:
            conv_before = layers[i - 2]
            assert isinstance(conv_before, nn.Conv2d)
            layers[i] = L2Pool(conv_before.out_channels)
        self.features = nn.Sequential(*layers)
        n = sum(self.CHANNELS)
        self.alpha = nn.Parameter(torch.zeros(1, n, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, n, 1, 1))
        path = find_file("DISTS", HEAD_FILES["dists"], HEAD_ORIGIN["dists"], weights_dir)
        state = _load_state(path)
        for key in ("alpha", "beta"):
            if key not in state or state[key].numel() != n:
                raise OptionError(f"{path}: expected '{key}' with {n} values")
            getattr(self, key).data.copy_(state[key].reshape(1, n, 1, 1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.eval().requires_grad_(False).to(device)

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [x]
        h = (x - self.mean) / self.std
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.TAPS:
                feats.append(h)
        return feats

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance per image for ``[B, 3, H, W]`` batches in [0, 1]."""
        c1 = c2 = 1e-6
        total_w = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total_w, list(self.CHANNELS), dim=1)
        betas = torch.split(self.beta / total_w, list(self.CHANNELS), dim=1)
        texture = structure = torch.zeros(x.shape[0], device=x.device)
        for fx, fy, a, b in zip(self._activations(x), self._activations(y), alphas, betas, strict=False):
            mx, my = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)
            vx, vy = ((fx - mx) ** 2).mean((2, 3), keepdim=True), ((fy - my) ** 2).mean((2, 3), keepdim=True)
            cov = (fx * fy).mean((2, 3), keepdim=True) - mx * my
            s_mean = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            s_corr = (2 * cov + c2) / (vx + vy + c2)
            texture = texture + (a * s_mean).sum(dim=(1, 2, 3))
            structure = structure + (b * s_corr).sum(dim=(1, 2, 3))
        return 1.0 - (texture + structure)

    def score(self, sr: ImageLike, ref: ImageLike) -> float:
        dev = self.mean.device
        return float(self(_to_batch(sr, dev), _to_batch(ref, dev))[0])
