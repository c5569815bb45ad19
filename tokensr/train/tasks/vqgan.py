"""Training task for the VQGAN tokenizer (config ``task: vqgan``).

Losses (weights under ``losses``): L1 and/or L2 pixel losses, optional MS-SSIM
(``1 - MS-SSIM``) and VGG19 perceptual loss, the quantizer's commitment (+ codebook) loss, and
from ``disc_start`` on a hinge GAN whose generator term is balanced with taming-transformers'
adaptive weight on the decoder's last layer (times ``gan``, 0.8 as in taming). The
discriminator (``discriminator``) is a PatchGAN by default, or the spectral-norm U-Net.

Task config keys::

    model: {preset: small, ...VQGANConfig overrides}   # or leave out with init
    trainable: all             # or decoder: encoder + codebook frozen
    init: FOLDER               # start from a save_pretrained VQGAN folder (strict load); with a
                               # model section too, that section's architecture takes the weights
                               # (init_from: the old spelling, still read)
    data: {root: FOLDER, crop_size: 128, ...HRCropDataset options}
    val: {root: FOLDER (default: the training folder), count: 16, crop_size, images: 4, batch_size: 8}
    losses: {l1: 1.0, l2: 0.0, ms_ssim: 0.0, perceptual: 0.0, vgg: FILE, codebook: 1.0,
             gan: 0.8, feature_matching: 0.0, disc_start: 10000, adaptive: true,
             max_gan_weight: 1e4}
    discriminator: {type: patch, ndf: 64, n_layers: 3, norm: batch}

``trainable: decoder`` fine-tunes ``post_quant_conv`` and the decoder only: the encoder and the
codebook stay frozen (in eval mode, so the EMA codebook does not move), so every token map a
bundled method predicts keeps its meaning while the decoder learns sharper textures.
``losses.feature_matching`` adds pix2pixHD's discriminator feature matching to the adversarial
term (both balanced together by the adaptive weight): a perceptual loss that needs no ImageNet
weights.

The shared task layer (:class:`tokensr.train.base.TaskBase`) reads the config, builds the
crops and the validation batch; the image terms and the discriminator are one
:class:`tokensr.nn.losses.ImageLoss`. Validation reports PSNR and L1 of fixed crops, and codebook
usage/perplexity over them; ``export`` writes the VQGAN with ``save_pretrained``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tokensr.errors import OptionError
from tokensr.nn import losses as L
from tokensr.nn.vqgan import PRESETS, VQGAN, VQGANConfig
from tokensr.train.base import TaskBase
from tokensr.train.batches import image_rows
from tokensr.train.options import check_choice, check_keys

log = logging.getLogger(__name__)

TRAINABLE = ("all", "decoder")
LOSS_DEFAULTS: dict[str, Any] = {
    "l1": 1.0,
    "l2": 0.0,
    "ms_ssim": 0.0,
    "perceptual": 0.0,
    "vgg": None,
    "codebook": 1.0,
    "gan": 0.8,
    "feature_matching": 0.0,
    "disc_start": 10000,
    "adaptive": True,
    "max_gan_weight": 1e4,
}


def model_config(section_: Mapping[str, Any] | None) -> VQGANConfig:
    """VQGANConfig from ``{preset: NAME, **field overrides}`` (lists become tuples)."""
    values = dict(section_ or {})
    preset = str(values.pop("preset", "small"))
    if preset not in PRESETS:
        raise OptionError(f"unknown VQGAN preset '{preset}' (choose from {', '.join(PRESETS)})")
    check_keys(values, [f.name for f in dataclasses.fields(VQGANConfig)], "model")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return dataclasses.replace(PRESETS[preset], **values)


def _first_lines(e: Exception, n: int = 2) -> str:
    return " ".join(line.strip() for line in str(e).splitlines()[:n])


class VQGANTask(TaskBase):
    """Reconstruction + VQ + (later) adversarial training of a :class:`VQGAN`."""

    name = "vqgan"
    model_name = "vqgan"
    keys = ("model", "init", "trainable", "losses", "discriminator")
    val_count = 16
    val_batch_keys = ("hr",)

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str) -> None:
        super().__init__(cfg, device)
        self.trainable = check_choice("trainable", self.cfg.get("trainable", "all"), TRAINABLE)
        self.model = self._build_model().to(self.device).train()
        self.freeze()
        self.loss_weights = self.read_losses(LOSS_DEFAULTS)
        # the network's own image range: [-1, 1], or [0, 1] for a unit_range model (the paper RealSRT VQGAN)
        net_range = (0.0, 1.0) if self.model.config.unit_range else (-1.0, 1.0)
        perceptual = None
        if self.loss_weights["perceptual"] > 0:
            perceptual = L.build_perceptual(self.loss_weights["vgg"] or "vgg", input_range=net_range)
        self.loss = self.image_loss(self.loss_weights, input_range=net_range, perceptual=perceptual)

    # --- model ------------------------------------------------------------------------------
    def _build_model(self) -> VQGAN:
        init = self.cfg.get("init")
        if init is None:
            return VQGAN(model_config(self.cfg.get("model")))
        try:
            model = VQGAN.from_pretrained(str(init), strict=True)
        except FileNotFoundError as e:
            raise OptionError(f"init: {e}") from e
        except RuntimeError as e:  # strict load: missing / unexpected / mis-shaped tensors
            raise OptionError(f"init {init}: weights do not match the VQGAN config ({_first_lines(e)})") from e
        if self.cfg.get("model") is not None:
            # the model section sets the architecture; init only supplies the weights,
            # so options without weights of their own (e.g. min_group_channels) can change
            want = VQGAN(model_config(self.cfg["model"]))
            try:
                want.load_state_dict(model.state_dict(), strict=True)
            except RuntimeError as e:
                raise OptionError(
                    f"init {init}: its weights do not fit the model section ({_first_lines(e, 1)}); "
                    "drop the model section or make its sizes match"
                ) from e
            model = want
        log.info("VQGAN initialised from %s", init)
        return model

    def frozen_modules(self) -> list[nn.Module]:
        if self.trainable == "decoder":
            return [self.model.encoder, self.model.quant_conv, self.model.quantizer]
        return []

    # --- data ---------------------------------------------------------------------------------
    def crop_size(self, data: Mapping[str, Any]) -> int:
        crop = int(data.get("crop_size", 128))
        if crop % self.model.factor:
            raise OptionError(f"crop_size {crop} is not a multiple of the VQGAN factor {self.model.factor}")
        return crop

    # --- losses -------------------------------------------------------------------------------
    def _reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Encode, quantize in float32 (distances and EMA sums must not run in bf16/fp16),
        decode. ``x`` in [-1, 1]."""
        self.keep_frozen()
        frozen = bool(self.frozen_modules())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            z = self.model.quant_conv(self.model.encoder(x))
            with torch.autocast(device_type=self.device.type, enabled=False):
                q = self.model.quantizer(z.float())
        return self.model.decode(q.z_q), q

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        hr, _, sample_weight = self.inputs(batch)
        x = self.model.to_net(hr)
        rec, q = self._reconstruct(x)
        out = self.loss(rec, x, step, last_layer=self.model.last_layer, sample_weight=sample_weight)
        g = out.g + self.loss_weights["codebook"] * q.loss if q.loss.requires_grad else out.g
        logs = dict(out.logs)
        logs.update(
            vq_loss=q.loss.item(),
            usage=q.usage.item(),
            perplexity=q.perplexity.item(),
            psnr=L.psnr(self.model.from_net(rec.detach().float()), hr),
        )
        return out.per_optimizer(g), logs

    # --- validation / export ---------------------------------------------------------------------
    def evaluate(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        images = batch["hr"]
        psnrs, l1s, recs = [], [], []
        counts = torch.zeros(self.model.config.codebook_size, device=self.device)
        for i in range(0, images.shape[0], self.val.batch_size):
            x01 = images[i : i + self.val.batch_size]
            rec, q = self._reconstruct(self.model.to_net(x01))
            r01 = self.model.from_net(rec.float()).clamp(0, 1)
            mse = (r01 - x01).pow(2).flatten(1).mean(1).clamp_min(1e-12)
            psnrs += (-10.0 * torch.log10(mse)).tolist()
            l1s += (r01 - x01).abs().flatten(1).mean(1).tolist()
            counts += torch.bincount(q.indices.flatten(), minlength=counts.numel()).float()
            recs.append(r01)
        probs = counts / counts.sum()
        metrics = {
            "psnr": sum(psnrs) / len(psnrs),
            "l1": sum(l1s) / len(l1s),
            "codebook_usage": (counts > 0).float().mean().item(),
            "perplexity": math.exp(-(probs * torch.log(probs + 1e-10)).sum().item()),
        }
        n = min(self.val.images, images.shape[0])
        return metrics, {"input_vs_recon": image_rows([images, torch.cat(recs)], n)}


__all__ = ["LOSS_DEFAULTS", "VQGANTask", "model_config"]
