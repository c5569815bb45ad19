"""Training task for the VQGAN tokenizer (config ``task: vqgan``).

Losses (weights under ``losses``): L1 and/or L2 pixel losses, optional MS-SSIM
(``1 - MS-SSIM``) and VGG19 perceptual loss, the quantizer's commitment (+ codebook) loss, and
from ``disc_start`` on a hinge GAN whose generator term is balanced with taming-transformers'
adaptive weight on the decoder's last layer (times ``gan``, 0.8 as in taming). The
discriminator (``discriminator``) is a PatchGAN by default, or the spectral-norm U-Net.

Task config keys::

    model: {preset: small, ...VQGANConfig overrides}   # or leave out with init_from
    trainable: all             # or decoder: encoder + codebook frozen
    init_from: FOLDER          # start from a save_pretrained VQGAN folder (strict load); with a
                               # model section too, that section's architecture takes the weights
    data: {root: FOLDER, crop_size: 128, ...HRCropDataset options}
    val: {root: FOLDER (default: the training folder), count: 16, crop_size, images: 4}
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

Validation reports PSNR and L1 of fixed crops, and codebook usage/perplexity over them;
``export`` writes the VQGAN with ``save_pretrained``.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils.data import Dataset

from tokensr.errors import OptionError
from tokensr.nn import losses as L
from tokensr.nn.discriminator import build_discriminator
from tokensr.nn.vqgan import PRESETS, VQGAN, VQGANConfig

log = logging.getLogger(__name__)

TOP_KEYS = ("model", "init_from", "trainable", "data", "val", "losses", "discriminator")
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
VAL_SEED_OFFSET = 7_919


def _unknown(keys: Iterable[str], allowed: Iterable[str], where: str) -> None:
    allowed = list(allowed)
    for k in keys:
        if k not in allowed:
            close = difflib.get_close_matches(k, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(allowed)})"
            raise OptionError(f"unknown {where} key '{k}'{hint}")


def model_config(section: dict[str, Any] | None) -> VQGANConfig:
    """VQGANConfig from ``{preset: NAME, **field overrides}`` (lists become tuples)."""
    section = dict(section or {})
    preset = str(section.pop("preset", "small"))
    if preset not in PRESETS:
        raise OptionError(f"unknown VQGAN preset '{preset}' (choose from {', '.join(PRESETS)})")
    fields = {f.name for f in dataclasses.fields(VQGANConfig)}
    _unknown(section, fields, "model")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}
    return dataclasses.replace(PRESETS[preset], **values)


class VQGANTask:
    """Reconstruction + VQ + (later) adversarial training of a :class:`VQGAN`."""

    def __init__(self, cfg: dict[str, Any], device: torch.device | str) -> None:
        self.cfg = dict(cfg)
        _unknown(self.cfg, TOP_KEYS, "vqgan task_config")
        self.device = torch.device(device)
        self.model = self._build_model().to(self.device)
        self.trainable = str(self.cfg.get("trainable", "all"))
        if self.trainable not in TRAINABLE:
            raise OptionError(f"trainable must be one of {', '.join(TRAINABLE)}, got '{self.trainable}'")
        self.model.train()
        if self.trainable == "decoder":
            for part in self._frozen_parts():
                part.requires_grad_(False)
        lcfg = dict(self.cfg.get("losses") or {})
        _unknown(lcfg, LOSS_DEFAULTS, "losses")
        self.w = {**LOSS_DEFAULTS, **lcfg}
        for k in ("l1", "l2", "ms_ssim", "perceptual", "codebook", "gan", "feature_matching", "max_gan_weight"):
            self.w[k] = float(self.w[k])
        self.disc_start = int(self.w["disc_start"])
        self.perceptual: nn.Module | None = None
        if self.w["perceptual"] > 0:
            self.perceptual = L.PerceptualLoss(self.w["vgg"], input_range=(-1.0, 1.0)).to(self.device)
        self.ms_ssim = L.MSSSIMLoss((-1.0, 1.0)) if self.w["ms_ssim"] > 0 else None
        self.discriminator: nn.Module | None = None
        if self.w["gan"] > 0:
            dcfg = dict(self.cfg.get("discriminator") or {"type": "patch"})
            self.discriminator = build_discriminator(dcfg).to(self.device).train()
        self._val: torch.Tensor | None = None

    # --- model ------------------------------------------------------------------------------
    def _build_model(self) -> VQGAN:
        init = self.cfg.get("init_from")
        if init is None:
            return VQGAN(model_config(self.cfg.get("model")))
        try:
            model = VQGAN.from_pretrained(str(init), strict=True)
        except FileNotFoundError as e:
            raise OptionError(f"init_from: {e}") from e
        except RuntimeError as e:  # strict load: missing / unexpected / mis-shaped tensors
            raise OptionError(f"init_from {init}: weights do not match the VQGAN config ({str(e).splitlines()[0]} {str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else ''})") from e
        if self.cfg.get("model") is not None:
            # the model section sets the architecture; init_from only supplies the weights,
            # so options without weights of their own (e.g. min_group_channels) can change
            want = VQGAN(model_config(self.cfg["model"]))
            try:
                want.load_state_dict(model.state_dict(), strict=True)
            except RuntimeError as e:
                raise OptionError(
                    f"init_from {init}: its weights do not fit the model section ({str(e).splitlines()[0]}); "
                    "drop the model section or make its sizes match"
                ) from e
            model = want
        log.info("VQGAN initialised from %s", init)
        return model

    def _frozen_parts(self) -> list[nn.Module]:
        if self.trainable == "decoder":
            return [self.model.encoder, self.model.quant_conv, self.model.quantizer]
        return []

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"vqgan": self.model}
        if self.discriminator is not None:
            mods["discriminator"] = self.discriminator
        return mods

    def ema_modules(self) -> list[str]:
        return ["vqgan"]

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        groups: dict[str, Iterable[nn.Parameter]] = {"g": [p for p in self.model.parameters() if p.requires_grad]}
        if self.discriminator is not None:
            groups["d"] = list(self.discriminator.parameters())
        return groups

    # --- data ---------------------------------------------------------------------------------
    def _crop_size(self, section: dict[str, Any]) -> int:
        crop = int(section.get("crop_size", 128))
        f = self.model.factor
        if crop % f:
            raise OptionError(f"crop_size {crop} is not a multiple of the VQGAN factor {f}")
        return crop

    def _dataset(self, section: dict[str, Any], **overrides: Any) -> Dataset[Any]:
        from tokensr.data.datasets import HRCropDataset

        root = section.get("root")
        if not root:
            raise OptionError("the vqgan task needs data.root: a folder of training photos (data.root=FOLDER)")
        if not Path(root).is_dir():
            where = "" if Path(root).is_absolute() else f" (from {Path.cwd()})"
            raise OptionError(f"data folder not found: {root}{where}; set data.root=FOLDER of training photos")
        kwargs = {k: v for k, v in section.items() if k not in ("root", "crop_size")}
        kwargs.update(overrides)
        try:
            return HRCropDataset(root, crop_size=self._crop_size(section), **kwargs)
        except TypeError as e:
            raise OptionError(f"bad data option: {e}") from e

    def train_dataset(self) -> Dataset[Any]:
        return self._dataset(dict(self.cfg.get("data") or {}))

    def _val_images(self) -> torch.Tensor | None:
        if self._val is None:
            data = dict(self.cfg.get("data") or {})
            val = dict(self.cfg.get("val") or {})
            _unknown(val, ("root", "count", "crop_size", "images", "batch_size"), "val")
            section = {**data, **{k: v for k, v in val.items() if k in ("root", "crop_size")}}
            if not section.get("root"):
                return None
            count = int(val.get("count", 16))
            seed = int(section.pop("seed", 0)) + VAL_SEED_OFFSET
            section.pop("length", None)
            section.pop("cache_dir", None)
            ds = self._dataset(section, seed=seed, length=count, augment=False)
            self._val = torch.stack([ds[i]["hr"] for i in range(count)])
        return self._val

    # --- losses -------------------------------------------------------------------------------
    def _reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Encode, quantize in float32 (distances and EMA sums must not run in bf16/fp16),
        decode. ``x`` in [-1, 1]."""
        frozen = self._frozen_parts()
        for part in frozen:
            part.eval()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            z = self.model.quant_conv(self.model.encoder(x))
            with torch.autocast(device_type=self.device.type, enabled=False):
                q = self.model.quantizer(z.float())
        return self.model.decode(q.z_q), q

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        x = batch["hr"].to(self.device, torch.float32) * 2 - 1
        weight = batch.get("weight")
        weight = weight.to(self.device, torch.float32) if weight is not None else None
        rec, q = self._reconstruct(x)
        rec32 = rec.float()
        per = torch.zeros(x.shape[0], device=self.device)
        logs: dict[str, float] = {}
        if self.w["l1"] > 0:
            v = L.l1_loss(rec32, x)
            per = per + self.w["l1"] * v
            logs["l1"] = v.mean().item()
        if self.w["l2"] > 0:
            v = L.l2_loss(rec32, x)
            per = per + self.w["l2"] * v
            logs["l2"] = v.mean().item()
        if self.ms_ssim is not None:
            v = self.ms_ssim(rec32, x)
            per = per + self.w["ms_ssim"] * v
            logs["ms_ssim_loss"] = v.mean().item()
        if self.perceptual is not None:
            v = self.perceptual(rec, x)
            per = per + self.w["perceptual"] * v
            logs["perceptual"] = v.mean().item()
        nll = L.weighted_mean(per, weight)
        g = nll + self.w["codebook"] * q.loss if q.loss.requires_grad else nll
        logs.update(
            vq_loss=q.loss.item(), usage=q.usage.item(), perplexity=q.perplexity.item(),
            psnr=L.psnr((rec32.detach() + 1) / 2, (x + 1) / 2),
        )
        out: dict[str, torch.Tensor] = {}
        if self.discriminator is not None and step >= self.disc_start:
            # real logits (and, for feature matching, the real activations as detached targets)
            # come from one forward pass; the engine sends "g" only into the VQGAN's weights
            fake_feats = self.discriminator.features(rec)
            real_feats = self.discriminator.features(x)
            g_adv = L.hinge_g_loss(fake_feats[-1])
            if self.w["feature_matching"] > 0:
                fm = L.weighted_mean(L.feature_matching_loss(fake_feats, real_feats), weight)
                logs["feature_matching"] = fm.item()
                g_adv = g_adv + self.w["feature_matching"] * fm
            if self.w["adaptive"]:
                aw = L.adaptive_gan_weight(nll, g_adv, self.model.last_layer, self.w["max_gan_weight"])
            else:
                aw = torch.ones((), device=self.device)
            g = g + self.w["gan"] * aw * g_adv
            real = real_feats[-1]
            fake = self.discriminator(rec.detach())
            out["d"] = L.hinge_d_loss(real, fake)
            logs.update(
                g_adv=g_adv.item(), adaptive_weight=aw.item(),
                logits_real=real.float().mean().item(), logits_fake=fake.float().mean().item(),
            )
        out["g"] = g
        return out, logs

    # --- validation / export ---------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        images = self._val_images()
        if images is None:
            return {}, {}
        val = dict(self.cfg.get("val") or {})
        bs = int(val.get("batch_size", 8))
        was = self.model.training
        self.model.eval()
        psnrs, l1s, recs = [], [], []
        counts = torch.zeros(self.model.config.codebook_size, device=self.device)
        for i in range(0, images.shape[0], bs):
            x01 = images[i : i + bs].to(self.device)
            rec, q = self._reconstruct(x01 * 2 - 1)
            r01 = ((rec.float() + 1) / 2).clamp(0, 1)
            mse = (r01 - x01).pow(2).flatten(1).mean(1).clamp_min(1e-12)
            psnrs += (-10.0 * torch.log10(mse)).tolist()
            l1s += (r01 - x01).abs().flatten(1).mean(1).tolist()
            counts += torch.bincount(q.indices.flatten(), minlength=counts.numel()).float()
            recs.append(r01.cpu())
        self.model.train(was)
        probs = counts / counts.sum()
        perplexity = math.exp(-(probs * torch.log(probs + 1e-10)).sum().item())
        metrics = {
            "psnr": sum(psnrs) / len(psnrs),
            "l1": sum(l1s) / len(l1s),
            "codebook_usage": (counts > 0).float().mean().item(),
            "perplexity": perplexity,
        }
        n = min(int(val.get("images", 4)), images.shape[0])
        rec_all = torch.cat(recs)
        top = torch.cat(list(images[:n]), dim=2)
        bottom = torch.cat(list(rec_all[:n]), dim=2)
        return metrics, {"input_vs_recon": torch.cat([top, bottom], dim=1)}

    def export(self, folder: str) -> None:
        self.model.save_pretrained(folder)


__all__ = ["VQGANTask", "model_config"]
