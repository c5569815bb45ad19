"""Training losses shared by the tokenizer and the SR methods.

- pixel losses (L1 / L2) with optional per-sample weights;
- SSIM / MS-SSIM (Gaussian window 11, sigma 1.5; the five-scale weights of Wang et al. 2003,
  with fewer scales on small crops);
- a VGG19 perceptual loss (L1 between feature maps, the usual SR layer choice) that loads a
  local torchvision weight file (:mod:`tokensr.nn.vgg`);
- hinge GAN losses, taming-transformers' adaptive GAN weight, and pix2pixHD's discriminator
  feature matching;
- :class:`ImageLoss`, the one module every training task uses for its image terms: it
  holds the perceptual network and the discriminator and returns the loss with its named terms;
- the vector-quantisation codebook/commitment loss.

Per-sample losses return ``[B]`` so callers can weight samples (the datasets down-weight
flat crops); reduce with :func:`weighted_mean`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.errors import OptionError
from tokensr.nn.vgg import VGG19Features, find_vgg19

log = logging.getLogger(__name__)

#: MS-SSIM weights of the five scales, finest first (Wang, Simoncelli & Bovik, 2003)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# --- reductions and pixel losses ------------------------------------------------------------
def weighted_mean(per_sample: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``[B]`` values, weighted by ``weight [B]`` when given."""
    if weight is None:
        return per_sample.mean()
    w = weight.to(per_sample.dtype).reshape(per_sample.shape)
    return (per_sample * w).sum() / w.sum().clamp_min(1e-8)


def l1_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute error, ``[B]``."""
    return (x - y).abs().flatten(1).mean(1)


def l2_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error, ``[B]``."""
    return (x - y).pow(2).flatten(1).mean(1)


# --- SSIM / MS-SSIM ---------------------------------------------------------------------------
def _gaussian_kernel(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter per channel, 'valid' borders."""
    c = x.shape[1]
    k = kernel.numel()
    x = F.conv2d(x, kernel.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, kernel.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def _ssim_terms(
    x: torch.Tensor, y: torch.Tensor, data_range: float, win: int, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean SSIM and mean contrast-structure term, each ``[B]``."""
    kernel = _gaussian_kernel(win, sigma, x.device)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x, mu_y = _blur(x, kernel), _blur(y, kernel)
    sxx = _blur(x * x, kernel) - mu_x**2
    syy = _blur(y * y, kernel) - mu_y**2
    sxy = _blur(x * y, kernel) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (lum * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Single-scale SSIM per sample, ``[B]`` (window shrinks to fit images under ``win`` px)."""
    win = min(win, _largest_odd(min(x.shape[-2:])))
    return _ssim_terms(x.float(), y.float(), data_range, win, sigma)[0]


def _largest_odd(n: int) -> int:
    return n if n % 2 else max(1, n - 1)


def ms_ssim_levels(size: int, win: int = 11, max_levels: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Number of scales used for images whose shorter side is ``size``: as many of the five
    as keep the coarsest scale at least one window wide (128-px crops use 4)."""
    levels = 1
    while levels < max_levels and size // 2**levels >= win:
        levels += 1
    return levels


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    win: int = 11,
    sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
) -> torch.Tensor:
    """Multi-scale SSIM per sample, ``[B]``, in [0, 1] (1 = identical).

    Small images use fewer scales (:func:`ms_ssim_levels`) with the first weights
    renormalised to sum to one. Negative contrast terms are clamped to a small positive
    value so the fractional powers stay differentiable.
    """
    x, y = x.float(), y.float()
    size = min(x.shape[-2:])
    win = min(win, _largest_odd(size))
    levels = ms_ssim_levels(size, win, len(weights))
    w = torch.tensor(weights[:levels], dtype=torch.float32, device=x.device)
    w = w / w.sum()
    result = torch.ones(x.shape[0], device=x.device)
    for i in range(levels):
        s, cs = _ssim_terms(x, y, data_range, win, sigma)
        if i < levels - 1:
            result = result * cs.clamp_min(1e-6) ** w[i]
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        else:
            result = result * s.clamp_min(1e-6) ** w[i]
    return result


class MSSSIMLoss(nn.Module):
    """``1 - MS-SSIM`` per sample; images in ``input_range`` (default [-1, 1])."""

    def __init__(self, input_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        self.input_range = (float(input_range[0]), float(input_range[1]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lo, hi = self.input_range
        return 1.0 - ms_ssim((x - lo) / (hi - lo), (y - lo) / (hi - lo), data_range=1.0)


# --- perceptual -------------------------------------------------------------------------------
class PerceptualLoss(nn.Module):
    """Weighted L1 (or L2) distance between VGG19 feature maps, per sample ``[B]``.

    Defaults follow the common SR choice: conv1_2, conv2_2, conv3_4, conv4_4, conv5_4 (before
    the ReLU) weighted 0.1, 0.1, 1, 1, 1. ``weights`` is the torchvision VGG19 file; None finds
    it with :func:`tokensr.nn.vgg.find_vgg19` and is an error when there is none (random VGG
    features make a meaningless loss). The target's features are computed without gradient.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        layers: Sequence[str] = ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"),
        layer_weights: Sequence[float] = (0.1, 0.1, 1.0, 1.0, 1.0),
        criterion: str = "l1",
        input_range: tuple[float, float] = (-1.0, 1.0),
        _allow_random: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(layer_weights):
            raise OptionError(f"{len(layers)} VGG layers but {len(layer_weights)} layer weights")
        if criterion not in ("l1", "l2"):
            raise OptionError(f"perceptual criterion must be 'l1' or 'l2', got '{criterion}'")
        path = find_vgg19(weights)
        if path is None and not _allow_random:
            raise OptionError(
                "the perceptual loss needs the torchvision VGG19 weights (vgg19-dcbf9e4f.pth): "
                "give its path (perceptual_vgg / vgg path) or set TOKENSR_VGG19=FILE"
            )
        self.vgg = VGG19Features(layers, path, tuple(input_range))  # type: ignore[arg-type]
        self.layer_weights = dict(zip(layers, (float(w) for w in layer_weights), strict=False))
        self.criterion = criterion

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.vgg(x)
        if y.requires_grad:
            fy = self.vgg(y)
        else:
            with torch.no_grad():
                fy = self.vgg(y)
        total = torch.zeros(x.shape[0], device=x.device, dtype=torch.float32)
        for name, w in self.layer_weights.items():
            d = fx[name].float() - fy[name].float()
            d = d.abs() if self.criterion == "l1" else d.pow(2)
            total = total + w * d.flatten(1).mean(1)
        return total


def build_perceptual(
    spec: Any = "auto",
    *,
    input_range: tuple[float, float] = (-1.0, 1.0),
    criterion: str = "l1",
    substitute: nn.Module | None = None,
) -> nn.Module | None:
    """The perceptual term from a config value (a module returning ``[B]``), or None when off.

    - ``None`` / ``False`` / ``"none"`` / ``"off"``: off.
    - ``"auto"``: the VGG19 loss when a VGG19 file is found (:func:`tokensr.nn.vgg.find_vgg19`),
      else ``substitute`` (None: off), with a warning. Callers must handle None.
    - ``"vgg"``: the VGG19 loss, an error when no VGG19 file is found.
    - ``"ms_ssim"``: ``1 - MS-SSIM`` (needs no weights).
    - a path: that VGG19 file (missing -> a clear error).
    - a dict: keyword arguments of :class:`PerceptualLoss` (``weights`` is the path).
    """
    off = ("none", "off", "false", "")
    if spec is None or spec is False or (isinstance(spec, str) and spec.strip().lower() in off):
        return None
    if isinstance(spec, dict):
        return PerceptualLoss(**{"input_range": input_range, "criterion": criterion, **spec})
    key = str(spec).strip().lower() if isinstance(spec, str) else ""
    if key == "ms_ssim":
        return MSSSIMLoss(input_range)
    if key == "auto":
        path = find_vgg19(None)
        if path is None:
            what = f"the substitute {type(substitute).__name__}" if substitute is not None else "no perceptual loss"
            log.warning("no VGG19 weights found (set TOKENSR_VGG19=FILE): training with %s", what)
            return substitute
        return PerceptualLoss(path, criterion=criterion, input_range=input_range)
    if key == "vgg":
        return PerceptualLoss(None, criterion=criterion, input_range=input_range)
    return PerceptualLoss(os.fspath(spec), criterion=criterion, input_range=input_range)


# --- GAN ----------------------------------------------------------------------------------------
def local_variance(x: torch.Tensor, kernel: int = 7) -> torch.Tensor:
    """Variance of ``x`` ``[B, C, H, W]`` over a ``kernel`` x ``kernel`` window around each pixel
    (reflect padding), as ``E[x^2] - E[x]^2``."""
    pad = kernel // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    mean = F.avg_pool2d(padded, kernel, stride=1)
    mean_sq = F.avg_pool2d(padded * padded, kernel, stride=1)
    return (mean_sq - mean * mean).clamp(min=0)


def artifact_weights(out: torch.Tensor, ref: torch.Tensor, target: torch.Tensor, kernel: int = 7) -> torch.Tensor:
    """Where a GAN output ``out`` looks like an artefact (LDL, Liang et al., CVPR 2022), as a
    per-pixel weight ``[B, 1, H, W]`` without gradient.

    The residual ``|target - out|`` (summed over channels) is weighted by its local variance
    (artefacts are noisy, textured errors) and by the image's whole residual variance to the
    power 1/5; pixels where ``out`` is closer to the target than the slowly moving reference
    ``ref`` (an EMA of the model) get weight 0, since those are details, not artefacts.
    """
    with torch.no_grad():
        res = (target - out).abs().sum(1, keepdim=True)
        res_ref = (target - ref).abs().sum(1, keepdim=True)
        image_level = res.var(dim=(1, 2, 3), keepdim=True) ** 0.2
        weight = image_level * local_variance(res, kernel)
        return torch.where(res < res_ref, torch.zeros_like(weight), weight)


def artifact_loss(out: torch.Tensor, ref: torch.Tensor, target: torch.Tensor, kernel: int = 7) -> torch.Tensor:
    """LDL's artefact term: L1 between ``out`` and ``target`` under :func:`artifact_weights`."""
    w = artifact_weights(out, ref, target, kernel)
    return F.l1_loss(w * out, w * target)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))``."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss of the hinge GAN: ``-mean D(fake)``."""
    return -fake_logits.float().mean()


def feature_matching_loss(fake_feats: Sequence[torch.Tensor], real_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """pix2pixHD's feature-matching loss, per sample ``[B]``: the mean over the discriminator's
    hidden layers (its logits, the last entry, left out) of the L1 distance between the
    activations for the fake and the real image. The real activations are targets (detached).
    Needs no pretrained network, so it serves as the perceptual term where no VGG weights are."""
    if len(fake_feats) != len(real_feats) or len(fake_feats) < 2:
        raise ValueError("feature matching needs the same >= 2 discriminator outputs for fake and real")
    hidden = list(zip(fake_feats[:-1], real_feats[:-1], strict=False))
    total = torch.zeros(fake_feats[0].shape[0], device=fake_feats[0].device, dtype=torch.float32)
    for f, r in hidden:
        total = total + (f.float() - r.detach().float()).abs().flatten(1).mean(1)
    return total / len(hidden)


def adaptive_gan_weight(
    nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4, eps: float = 1e-4
) -> torch.Tensor:
    """taming-transformers' balance of the GAN term against the reconstruction loss:
    ``||d nll / d W|| / (||d g_loss / d W|| + eps)`` on the generator's last layer ``W``,
    clamped to ``[0, max_weight]`` and detached. Zero when no gradient can be taken
    (e.g. under ``torch.no_grad`` during validation)."""
    if not (torch.is_grad_enabled() and nll.requires_grad and g_loss.requires_grad):
        return torch.zeros((), device=nll.device)
    (g_nll,) = torch.autograd.grad(nll, last_layer, retain_graph=True)
    (g_gan,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (g_nll.float().norm() / (g_gan.float().norm() + eps)).clamp(0.0, max_weight).detach()


# --- the image loss every task uses --------------------------------------------------------------
#: The reconstruction terms of :class:`ImageLoss`, in the order they are summed.
IMAGE_TERMS = ("l1", "l2", "ms_ssim", "perceptual")


@dataclass
class ImageLossOutput:
    """What :meth:`ImageLoss.forward` returns."""

    nll: torch.Tensor  # weighted reconstruction loss (pixel, structure, perceptual)
    g: torch.Tensor  # nll plus the weighted adversarial term: the generator's image loss
    d: torch.Tensor | None  # the discriminator's hinge loss (None while the GAN is off)
    logs: dict[str, float]  # every term by name, as plain floats

    def per_optimizer(self, g: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The loss per optimizer name for the training engine: ``g`` (default: :attr:`g`; a
        task passes its own total) and ``d`` while the GAN is on."""
        out = {"g": self.g if g is None else g}
        if self.d is not None:
            out["d"] = self.d
        return out


class ImageLoss(nn.Module):
    """Pixel, structure, perceptual and adversarial losses of a generated image, in one module
    (taming-transformers' ``VQLPIPSWithDiscriminator`` without its codebook term).

    ``weights`` holds the task's loss settings by name; missing ones are off:

    - ``l1``, ``l2``: per-sample mean absolute / squared error in the images' own range;
    - ``ms_ssim``: ``1 - MS-SSIM``; ``perceptual``: the weight of the ``perceptual`` module
      (:func:`build_perceptual`: VGG19, or a substitute that needs no weights);
    - ``gan``: the hinge GAN term's weight, active from step ``disc_start`` on when a
      ``discriminator`` is given (for the first ``disc_warmup`` of those steps only the
      discriminator learns: a fresh one is not left to steer a trained generator); with
      ``adaptive`` (default) it is scaled by taming's
      adaptive weight (:func:`adaptive_gan_weight`, at most ``max_gan_weight``) on the
      generator's ``last_layer``;
    - ``feature_matching``: pix2pixHD's discriminator feature matching, added to the
      adversarial term (and balanced with it).

    Images are in ``input_range`` ((-1, 1) or (0, 1)); the perceptual network and the
    discriminator always see them mapped to [-1, 1]. Per-sample terms are reduced with the
    batch's ``sample_weight`` (:func:`weighted_mean`).
    """

    def __init__(
        self,
        weights: Mapping[str, Any],
        *,
        input_range: tuple[float, float] = (-1.0, 1.0),
        perceptual: nn.Module | None = None,
        discriminator: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.weights = {k: float(weights.get(k, 0.0)) for k in IMAGE_TERMS}
        self.gan_weight = float(weights.get("gan", 0.0))
        self.feature_matching = float(weights.get("feature_matching", 0.0))
        self.disc_start = int(weights.get("disc_start", 0))
        self.disc_warmup = int(weights.get("disc_warmup", 0))
        self.adaptive = bool(weights.get("adaptive", True))
        self.max_gan_weight = float(weights.get("max_gan_weight", 1e4))
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.ms_ssim = MSSSIMLoss(self.input_range) if self.weights["ms_ssim"] > 0 else None
        self.perceptual = perceptual if self.weights["perceptual"] > 0 else None
        self.discriminator = discriminator if self.gan_weight > 0 else None

    def to_pm1(self, x: torch.Tensor) -> torch.Tensor:
        """Images of ``input_range`` mapped to [-1, 1] (the networks' range)."""
        lo, hi = self.input_range
        return x if (lo, hi) == (-1.0, 1.0) else (x - lo) / (hi - lo) * 2 - 1

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.disc_start

    def reconstruction(
        self,
        out: torch.Tensor,
        target: torch.Tensor,
        sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted sum of the reconstruction terms (a scalar) and each term's batch mean."""
        out32 = out.float()
        per = torch.zeros(out.shape[0], device=out.device)
        logs: dict[str, float] = {}
        for name in IMAGE_TERMS:
            w = self.weights[name]
            if w <= 0:
                continue
            if name == "l1":
                v = l1_loss(out32, target)
            elif name == "l2":
                v = l2_loss(out32, target)
            elif name == "ms_ssim" and self.ms_ssim is not None:
                v = self.ms_ssim(out32, target)
            elif name == "perceptual" and self.perceptual is not None:
                v = self.perceptual(self.to_pm1(out), self.to_pm1(target)).float()
            else:
                continue
            per = per + w * v
            logs[name] = v.mean().item()
        return weighted_mean(per, sample_weight), logs

    def forward(
        self,
        out: torch.Tensor,
        target: torch.Tensor,
        step: int,
        *,
        last_layer: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
        real: torch.Tensor | None = None,
    ) -> ImageLossOutput:
        """All terms for a generated batch ``out`` against ``target`` at optimizer step ``step``.

        The discriminator sees ``out`` with gradient (the generator's term) and detached (its
        own hinge loss); the task returns ``d`` under the discriminator's optimizer, so only
        the discriminator's weights learn from it. Its real images (and feature matching's) are
        ``real`` when given, else ``target``: Real-ESRGAN's pixel and perceptual terms aim at a
        USM-sharpened target while its discriminator sees the plain one.
        """
        nll, logs = self.reconstruction(out, target, sample_weight)
        if not self.gan_active(step):
            return ImageLossOutput(nll, nll, None, logs)
        disc = self.discriminator
        assert disc is not None
        fake, real = self.to_pm1(out), self.to_pm1(target if real is None else real)
        real_logits: torch.Tensor | None = None
        if self.feature_matching > 0:
            # real logits and the real activations (detached targets) come from one pass
            # (feature matching needs a discriminator with ``features``, as both in nn.discriminator)
            features = cast(Callable[[torch.Tensor], list[torch.Tensor]], disc.features)
            fake_feats, real_feats = features(fake), features(real)
            fake_logits, real_logits = fake_feats[-1], real_feats[-1]
        else:
            fake_logits = disc(fake)
        g_adv = hinge_g_loss(fake_logits)
        if self.feature_matching > 0:
            fm = weighted_mean(feature_matching_loss(fake_feats, real_feats), sample_weight)
            logs["feature_matching"] = fm.item()
            g_adv = g_adv + self.feature_matching * fm
        if self.adaptive and last_layer is None:
            raise ValueError("the adaptive GAN weight needs the generator's last_layer")
        # while the discriminator warms up the generator's term is not added, so its adaptive
        # weight (two gradients back through the generator) is not computed either
        warming = step < self.disc_start + self.disc_warmup
        aw = torch.ones((), device=out.device)
        if self.adaptive and not warming:
            assert last_layer is not None
            aw = adaptive_gan_weight(nll, g_adv, last_layer, self.max_gan_weight)
            logs["adaptive_weight"] = aw.item()
        g = nll if warming else nll + self.gan_weight * aw * g_adv
        logs["g_adv"] = g_adv.item()
        if real_logits is None:
            real_logits = disc(real)
        fake_d = disc(fake.detach())
        d = hinge_d_loss(real_logits, fake_d)
        logs.update(
            d_hinge=d.item(), logits_real=real_logits.float().mean().item(), logits_fake=fake_d.float().mean().item()
        )
        return ImageLossOutput(nll, g, d, logs)


# --- vector quantisation ------------------------------------------------------------------------
def codebook_loss(
    z: torch.Tensor, z_q: torch.Tensor, beta: float = 0.25, learned_codebook: bool = True
) -> torch.Tensor:
    """VQ-VAE loss: ``||sg(z) - z_q||^2`` (moves the codes; left out for an EMA codebook)
    plus ``beta * ||z - sg(z_q)||^2`` (commits the encoder). ``z_q`` is the raw code lookup
    (before the straight-through trick)."""
    commit = beta * F.mse_loss(z, z_q.detach())
    if not learned_codebook:
        return commit
    return commit + F.mse_loss(z_q, z.detach())


def psnr(x01: torch.Tensor, y01: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (x clamped), over the whole batch."""
    mse = F.mse_loss(x01.detach().float().clamp(0, 1), y01.detach().float()).item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


__all__ = [
    "IMAGE_TERMS",
    "MS_SSIM_WEIGHTS",
    "ImageLoss",
    "ImageLossOutput",
    "MSSSIMLoss",
    "PerceptualLoss",
    "adaptive_gan_weight",
    "artifact_loss",
    "artifact_weights",
    "build_perceptual",
    "codebook_loss",
    "feature_matching_loss",
    "hinge_d_loss",
    "hinge_g_loss",
    "l1_loss",
    "l2_loss",
    "local_variance",
    "ms_ssim",
    "ms_ssim_levels",
    "psnr",
    "ssim",
    "weighted_mean",
]
