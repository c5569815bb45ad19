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
"plain L1" variant); ``model: {top_k: 1 | 3 | 5, align_attention: ...}`` sets the other
switches.

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
- ``val_data`` (default: ``data`` with another seed, no augmentation), ``val_count`` (4).
- ``losses``: ``l1`` (1), ``perceptual`` (1; weight), ``perceptual_loss`` (``auto``: VGG19 when
  its weights are found (``TOKENSR_VGG19``), else the substitute ``tokenizer`` feature loss;
  or ``vgg``, a path to the VGG19 file, ``tokenizer``, ``ms_ssim``, ``none``),
  ``perceptual_criterion`` (``l1``), ``gan`` (0.1; 0 = off), ``disc_start`` (0),
  ``codebook`` (1), ``beta`` (0.25), ``alpha`` (1; Gram), ``codebook_on`` (``[lq, fused]``),
  ``esu`` (1), ``udl`` (1), ``udl_min`` (``sample`` | ``batch``), ``codebook_warmup`` (0: steps
  that train only the LQ encoder with the codebook loss, skipping the decoder; a CPU shortcut,
  not in the paper).
- ``discriminator``: :func:`tokensr.nn.discriminator.build_discriminator` settings
  (default ``{type: unet, nf: 64}``, FeMaSR's U-Net with spectral norm).
"""
from __future__ import annotations

import difflib
import logging
import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tokensr.errors import OptionError
from tokensr.methods.ugtsr.losses import REDUCE_MIN, TokenizerFeatureLoss, codebook_loss, esu_loss, udl_loss
from tokensr.methods.ugtsr.matching import MatchingAccuracy
from tokensr.methods.ugtsr.model import PRESETS, UGTSR, knn_codes
from tokensr.nn.vqgan import VQGAN
from tokensr.pretrained import read_config

log = logging.getLogger(__name__)

VAL_SEED_OFFSET = 1_000_003
TOP_KEYS = ("tokenizer", "init", "warm_start", "preset", "scale", "model", "uncertainty", "uncertainty_from", "uncertainty_source",
            "data", "val_data", "val_count", "losses", "discriminator")
LOSS_DEFAULTS: dict[str, Any] = {
    "l1": 1.0,
    "perceptual": 1.0,
    "perceptual_loss": "auto",
    "perceptual_criterion": "l1",
    "gan": 0.1,
    "disc_start": 0,
    "codebook": 1.0,
    "beta": 0.25,
    "alpha": 1.0,
    "codebook_on": ["lq", "fused"],
    "esu": 1.0,
    "udl": 1.0,
    "udl_min": "sample",
    "codebook_warmup": 0,
}
UNCERTAINTY_SOURCES = ("estimator", "self")


def _unknown(keys: Iterable[str], allowed: Iterable[str], where: str) -> None:
    allowed = list(allowed)
    for k in keys:
        if k not in allowed:
            close = difflib.get_close_matches(k, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(allowed)})"
            raise OptionError(f"unknown {where} key '{k}'{hint}")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.detach().float().clamp(0, 1), b.float()).item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def _weighted(per_sample: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (per_sample * w).sum() / w.sum().clamp_min(1e-8)


def build_perceptual_loss(spec: Any, tokenizer: VQGAN, criterion: str = "l1") -> nn.Module | None:
    """The perceptual term from ``losses.perceptual_loss`` (images in [-1, 1], returns ``[B]``).

    ``auto``: the VGG19 loss when its weights are found, else the documented substitute
    (:class:`TokenizerFeatureLoss`); ``vgg``: VGG19 (error without weights); a path: that VGG19
    file; ``tokenizer``; ``ms_ssim`` (1 - MS-SSIM); ``none``.
    """
    from tokensr.nn import losses as L
    from tokensr.nn.vgg import find_vgg19

    if spec is None or spec is False:
        return None
    text = str(spec).strip()
    key = text.lower()
    if key in ("none", "off", "false", ""):
        return None
    if key == "tokenizer":
        return TokenizerFeatureLoss(tokenizer, criterion)
    if key == "ms_ssim":
        return L.MSSSIMLoss((-1.0, 1.0))
    if key == "auto":
        path = find_vgg19(None)
        if path is None:
            log.warning("no VGG19 weights found (set TOKENSR_VGG19=FILE): the perceptual term uses the "
                        "substitute tokenizer-feature loss (docs/ugtsr.md)")
            return TokenizerFeatureLoss(tokenizer, criterion)
        return L.PerceptualLoss(path, criterion=criterion)
    if key == "vgg":
        return L.PerceptualLoss(None, criterion=criterion)
    return L.PerceptualLoss(text, criterion=criterion)


class _Stage:
    """What both stages share: config, model, data, losses, validation, export."""

    stage = ""  # "esu" | "udl"

    def __init__(self, cfg: dict[str, Any], device: torch.device | str) -> None:
        self.cfg = dict(cfg)
        _unknown(self.cfg, TOP_KEYS, f"ugtsr_{self.stage} task_config")
        self.device = torch.device(device)
        preset = str(self.cfg.get("preset", "small"))
        if preset not in PRESETS:
            raise OptionError(f"unknown ugtsr preset '{preset}' (choose from {', '.join(PRESETS)})")
        self.preset = preset
        w = dict(self.cfg.get("losses") or {})
        _unknown(w, LOSS_DEFAULTS, "losses")
        self.w = {**LOSS_DEFAULTS, **w}
        for k in ("l1", "perceptual", "gan", "codebook", "beta", "alpha", "esu", "udl"):
            self.w[k] = float(self.w[k])
        self.w["disc_start"] = int(self.w["disc_start"])
        self.w["codebook_warmup"] = int(self.w["codebook_warmup"])
        if self.w["udl_min"] not in REDUCE_MIN:
            raise OptionError(f"losses.udl_min must be one of {', '.join(REDUCE_MIN)}, got '{self.w['udl_min']}'")
        on = self.w["codebook_on"]
        self.codebook_on = {on} if isinstance(on, str) else set(on)
        _unknown(self.codebook_on, ("lq", "fused"), "losses.codebook_on")
        self.use_uncertainty = bool(self.cfg.get("uncertainty", True))
        self.model = self._build_model().to(self.device)
        self.model.requires_grad_(False)
        for m in self._trained_modules():
            m.requires_grad_(True)
        self.model.train()
        self.perceptual: nn.Module | None = None
        if self.w["perceptual"] > 0:
            try:
                self.perceptual = build_perceptual_loss(
                    self.w["perceptual_loss"], self.model.tokenizer, str(self.w["perceptual_criterion"]))
            except ValueError as e:
                raise OptionError(str(e)) from e
            if self.perceptual is not None:
                self.perceptual = self.perceptual.to(self.device).eval().requires_grad_(False)
        self.discriminator: nn.Module | None = None
        if self.w["gan"] > 0:
            from tokensr.nn.discriminator import build_discriminator

            dcfg = dict(self.cfg.get("discriminator") or {"type": "unet", "nf": 64})
            self.discriminator = build_discriminator(dcfg).to(self.device).train()
        self.val_batch: dict[str, torch.Tensor] | None = None  # built lazily; tests may set it

    # --- model --------------------------------------------------------------------------------
    def _model_overrides(self) -> dict[str, Any]:
        over = dict(self.cfg.get("model") or {})
        return {k: tuple(v) if isinstance(v, list) else v for k, v in over.items()}

    def _stage_defaults(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _fresh_model(self) -> UGTSR:
        tok = self.cfg.get("tokenizer")
        if tok is None:
            raise OptionError(f"ugtsr_{self.stage} needs 'tokenizer' (a VQGAN folder or bundled name) or 'init'")
        try:
            tokenizer = tok if isinstance(tok, VQGAN) else VQGAN.from_pretrained(tok)
        except FileNotFoundError as e:
            raise OptionError(f"tokenizer: {e}") from e
        fields = {**self._stage_defaults(), **self._model_overrides()}
        # stage I needs the head when it learns uncertainty; a fresh stage II has no trained one
        fields.setdefault("uncertainty_head", self.use_uncertainty and self.stage == "esu")
        try:
            return UGTSR.create(tokenizer.to(self.device), scale=int(self.cfg.get("scale", 4)), preset=self.preset,
                                **fields)
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
            log.info("warm start from %s: %d tensors copied, %d bridged (function-preserving start), %d fresh (%s)",
                     source, len(copied), len(bridged), len(fresh),
                     ", ".join(fresh[:6]) + (" ..." if len(fresh) > 6 else ""))
        return model

    def _trained_modules(self) -> list[nn.Module]:
        return list(self.model.trainable_modules().values())

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"ugtsr": self.model}
        if self.discriminator is not None:
            mods["discriminator"] = self.discriminator
        return mods

    def ema_modules(self) -> list[str]:
        return ["ugtsr"]

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        groups: dict[str, Iterable[nn.Parameter]] = {"g": [p for p in self.model.parameters() if p.requires_grad]}
        if self.discriminator is not None:
            groups["d"] = list(self.discriminator.parameters())
        return groups

    # --- data ---------------------------------------------------------------------------------
    def _dataset(self, data: dict[str, Any], seed_offset: int = 0, length: int | None = None,
                 augment: bool = True) -> Dataset[Any]:
        from tokensr.data.datasets import HRCropDataset

        if not data.get("root"):
            raise OptionError(f"ugtsr_{self.stage} needs data.root (a folder of HR images)")
        kwargs = {k: v for k, v in data.items() if k not in ("crop_size", "scale")}
        kwargs.setdefault("degradation", "bsrgan")
        kwargs["seed"] = int(kwargs.get("seed", 0)) + seed_offset
        if not augment:
            kwargs["augment"] = False
        if length is not None:
            kwargs["length"] = length
            kwargs.pop("cache_dir", None)
        crop = int(data.get("crop_size", 128))
        f, s = self.model.tokenizer.factor, self.model.scale
        if crop % f or crop % s or (crop // s) % self.model.pad_multiple:
            raise OptionError(f"crop_size {crop} must be a multiple of the tokenizer factor {f} and the scale {s}")
        try:
            return HRCropDataset(crop_size=crop, scale=s, **kwargs)
        except TypeError as e:
            raise OptionError(f"bad data option: {e}") from e

    def train_dataset(self) -> Dataset[Any]:
        return self._dataset(dict(self.cfg.get("data") or {}))

    def _validation_batch(self) -> dict[str, torch.Tensor] | None:
        if self.val_batch is None:
            data = self.cfg.get("val_data") or self.cfg.get("data")
            if not data or not data.get("root"):
                return None
            count = int(self.cfg.get("val_count", 4))
            ds = self._dataset(dict(data), VAL_SEED_OFFSET, length=count, augment=False)
            items = [ds[i] for i in range(count)]
            self.val_batch = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("hr", "lr")}
        return {k: v.to(self.device) for k, v in self.val_batch.items()}

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hr = batch["hr"].to(self.device, torch.float32)
        lr = batch["lr"].to(self.device, torch.float32)
        w = batch.get("weight")
        weight = torch.ones(hr.shape[0], device=self.device) if w is None else w.to(self.device, torch.float32).view(-1)
        return hr, lr, weight

    # --- losses -------------------------------------------------------------------------------
    def _uncertainty_wanted(self) -> bool:
        return False

    def _uncertainty_term(self, out: Any, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        return None, {}

    def _generator(self, hr: torch.Tensor, lr: torch.Tensor, w: torch.Tensor, step: int,
                   train_d: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, float], Any]:
        out = self.model(lr, with_uncertainty=self._uncertainty_wanted())
        sr = out.image
        logs: dict[str, float] = {}
        gt = self.model.gt_indices(hr)
        z_gt = self.model.tokenizer.quantizer.lookup(gt)
        total = torch.zeros((), device=self.device)
        if self.w["codebook"] > 0:
            cb = torch.zeros((), device=self.device)
            if "lq" in self.codebook_on:
                v, parts = codebook_loss(out.z_lq, z_gt, self.w["beta"], self.w["alpha"])
                cb = cb + v
                logs.update(parts)
            if "fused" in self.codebook_on and out.z_fused is not None:
                v, parts = codebook_loss(out.z_fused, z_gt, self.w["beta"], self.w["alpha"])
                cb = cb + v
                logs.update({f"fused_{k}": x for k, x in parts.items()})
            total = total + self.w["codebook"] * cb
        if self.w["l1"] > 0:
            l1 = _weighted((sr - hr).abs().flatten(1).mean(1), w)
            total = total + self.w["l1"] * l1
            logs["l1"] = l1.item()
        if self.perceptual is not None:
            per = _weighted(self.perceptual(sr * 2 - 1, hr * 2 - 1).float(), w)
            total = total + self.w["perceptual"] * per
            logs["perceptual"] = per.item()
        unc, parts = self._uncertainty_term(out, sr, hr, lr)
        logs.update(parts)
        if unc is not None:
            total = total + unc
        result: dict[str, torch.Tensor] = {}
        if self.discriminator is not None and step >= self.w["disc_start"]:
            g_adv = -self.discriminator(sr * 2 - 1).float().mean()
            total = total + self.w["gan"] * g_adv
            logs["g_adv"] = g_adv.item()
            if train_d:
                real = self.discriminator(hr * 2 - 1).float()
                fake = self.discriminator(sr.detach() * 2 - 1).float()
                result["d"] = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
                logs.update(d_hinge=result["d"].item(), logits_real=real.mean().item(), logits_fake=fake.mean().item())
        result["g"] = total
        with torch.no_grad():
            logs["psnr"] = _psnr(sr, hr)
            logs["match_acc"] = (out.indices == gt).float().mean().item()
        return result, logs, out

    def _codebook_only(self, hr: torch.Tensor, lr: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Warm-up step: only the LQ encoder and the codebook loss (no decoder pass, about a
        quarter of the cost), to bring ``z^l`` near the codes before the image losses start."""
        _, z = self.model.encoder(lr * 2 - 1)
        gt = self.model.gt_indices(hr)
        loss, logs = codebook_loss(z, self.model.tokenizer.quantizer.lookup(gt), self.w["beta"], self.w["alpha"])
        logs["match_acc"] = (knn_codes(z, self.model.codebook, 1)[:, 0] == gt).float().mean().item()
        return {"g": loss}, logs

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        hr, lr, w = self._inputs(batch)
        if step < self.w["codebook_warmup"]:
            return self._codebook_only(hr, lr)
        result, logs, _ = self._generator(hr, lr, w, step)
        return result, logs

    # --- validation / export ------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        batch = self._validation_batch()
        if batch is None:
            return {}, {}
        was = self.model.training
        self.model.eval()
        try:
            hr, lr = batch["hr"], batch["lr"]
            out = self.model(lr, with_uncertainty=self.model.uncertainty is not None)
            sr = out.image.clamp(0, 1)
            gt = self.model.gt_indices(hr)
            acc = MatchingAccuracy()
            acc.add(gt, knn_codes(out.z_lq, self.model.codebook, min(5, self.model.codebook.shape[0])), out.indices)
            bicubic = F.interpolate(lr, scale_factor=self.model.scale, mode="bicubic", align_corners=False).clamp(0, 1)
            metrics = {"val_psnr": _psnr(sr, hr), "val_psnr_bicubic": _psnr(bicubic, hr),
                       "val_l1": (sr - hr).abs().mean().item()}
            metrics.update({f"val_match_{k}": v for k, v in acc.row().items()})
            panels = [bicubic[0], sr[0], hr[0]]
            name = "bicubic|sr|hr"
            if out.uncertainty is not None:
                s = out.uncertainty[0].float().mean(0, keepdim=True)
                s = (s - s.min()) / (s.max() - s.min()).clamp_min(1e-8)
                panels.append(s.expand(3, -1, -1))
                name += "|uncertainty"
                metrics["val_uncertainty_mean"] = out.uncertainty.float().mean().item()
        finally:
            self.model.train(was)
        return metrics, {name: torch.cat(panels, dim=2)}

    def _uncertainty_loss_name(self) -> str:
        return "none"

    def export(self, folder: str) -> None:
        """Write the model (with a note of how it was trained in its config)."""
        data = dict(self.cfg.get("data") or {})
        deg = data.get("degradation", "bsrgan")
        self.model.config.training = {
            "stage": self.stage,
            "uncertainty_loss": self._uncertainty_loss_name(),
            "degradation": deg if isinstance(deg, (str, dict)) else type(deg).__name__,
            "crop_size": int(data.get("crop_size", 128)),
            "perceptual_loss": type(self.perceptual).__name__ if self.perceptual is not None else "none",
            "gan": self.w["gan"] if self.discriminator is not None else 0.0,
        }
        self.model.save_pretrained(folder)


class ESUTask(_Stage):
    """Stage I: FeMaSR-style matching + the uncertainty head, trained with the ESU loss."""

    stage = "esu"

    def _stage_defaults(self) -> dict[str, Any]:
        # the paper: "the Top-k strategy and AA module were not applied" in stage I
        return {"top_k": 1, "align_attention": False}

    def _uncertainty_wanted(self) -> bool:
        return self.use_uncertainty and self.w["esu"] > 0

    def _build_model(self) -> UGTSR:
        model = super()._build_model()
        if self.use_uncertainty and model.uncertainty is None:
            raise OptionError("uncertainty is on but the model has no uncertainty head (model.uncertainty_head)")
        return model

    def _uncertainty_loss_name(self) -> str:
        return "esu" if self._uncertainty_wanted() else "none"

    def _uncertainty_term(self, out: Any, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        if out.uncertainty is None:
            return None, {}
        esu = esu_loss(sr, hr, out.uncertainty)
        return self.w["esu"] * esu, {"esu": esu.item(), "s_mean": out.uncertainty.float().mean().item()}


class UDLTask(_Stage):
    """Stage II: Top-k fusion + Align-Attention, trained with the UDL loss (frozen uncertainty)."""

    stage = "udl"

    def __init__(self, cfg: dict[str, Any], device: torch.device | str) -> None:
        source = str(dict(cfg).get("uncertainty_source", "estimator"))
        if source not in UNCERTAINTY_SOURCES:
            raise OptionError(f"uncertainty_source must be one of {', '.join(UNCERTAINTY_SOURCES)}, got '{source}'")
        self.source = source
        self.estimator: UGTSR | None = None
        super().__init__(cfg, device)
        if self.use_uncertainty and self.w["udl"] > 0:
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
            raise OptionError("the UDL loss needs the stage-I model: set init or uncertainty_from "
                              "(or uncertainty=false for the plain-L1 variant)")
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

    def modules(self) -> dict[str, nn.Module]:
        mods = super().modules()
        if self.estimator is not None:
            mods["estimator"] = self.estimator
        return mods

    def _uncertainty_wanted(self) -> bool:
        return self.use_uncertainty and self.w["udl"] > 0 and self.source == "self"

    def _uncertainty_loss_name(self) -> str:
        return "udl" if self.use_uncertainty and self.w["udl"] > 0 else "none"

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

    def _uncertainty_term(self, out: Any, sr: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        if not (self.use_uncertainty and self.w["udl"] > 0):
            return None, {}
        s = self.uncertainty_map(lr, out)
        udl = udl_loss(sr, hr, s, self.w["udl_min"])
        return self.w["udl"] * udl, {"udl": udl.item()}


__all__ = ["ESUTask", "UDLTask", "build_perceptual_loss"]
