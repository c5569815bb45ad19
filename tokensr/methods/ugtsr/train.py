"""UGTSR's two training stages as engine tasks (see ``tokensr.train.task``).

1. :class:`ESUTask` (``ugtsr_esu``, paper eq. 14): a FeMaSR-style network (plain nearest
   matching, no Align-Attention, as the paper trains stage I) plus the uncertainty head,
   trained with ``L_codebook + L1 + L_per + 0.1 L_adv + L_ESU``. The tokenizer is frozen.
2. :class:`UDLTask` (``ugtsr_udl``, eq. 15): starts from the stage-I folder (``init``), adds
   Top-k fusion (k = 3) and Align-Attention, and trains with
   ``L_codebook + L1 + L_per + 0.1 L_adv + L_UDL``; the uncertainty map comes from the frozen
   stage-I model (``uncertainty_source: estimator``, the paper's "uncertainty map prediction
   model remains fixed") or from the frozen head on the current features (``self``, cheaper).

Both export a complete UGTSR folder (``save_pretrained``) that ``tokensr upscale --method ugtsr
--weights FOLDER`` runs. ``uncertainty: false`` drops the ESU / UDL term (the ablation's
"plain L1" variant); ``model: {top_k: 1 | 3 | 5, align_attention: ..., fusion_mode: residual |
select}`` sets the other switches. With ``fusion_mode: select`` stage II adds the candidate
cross-entropy (``losses.select``): the fusion's k logits against the slot of the HR image's own
code among the k nearest codes of ``z^l``, on the pixels where it is among them.

Task config keys (``task_config`` in the YAML):

- ``tokenizer``: VQGAN folder or bundled name (stage I; stage II without ``init``).
- ``init``: a UGTSR folder to start from (stage II: the stage-I export; optional in stage I).
- ``warm_start``: a UGTSR folder of another scale (or preset) whose weights of matching name and
  shape are copied into the new model (e.g. x2 from a trained x4); the encoder layers the source
  lacks start function-preserving (an average-pool downsampling and identity ResNet blocks, see
  :meth:`tokensr.methods.ugtsr.model.LQEncoder.bridge`); the rest start fresh.
- ``preset`` (``small`` | ``paper`` | ``tiny``), ``scale`` (4 | 2), ``model``: UGTSRConfig
  field overrides (``top_k``, ``align_attention``, ``align_stages``, ``fusion_stages``, sizes...).
- ``uncertainty`` (true), ``uncertainty_from`` (stage II: the frozen estimator's folder,
  default ``init``), ``uncertainty_source`` (``estimator`` | ``self``).
- ``data``: keyword arguments of :class:`tokensr.data.datasets.HRCropDataset` (``root``,
  ``crop_size`` (128), ``degradation`` (default ``bsrgan``, as the paper), ``seed``, ...).
- ``val``: ``{root (default data.root), crop_size, count: 4, images: 4}``; validation crops are
  ``data`` with another seed and no augmentation (``val_count`` and ``val_data`` are the old
  spellings of ``val.count`` and ``val.root``, still read).
- ``losses``: ``l1`` (1), ``perceptual`` (1; weight), ``perceptual_loss`` (``auto``: VGG19 when
  its weights are found (``TOKENSR_VGG19``), else the substitute ``tokenizer`` feature loss;
  or ``vgg``, a path to the VGG19 file, ``tokenizer``, ``ms_ssim``, ``none``),
  ``perceptual_criterion`` (``l1``), ``gan`` (0.1; 0 = off), ``disc_start`` (0), ``disc_warmup`` (0;
  only the discriminator learns for that many steps from ``disc_start``),
  ``codebook`` (1), ``beta`` (0.25), ``alpha`` (1; Gram), ``codebook_on`` (``lq`` and/or
  ``fused``; unset or ``auto``: ``[lq, fused]`` for a ``residual`` fusion, whose correction the
  ``z'`` term supervises directly and which every earlier run trained with, and ``[lq]``, eq. 13
  as the paper writes it, for a ``select`` fusion), ``select`` (1: the candidate cross-entropy,
  ``select`` fusion only), ``esu`` (1), ``udl`` (1), ``udl_min`` (``sample`` | ``batch``), ``codebook_warmup`` (0: steps
  that train only the LQ encoder with the codebook loss, skipping the decoder; a CPU shortcut,
  not in the paper).
- ``discriminator``: :func:`tokensr.nn.discriminator.build_discriminator` settings
  (default ``{type: unet, nf: 64}``, FeMaSR's U-Net with spectral norm).

Config reading, crops, the validation batch and frozen modules come from the shared task layer
(:class:`tokensr.train.base.TaskBase`); L1, the perceptual term and the GAN (a fixed weight,
no adaptive balance, as the paper) are one :class:`tokensr.nn.losses.ImageLoss`. What stays
here is UGTSR's own: the codebook loss on ``z^l`` / ``z'``, the candidate cross-entropy, the
ESU / UDL terms and the matching accuracies of validation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.errors import OptionError
from tokensr.methods.ugtsr.losses import (
    REDUCE_MIN,
    TokenizerFeatureLoss,
    candidate_cross_entropy,
    codebook_loss,
    esu_loss,
    udl_loss,
)
from tokensr.methods.ugtsr.matching import MatchingAccuracy
from tokensr.methods.ugtsr.model import PRESETS, UGTSR
from tokensr.methods.ugtsr.prior import FeMaSRPrior
from tokensr.nn import losses as L
from tokensr.nn.quantizer import knn_codes
from tokensr.nn.vqgan import VQGAN
from tokensr.pretrained import read_config
from tokensr.train.base import TaskBase
from tokensr.train.batches import image_rows
from tokensr.train.options import check_choice, check_keys, section

log = logging.getLogger(__name__)

LOSS_DEFAULTS: dict[str, Any] = {
    "l1": 1.0,
    "perceptual": 1.0,
    "perceptual_loss": "auto",
    "perceptual_criterion": "l1",
    "gan": 0.1,
    "disc_start": 0,
    "disc_warmup": 0,  # steps from disc_start in which only the discriminator learns (not in the paper)
    "codebook": 1.0,
    "beta": 0.25,
    "alpha": 1.0,
    "codebook_on": None,  # None / "auto": see codebook_targets
    "select": 1.0,
    "esu": 1.0,
    "udl": 1.0,
    "udl_min": "sample",
    "codebook_warmup": 0,
}
UNCERTAINTY_SOURCES = ("estimator", "self")


def load_tokenizer(name_or_path: str) -> VQGAN | FeMaSRPrior:
    """The tokenizer folder (or bundled name) as the model its config names: a tokensr VQGAN,
    or a FeMaSR prior converted with ``tokensr convert FeMaSR_HRP_model_g.pth`` (paper preset)."""
    kind = read_config(name_or_path).get("model_type")
    return (
        FeMaSRPrior.from_pretrained(name_or_path)
        if kind == FeMaSRPrior.model_type
        else VQGAN.from_pretrained(name_or_path)
    )


def build_perceptual_loss(spec: Any, tokenizer: VQGAN | FeMaSRPrior, criterion: str = "l1") -> nn.Module | None:
    """The perceptual term from ``losses.perceptual_loss`` (images in [-1, 1], returns ``[B]``):
    :func:`tokensr.nn.losses.build_perceptual` with UGTSR's substitute, the tokenizer-feature
    loss (:class:`TokenizerFeatureLoss`), for ``auto`` without VGG19 weights and for ``tokenizer``.
    The substitute reads a tokensr VQGAN's encoder; with a FeMaSR prior there is none."""
    substitute = TokenizerFeatureLoss(tokenizer, criterion) if isinstance(tokenizer, VQGAN) else None
    if isinstance(spec, str) and spec.strip().lower() == "tokenizer":
        if substitute is None:
            raise ValueError("perceptual_loss 'tokenizer' needs a tokensr VQGAN tokenizer; use vgg with a FeMaSR prior")
        return substitute
    return L.build_perceptual(spec, input_range=(-1.0, 1.0), criterion=criterion, substitute=substitute)


def codebook_targets(on: str | list[str] | None, fusion_mode: str) -> set[str]:
    """The features ``losses.codebook_on`` puts the codebook loss on. ``None`` / ``auto``:
    ``z^l`` and the fused ``z'`` for a ``residual`` fusion (the ``z'`` term is the correction's
    direct supervision; every run before the option trained so), ``z^l`` alone (eq. 13) for a
    ``select`` fusion, which the candidate cross-entropy supervises instead."""
    if on is None or on == "auto":
        return {"lq", "fused"} if fusion_mode == "residual" else {"lq"}
    return {on} if isinstance(on, str) else set(on)


class _Stage(TaskBase):
    """What both stages share: the model, its losses, validation, export."""

    stage = ""  # "esu" | "udl"
    keys = (
        "tokenizer",
        "init",
        "warm_start",
        "preset",
        "scale",
        "model",
        "uncertainty",
        "uncertainty_from",
        "uncertainty_source",
        "losses",
        "discriminator",
    )
    degradation = "bsrgan"
    model_name = "ugtsr"

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str) -> None:
        super().__init__(cfg, device)
        self.preset = check_choice("preset", self.cfg.get("preset", "small"), PRESETS)
        self.loss_weights = lw = self.read_losses(LOSS_DEFAULTS)
        check_choice("losses.udl_min", lw["udl_min"], REDUCE_MIN)
        on = lw["codebook_on"]
        if on not in (None, "auto"):
            check_keys({on} if isinstance(on, str) else set(on), ("lq", "fused"), "losses.codebook_on")
        self.use_uncertainty = bool(self.cfg.get("uncertainty", True))
        self.model = self._build_model().to(self.device)
        self.codebook_on = codebook_targets(on, self.model.config.fusion_mode)
        self.model.requires_grad_(False)
        for m in self._trained_modules():
            m.requires_grad_(True)
        self.model.train()
        perceptual = None
        if lw["perceptual"] > 0:
            try:
                perceptual = build_perceptual_loss(
                    lw["perceptual_loss"], self.model.tokenizer, str(lw["perceptual_criterion"])
                )
            except ValueError as e:
                raise OptionError(str(e)) from e
            if perceptual is not None:
                perceptual = perceptual.to(self.device).eval().requires_grad_(False)
        self.loss = self.image_loss(
            {**lw, "adaptive": False},
            input_range=(0.0, 1.0),
            perceptual=perceptual,
            discriminator={"type": "unet", "nf": 64},
        )
        self.perceptual = self.loss.perceptual

    # --- model --------------------------------------------------------------------------------
    def _model_overrides(self) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in section(self.cfg, "model").items()}

    def _stage_defaults(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _fresh_model(self) -> UGTSR:
        tok = self.cfg.get("tokenizer")
        if tok is None:
            raise OptionError(f"ugtsr_{self.stage} needs 'tokenizer' (a VQGAN folder or bundled name) or 'init'")
        try:
            tokenizer = tok if isinstance(tok, (VQGAN, FeMaSRPrior)) else load_tokenizer(tok)
        except FileNotFoundError as e:
            raise OptionError(f"tokenizer: {e}") from e
        fields = {**self._stage_defaults(), **self._model_overrides()}
        # stage I needs the head when it learns uncertainty; a fresh stage II has no trained one
        fields.setdefault("uncertainty_head", self.use_uncertainty and self.stage == "esu")
        try:
            return UGTSR.create(
                tokenizer.to(self.device), scale=int(self.cfg.get("scale", 4)), preset=self.preset, **fields
            )
        except ValueError as e:
            raise OptionError(str(e)) from e

    def _load(self, init: Any, **overrides: Any) -> UGTSR:
        if isinstance(init, UGTSR):
            return init
        try:
            return UGTSR.from_stage(init, **overrides)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise OptionError(f"init {init}: {str(e).splitlines()[0]}") from e

    def _init_defaults(self, init: Any) -> dict[str, Any]:
        """Stage defaults applied to an ``init`` model: only when it comes from stage I
        (k = 1, no Align-Attention); a model of this stage continues with its own config."""
        if isinstance(init, UGTSR):
            return {}
        try:
            data = read_config(init)
        except (FileNotFoundError, ValueError) as e:
            raise OptionError(f"init {init}: {e}") from e
        from_stage_one = int(data.get("top_k", 1)) == 1 and not data.get("align_attention", False)
        return self._stage_defaults() if from_stage_one else {}

    def _build_model(self) -> UGTSR:
        init = self.cfg.get("init")
        if init is None:
            model = self._fresh_model()
        else:
            model = self._load(init, **{**self._init_defaults(init), **self._model_overrides()})
            scale = self.cfg.get("scale")
            if scale is not None and int(scale) != model.scale:
                raise OptionError(f"init {init} is x{model.scale}, but scale={scale} was asked for")
        source = self.cfg.get("warm_start")
        if source is not None:
            try:
                copied, bridged, fresh = model.warm_start(source)
            except (FileNotFoundError, ValueError) as e:
                raise OptionError(f"warm_start {source}: {str(e).splitlines()[0]}") from e
            log.info(
                "warm start from %s: %d tensors copied, %d bridged (function-preserving start), %d fresh (%s)",
                source,
                len(copied),
                len(bridged),
                len(fresh),
                ", ".join(fresh[:6]) + (" ..." if len(fresh) > 6 else ""),
            )
        return model

    def _trained_modules(self) -> list[nn.Module]:
        return list(self.model.trainable_modules().values())

    def frozen_modules(self) -> list[nn.Module]:
        return [self.model.tokenizer]

    # --- data ---------------------------------------------------------------------------------
    def crop_size(self, data: Mapping[str, Any]) -> int:
        crop = int(data.get("crop_size", 128))
        f, s = self.model.tokenizer.factor, self.model.scale
        if crop % f or crop % s or (crop // s) % self.model.pad_multiple:
            raise OptionError(f"crop_size {crop} must be a multiple of the tokenizer factor {f} and the scale {s}")
        return crop

    def data_scale(self) -> int | None:
        return self.model.scale

    # --- losses -------------------------------------------------------------------------------
    def _uncertainty_wanted(self) -> bool:
        return False

    def _uncertainty_term(
        self, out: Any, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        return None, {}

    def _codebook_term(self, out: Any, z_gt: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The codebook loss (eq. 9) on ``z^l`` and/or the fused ``z'`` against the HR codes."""
        lw, logs = self.loss_weights, {}
        cb = torch.zeros((), device=self.device)
        if "lq" in self.codebook_on:
            v, parts = codebook_loss(out.z_lq, z_gt, lw["beta"], lw["alpha"])
            cb = cb + v
            logs.update(parts)
        if "fused" in self.codebook_on and out.z_fused is not None:
            v, parts = codebook_loss(out.z_fused, z_gt, lw["beta"], lw["alpha"])
            cb = cb + v
            logs.update({f"fused_{k}": x for k, x in parts.items()})
        return lw["codebook"] * cb, logs

    def _codebook_only(self, hr: torch.Tensor, lr: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Warm-up step: only the LQ encoder and the codebook loss (no decoder pass, about a
        quarter of the cost), to bring ``z^l`` near the codes before the image losses start."""
        _, z = self.model.encoder(lr if self.model.pixels01 else lr * 2 - 1)
        gt = self.model.tokenizer.tokenize(hr)
        lw = self.loss_weights
        loss, logs = codebook_loss(z, self.model.tokenizer.quantizer.lookup(gt), lw["beta"], lw["alpha"])
        logs["match_acc"] = (knn_codes(z, self.model.codebook, 1)[:, 0] == gt).float().mean().item()
        return {"g": loss}, logs

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        self.keep_frozen()
        hr, lr, sample_weight = self.inputs(batch)
        assert lr is not None
        if step < self.loss_weights["codebook_warmup"]:
            return self._codebook_only(hr, lr)
        out = self.model(lr, with_uncertainty=self._uncertainty_wanted())
        sr = out.image
        gt = self.model.tokenizer.tokenize(hr)
        terms = self.loss(sr, hr, step, sample_weight=sample_weight)
        total, logs = terms.g, dict(terms.logs)
        if self.loss_weights["codebook"] > 0:
            cb, parts = self._codebook_term(out, self.model.tokenizer.quantizer.lookup(gt))
            total = total + cb
            logs.update(parts)
        if out.select_logits is not None and self.loss_weights["select"] > 0:
            sel, parts = candidate_cross_entropy(out.select_logits, out.candidates, gt)
            total = total + self.loss_weights["select"] * sel
            logs.update(parts)
        unc, parts = self._uncertainty_term(out, sr, hr, lr)
        logs.update(parts)
        if unc is not None:
            total = total + unc
        with torch.no_grad():
            logs["psnr"] = L.psnr(sr, hr)
            logs["match_acc"] = (out.indices == gt).float().mean().item()
        return terms.per_optimizer(total), logs

    # --- validation / export ------------------------------------------------------------------
    def evaluate(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        hr, lr = batch["hr"], batch["lr"]
        out = self.model(lr, with_uncertainty=self.model.uncertainty is not None)
        sr = out.image.clamp(0, 1)
        gt = self.model.tokenizer.tokenize(hr)
        acc = MatchingAccuracy()
        acc.add(gt, knn_codes(out.z_lq, self.model.codebook, min(5, self.model.codebook.shape[0])), out.indices)
        bicubic = F.interpolate(lr, scale_factor=self.model.scale, mode="bicubic", align_corners=False).clamp(0, 1)
        metrics = {
            "val_psnr": L.psnr(sr, hr),
            "val_psnr_bicubic": L.psnr(bicubic, hr),
            "val_l1": (sr - hr).abs().mean().item(),
        }
        metrics.update({f"val_match_{k}": v for k, v in acc.row().items()})
        rows, name = [bicubic, sr, hr], "bicubic_sr_hr"
        if out.uncertainty is not None:
            s = out.uncertainty.float().mean(1, keepdim=True)
            lo = s.amin(dim=(2, 3), keepdim=True)
            hi = s.amax(dim=(2, 3), keepdim=True)
            rows.append(((s - lo) / (hi - lo).clamp_min(1e-8)).expand(-1, 3, -1, -1))
            name += "_uncertainty"
            metrics["val_uncertainty_mean"] = out.uncertainty.float().mean().item()
        return metrics, {name: image_rows(rows, self.val.images)}

    def _uncertainty_loss_name(self) -> str:
        return "none"

    def export(self, folder: str) -> None:
        """Write the model (with a note of how it was trained in its config)."""
        data = section(self.cfg, "data")
        deg = data.get("degradation", "bsrgan")
        self.model.config.training = {
            "stage": self.stage,
            "uncertainty_loss": self._uncertainty_loss_name(),
            "degradation": deg if isinstance(deg, (str, dict)) else type(deg).__name__,
            "crop_size": int(data.get("crop_size", 128)),
            "perceptual_loss": type(self.perceptual).__name__ if self.perceptual is not None else "none",
            "gan": self.loss_weights["gan"] if self.discriminator is not None else 0.0,
        }
        self.model.save_pretrained(folder)


class ESUTask(_Stage):
    """Stage I: FeMaSR-style matching + the uncertainty head, trained with the ESU loss."""

    name = "ugtsr_esu"
    stage = "esu"

    def _stage_defaults(self) -> dict[str, Any]:
        # the paper: "the Top-k strategy and AA module were not applied" in stage I
        return {"top_k": 1, "align_attention": False}

    def _uncertainty_wanted(self) -> bool:
        return self.use_uncertainty and self.loss_weights["esu"] > 0

    def _build_model(self) -> UGTSR:
        model = super()._build_model()
        if self.use_uncertainty and model.uncertainty is None:
            raise OptionError("uncertainty is on but the model has no uncertainty head (model.uncertainty_head)")
        return model

    def _uncertainty_loss_name(self) -> str:
        return "esu" if self._uncertainty_wanted() else "none"

    def _uncertainty_term(
        self, out: Any, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        if out.uncertainty is None:
            return None, {}
        esu = esu_loss(sr, hr, out.uncertainty)
        return self.loss_weights["esu"] * esu, {"esu": esu.item(), "s_mean": out.uncertainty.float().mean().item()}


class UDLTask(_Stage):
    """Stage II: Top-k fusion + Align-Attention, trained with the UDL loss (frozen uncertainty)."""

    name = "ugtsr_udl"
    stage = "udl"

    def __init__(self, cfg: dict[str, Any], device: torch.device | str) -> None:
        self.source = check_choice(
            "uncertainty_source", dict(cfg).get("uncertainty_source", "estimator"), UNCERTAINTY_SOURCES
        )
        self.estimator: UGTSR | None = None
        super().__init__(cfg, device)
        if self.use_uncertainty and self.loss_weights["udl"] > 0:
            if self.source == "estimator":
                self.estimator = self._build_estimator()
            elif self.model.uncertainty is None:
                raise OptionError("uncertainty_source 'self' needs a model with a trained uncertainty head (init)")

    def _stage_defaults(self) -> dict[str, Any]:
        return {"top_k": 3, "align_attention": True}

    def _build_estimator(self) -> UGTSR:
        """The frozen stage-I model that predicts the uncertainty maps (shares the tokenizer)."""
        src = self.cfg.get("uncertainty_from", self.cfg.get("init"))
        if src is None:
            raise OptionError(
                "the UDL loss needs the stage-I model: set init or uncertainty_from "
                "(or uncertainty=false for the plain-L1 variant)"
            )
        est = src if isinstance(src, UGTSR) else self._load(src)
        if est.uncertainty is None:
            raise OptionError(f"uncertainty_from {src}: that model has no uncertainty head (train stage I first)")
        if est.scale != self.model.scale:
            raise OptionError(f"uncertainty_from {src} is x{est.scale}, this stage is x{self.model.scale}")
        est.tokenizer = self.model.tokenizer  # share the frozen tokenizer
        return est.to(self.device).eval().requires_grad_(False)

    def _trained_modules(self) -> list[nn.Module]:
        # the uncertainty head stays as stage I left it
        return [m for name, m in self.model.trainable_modules().items() if name != "uncertainty"]

    def frozen_modules(self) -> list[nn.Module]:
        return super().frozen_modules() + ([self.estimator] if self.estimator is not None else [])

    def modules(self) -> dict[str, nn.Module]:
        mods = super().modules()
        if self.estimator is not None:
            mods["estimator"] = self.estimator
        return mods

    def _uncertainty_wanted(self) -> bool:
        return self.use_uncertainty and self.loss_weights["udl"] > 0 and self.source == "self"

    def _uncertainty_loss_name(self) -> str:
        return "udl" if self.use_uncertainty and self.loss_weights["udl"] > 0 else "none"

    @torch.no_grad()
    def uncertainty_map(self, lr: torch.Tensor, out: Any = None) -> torch.Tensor:
        """The frozen log-uncertainty ``s`` for an LR batch (stage-I estimator or own head)."""
        if self.source == "self":
            if out is None or out.uncertainty is None:
                out = self.model(lr, with_uncertainty=True)
            return out.uncertainty.detach()
        assert self.estimator is not None
        self.estimator.eval()
        return self.estimator(lr, with_uncertainty=True).uncertainty

    def _uncertainty_term(
        self, out: Any, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        if not (self.use_uncertainty and self.loss_weights["udl"] > 0):
            return None, {}
        s = self.uncertainty_map(lr, out)
        udl = udl_loss(sr, hr, s, self.loss_weights["udl_min"])
        return self.loss_weights["udl"] * udl, {"udl": udl.item()}


__all__ = ["ESUTask", "UDLTask", "build_perceptual_loss", "codebook_targets"]
