"""Discriminators for the adversarial losses.

- :class:`NLayerDiscriminator`: the PatchGAN of pix2pix / taming-transformers: strided 4x4
  convolutions, one logit per overlapping patch (70-px receptive field with 3 layers).
- :class:`UNetDiscriminatorSN`: a U-Net with spectral normalisation giving one logit per
  pixel (the Real-ESRGAN design; ITER uses it), so it judges both global structure and local
  texture.

Both take images in [-1, 1] and return raw logits ``[B, 1, h, w]`` for the hinge losses in
:mod:`tokensr.nn.losses`. ``features(x)`` returns the hidden activations and, last, the
logits, for pix2pixHD's discriminator feature-matching loss
(:func:`tokensr.nn.losses.feature_matching_loss`), a perceptual term that needs no ImageNet
weights.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from tokensr.errors import OptionError


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels // 4) or 1, channels)
    if kind == "none":
        return nn.Identity()
    raise OptionError(f"discriminator norm must be 'batch', 'group' or 'none', got '{kind}'")


def _init_weights(module: nn.Module) -> None:
    """DCGAN-style initialisation: conv weights N(0, 0.02), norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if hasattr(m, "parametrizations"):  # spectral norm: the raw weight (m.weight is computed)
                w = cast(torch.Tensor, cast(nn.ModuleDict, m.parametrizations)["weight"].original)
            else:
                w = m.weight
            nn.init.normal_(w, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: ``n_layers`` stride-2 convs (channels ``ndf * min(2**i, 8)``), one stride-1
    conv, then a 1-channel output conv; LeakyReLU(0.2) between them.

    Args:
        in_channels: image channels.
        ndf: channels of the first layer (64 in taming; the small preset uses fewer).
        n_layers: stride-2 layers (3 -> 70-px patches).
        norm: 'batch' (taming's choice), 'group' or 'none'.
        use_spectral_norm: wrap every conv in spectral normalisation.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        use_spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if n_layers < 1 or ndf < 1:
            raise OptionError("the PatchGAN needs n_layers >= 1 and ndf >= 1")
        sn = spectral_norm if use_spectral_norm else (lambda m: m)
        has_bias = norm == "none"
        layers: list[nn.Module] = [sn(nn.Conv2d(in_channels, ndf, 4, 2, 1)), nn.LeakyReLU(0.2)]
        ch = ndf
        for i in range(1, n_layers + 1):
            out = ndf * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [sn(nn.Conv2d(ch, out, 4, stride, 1, bias=has_bias)), _norm(norm, out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(sn(nn.Conv2d(ch, 1, 4, 1, 1)))
        self.main = nn.Sequential(*layers)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every LeakyReLU, then the logits."""
        feats: list[torch.Tensor] = []
        for layer in self.main:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        return feats + [x]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class UNetDiscriminatorSN(nn.Module):
    """U-Net discriminator with spectral normalisation: three stride-2 downsamplings,
    bilinear upsampling back with skip connections, two refining convs and a per-pixel logit.
    Inputs whose sides are not multiples of 8 are reflect-padded and the logits cropped back."""

    def __init__(self, in_channels: int = 3, nf: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        self.skip_connection = skip_connection
        self.conv0 = nn.Conv2d(in_channels, nf, 3, 1, 1)
        self.down = nn.ModuleList(
            [spectral_norm(nn.Conv2d(nf * 2**i, nf * 2 ** (i + 1), 4, 2, 1, bias=False)) for i in range(3)]
        )
        self.up = nn.ModuleList(
            [spectral_norm(nn.Conv2d(nf * 2 ** (3 - i), nf * 2 ** (2 - i), 3, 1, 1, bias=False)) for i in range(3)]
        )
        self.refine = nn.ModuleList([spectral_norm(nn.Conv2d(nf, nf, 3, 1, 1, bias=False)) for _ in range(2)])
        self.conv_out = nn.Conv2d(nf, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations of the down path, the up path and the refining convs, then the
        per-pixel logits (all cropped to the input's size where they are full resolution)."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        feats = [act(self.conv0(x))]
        for conv in self.down:
            feats.append(act(conv(feats[-1])))
        out = list(feats)
        y = feats[-1]
        for i, conv in enumerate(self.up):
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
            y = act(conv(y))
            if self.skip_connection:
                y = y + feats[2 - i]
            out.append(y)
        for conv in self.refine:
            y = act(conv(y))
            out.append(y)
        out.append(self.conv_out(y)[..., :h, :w])
        return out


#: config ``type`` -> class
DISCRIMINATORS: dict[str, type[nn.Module]] = {
    "patch": NLayerDiscriminator,
    "nlayer": NLayerDiscriminator,
    "unet": UNetDiscriminatorSN,
}

PatchDiscriminator = NLayerDiscriminator


def build_discriminator(cfg: dict[str, Any] | None = None) -> nn.Module:
    """A discriminator from a config dict: ``{"type": "patch" | "unet", **constructor args}``."""
    cfg = dict(cfg or {})
    kind = str(cfg.pop("type", "patch"))
    if kind not in DISCRIMINATORS:
        raise OptionError(f"unknown discriminator type '{kind}' (choose from patch, unet)")
    try:
        return DISCRIMINATORS[kind](**cfg)
    except TypeError as e:
        raise OptionError(f"bad {kind} discriminator option: {e}") from e


__all__ = ["DISCRIMINATORS", "NLayerDiscriminator", "PatchDiscriminator", "UNetDiscriminatorSN", "build_discriminator"]
