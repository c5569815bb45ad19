"""ITER training as engine tasks (see ``tokensr.train.task``): the paper's Eq. 2 and Algorithm 1.

One task class does all of it; ``train`` names the networks it trains (the others are
frozen), so the same code runs the paper's joint training and a staged schedule:

- ``train: [lq_encoder]`` (:class:`LQEncoderTask`): ``E_l`` learns to predict the
  ground-truth HR tokens ``S_h`` from the LR image (cross-entropy, Eq. 2), optionally with a
  pixel L1 loss through a hard Gumbel-softmax decode by the frozen tokenizer decoder.
- ``train: [refine, evaluator]`` (:class:`RefineEvalTask`): with ``E_l`` frozen, Algorithm 1:
  ``r ~ U(0, 1]``, ``ceil(gamma(r) N)`` random tokens of ``S_h`` masked (cosine schedule),
  ``phi_r(S_t, S_l, m_t)`` predicts ``S_h`` (cross-entropy, Eq. 4: on every token by default,
  ``refine_tokens: masked`` for the masked ones only), and ``phi_e`` learns which tokens are
  good (Eq. 5) for ``S_l`` (label ``S_l == S_h``, class-balanced cross-entropy, beta 0.9999)
  and for the refined prediction ``argmax phi_r`` (label ``pred == S_h``; plain
  cross-entropy as the reference code, ``eval_balance: both`` balances it too).
- ``train: [lq_encoder, refine, evaluator]`` (:class:`ITERTask`, the default): all at once, as
  the paper found works well; ``S_l`` is the current ``E_l``'s argmax (no gradient).

The refinement network also sees which ``S_l`` tokens ``phi_e`` judges good (argmax of
``phi_e(S_l)``, no gradient), as the reference code feeds it.

Task config keys (``task_config``):

- ``tokenizer``: a VQGAN folder or bundled name (``vqgan-small``), for a fresh model;
  ``init``: an ITER folder to continue from (required when ``lq_encoder`` is not trained).
- ``preset`` (``small`` | ``paper`` | ``tiny``) and per-network overrides ``lq_encoder``,
  ``refine``, ``evaluator``; ``scale`` (4); ``steps`` (8) and ``alpha`` (0.5): the inference
  defaults stored with the model.
- ``train``: see above.
- ``losses``: ``dist`` (1), ``pixel`` (0: off), ``refine`` (1), ``eval`` (1), ``gumbel_tau``
  (1), ``refine_tokens`` (``all`` | ``masked``), ``eval_balance`` (``lq`` | ``both`` |
  ``none``), ``beta`` (0.9999), ``mask_schedule`` (``cosine`` | ``linear``).
- ``data``: keyword arguments of :class:`tokensr.data.datasets.HRCropDataset` (``root``,
  ``crop_size`` (preset: 128 small, 256 paper), ``degradation`` (``realesrgan``), ``seed``,
  ``length``, ``texture_threshold``, ``cache_dir``...); ``val_data`` (default: ``data`` with
  another seed, no augmentation); ``val``: ``{count: 4, images: 4, steps, alpha}``.
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
from tokensr.methods.iter.model import ITER, PRESETS
from tokensr.methods.iter.refine import class_balanced_cross_entropy
from tokensr.methods.iter.sampling import SCHEDULES, training_keep_mask
from tokensr.nn.vqgan import VQGAN

log = logging.getLogger(__name__)

PARTS = ("lq_encoder", "refine", "evaluator")
TOP_KEYS = ("tokenizer", "init", "preset", "lq_encoder", "refine", "evaluator", "scale", "steps", "alpha",
            "train", "losses", "data", "val_data", "val")
LOSS_DEFAULTS: dict[str, Any] = {
    "dist": 1.0,
    "pixel": 0.0,
    "refine": 1.0,
    "eval": 1.0,
    "gumbel_tau": 1.0,
    "refine_tokens": "all",
    "eval_balance": "lq",
    "beta": 0.9999,
    "mask_schedule": "cosine",
}
VAL_SEED_OFFSET = 1_000_033


def _unknown(keys: Iterable[str], allowed: Iterable[str], where: str) -> None:
    allowed = list(allowed)
    for k in keys:
        if k not in allowed:
            close = difflib.get_close_matches(k, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(allowed)})"
            raise OptionError(f"unknown {where} key '{k}'{hint}")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = F.mse_loss(a.clamp(0, 1).float(), b.float()).item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def _weighted_mean(per_token: torch.Tensor, w: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``per_token`` ``[B, ...]`` with per-sample weights ``w`` ``[B]`` (over ``select`` if given)."""
    tw = w.view(-1, *([1] * (per_token.dim() - 1))).expand_as(per_token)
    if select is not None:
        tw = tw * select.float()
    return (per_token * tw).sum() / tw.sum().clamp_min(1e-8)


def _strip(images: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat(list(images[:n].clamp(0, 1).float().cpu()), dim=2)


class ITERTask:
    """Trains the networks named in ``train`` (default: all three, jointly as the paper)."""

    default_train: tuple[str, ...] = PARTS

    def __init__(self, cfg: dict[str, Any], device: torch.device | str) -> None:
        self.cfg = dict(cfg)
        _unknown(self.cfg, TOP_KEYS, "iter task_config")
        self.device = torch.device(device)
        preset = str(self.cfg.get("preset", "small"))
        if preset not in PRESETS:
            raise OptionError(f"unknown iter preset '{preset}' (choose from {', '.join(PRESETS)})")
        self.preset = PRESETS[preset]
        parts = self.cfg.get("train", list(self.default_train))
        if isinstance(parts, str):
            parts = [parts]
        parts = list(parts)
        _unknown(parts, PARTS, "train")
        if not parts:
            raise OptionError("train must name at least one of lq_encoder, refine, evaluator")
        self.parts = tuple(p for p in PARTS if p in parts)
        lcfg = dict(self.cfg.get("losses") or {})
        _unknown(lcfg, LOSS_DEFAULTS, "losses")
        self.w = {**LOSS_DEFAULTS, **lcfg}
        for k in ("dist", "pixel", "refine", "eval", "gumbel_tau", "beta"):
            self.w[k] = float(self.w[k])
        for k, choices in (("refine_tokens", ("all", "masked")), ("eval_balance", ("lq", "both", "none")),
                           ("mask_schedule", SCHEDULES)):
            if self.w[k] not in choices:
                raise OptionError(f"losses.{k} must be one of {', '.join(choices)}, got '{self.w[k]}'")
        self.model = self._build_model().to(self.device)
        self.model.requires_grad_(False)
        for part in self.parts:
            self._part(part).requires_grad_(True)
        self.model.tokenizer.requires_grad_(False)
        self.val_batch: dict[str, torch.Tensor] | None = None  # built lazily; tests may set it

    # --- model ---------------------------------------------------------------------------------
    def _net_cfg(self, name: str) -> dict[str, Any]:
        return {**getattr(self.preset, name), **(self.cfg.get(name) or {})}

    def _build_model(self) -> ITER:
        init = self.cfg.get("init")
        try:
            if init is not None:
                model = init if isinstance(init, ITER) else ITER.from_pretrained(str(init))
                if "scale" in self.cfg and int(self.cfg["scale"]) != model.scale:
                    raise OptionError(f"init {init} is an x{model.scale} model, but scale={self.cfg['scale']}")
            else:
                if "lq_encoder" not in self.parts:
                    raise OptionError("training without lq_encoder needs init: the ITER folder of the LQ-encoder stage")
                tok = self.cfg.get("tokenizer")
                if tok is None:
                    raise OptionError("the iter task needs tokenizer (a VQGAN folder or bundled name) or init")
                tokenizer = tok if isinstance(tok, VQGAN) else VQGAN.from_pretrained(str(tok))
                model = ITER.create(tokenizer.to(self.device), self._net_cfg("lq_encoder"),
                                    scale=int(self.cfg.get("scale", 4)))
        except FileNotFoundError as e:
            raise OptionError(f"{'init' if init is not None else 'tokenizer'}: {e}") from e
        except (TypeError, ValueError) as e:
            raise OptionError(f"bad iter model option: {e}") from e
        if "steps" in self.cfg:
            model.config.steps = int(self.cfg["steps"])
        if "alpha" in self.cfg:
            model.config.alpha = float(self.cfg["alpha"])
        if model.refine is None and ("refine" in self.parts or "evaluator" in self.parts):
            model.add_refine(self._net_cfg("refine"))
        if model.evaluator is None and ("refine" in self.parts or "evaluator" in self.parts):
            model.add_evaluator(self._net_cfg("evaluator"))
        return model

    def _part(self, name: str) -> nn.Module:
        module = getattr(self.model, name)
        assert module is not None
        return module  # type: ignore[no-any-return]

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"tokenizer": self.model.tokenizer, "lq_encoder": self.model.lq_encoder}
        if self.model.refine is not None:
            mods["refine"] = self.model.refine
        if self.model.evaluator is not None:
            mods["evaluator"] = self.model.evaluator
        return mods

    def ema_modules(self) -> list[str]:
        return list(self.parts)

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        params = [p for part in self.parts for p in self._part(part).parameters() if p.requires_grad]
        return {"g": params}

    # --- data ----------------------------------------------------------------------------------
    def crop_size(self, data: dict[str, Any]) -> int:
        crop = int(data.get("crop_size", self.preset.crop_size))
        unit = self.model.scale * self.model.lr_multiple
        if crop % unit:
            raise OptionError(f"crop_size {crop} must be a multiple of {unit} (scale x{self.model.scale}, tokenizer f={self.model.factor})")
        return crop

    def _dataset(self, data: dict[str, Any], seed_offset: int = 0, length: int | None = None,
                 augment: bool = True) -> Dataset[Any]:
        from tokensr.data.datasets import HRCropDataset

        if not data.get("root"):
            raise OptionError("the iter task needs data.root: a folder of HR training images (data.root=FOLDER)")
        kwargs = {k: v for k, v in data.items() if k not in ("crop_size", "scale")}
        kwargs.setdefault("degradation", "realesrgan")
        kwargs["seed"] = int(kwargs.get("seed", 0)) + seed_offset
        if not augment:
            kwargs["augment"] = False
        if length is not None:
            kwargs["length"] = length
            kwargs.pop("cache_dir", None)
        try:
            return HRCropDataset(crop_size=self.crop_size(data), scale=self.model.scale, **kwargs)
        except TypeError as e:
            raise OptionError(f"bad data option: {e}") from e

    def train_dataset(self) -> Dataset[Any]:
        return self._dataset(dict(self.cfg.get("data") or {}))

    def _validation_batch(self) -> dict[str, torch.Tensor] | None:
        if self.val_batch is None:
            data = self.cfg.get("val_data") or self.cfg.get("data")
            if not data or not data.get("root"):
                return None
            count = int((self.cfg.get("val") or {}).get("count", 4))
            ds = self._dataset(dict(data), VAL_SEED_OFFSET, length=count, augment=False)
            items = [ds[i] for i in range(count)]
            self.val_batch = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("hr", "lr")}
        return {k: v.to(self.device) for k, v in self.val_batch.items()}

    # --- losses --------------------------------------------------------------------------------
    def _frozen_eval(self) -> None:
        """The tokenizer (EMA codebook) and frozen networks stay in eval mode."""
        self.model.tokenizer.eval()
        for name in PARTS:
            module = getattr(self.model, name)
            if module is not None and name not in self.parts:
                module.eval()

    def _loss(
        self, hr: torch.Tensor, lr: torch.Tensor, w: torch.Tensor, generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self._frozen_eval()
        m = self.model
        target = m.hr_tokens(hr)  # S_h [B, h, w]
        total = torch.zeros((), device=self.device)
        logs: dict[str, float] = {}
        # --- E_l (Eq. 2) ---
        if "lq_encoder" in self.parts:
            lq_logits = m.lq_logits(lr)
            if lq_logits.shape[-2:] != target.shape[-2:]:
                raise OptionError(f"LQ token grid {tuple(lq_logits.shape[-2:])} != HR token grid {tuple(target.shape[-2:])}")
            ce = F.cross_entropy(lq_logits.float(), target, reduction="none")
            dist = _weighted_mean(ce, w)
            total = total + self.w["dist"] * dist
            lq = lq_logits.detach().argmax(1)
            logs["dist_ce"] = dist.item()
            if self.w["pixel"] > 0:
                onehot = F.gumbel_softmax(lq_logits.float(), tau=self.w["gumbel_tau"], hard=True, dim=1)
                img = m.decode_onehot(onehot)
                pix = _weighted_mean((img - hr).abs().mean(1), w)
                total = total + self.w["pixel"] * pix
                logs["pixel_l1"] = pix.item()
        else:
            with torch.no_grad():
                lq = m.lq_tokens(lr)
        logs["lq_acc"] = (lq == target).float().mean().item()
        # --- phi_r and phi_e (Algorithm 1, Eqs. 4-5) ---
        if m.can_refine and ("refine" in self.parts or "evaluator" in self.parts):
            refine, evaluator = m.refine, m.evaluator
            assert refine is not None and evaluator is not None
            b, h, wd = target.shape
            grad = torch.is_grad_enabled()
            train_eval = "evaluator" in self.parts
            train_refine = "refine" in self.parts
            with torch.set_grad_enabled(grad and train_eval):
                e_lq = evaluator(lq, lq)
            lq_label = (lq == target).long()
            lq_good = e_lq.detach().argmax(1).bool()
            keep = training_keep_mask(b, h * wd, self.device, self.w["mask_schedule"], generator).view(b, h, wd)
            s_t = torch.where(keep, target, torch.full_like(target, m.mask_id))
            with torch.set_grad_enabled(grad and train_refine):
                r_logits = refine(s_t, lq, lq_good)
            if train_refine:
                ce = F.cross_entropy(r_logits.float(), target, reduction="none")
                sel = ~keep if self.w["refine_tokens"] == "masked" else None
                l_ref = _weighted_mean(ce, w, sel)
                total = total + self.w["refine"] * l_ref
                logs["refine_ce"] = l_ref.item()
            pred = r_logits.detach().argmax(1)
            pred_label = (pred == target).long()
            logs["refine_acc_masked"] = (pred_label.bool() & ~keep).float().sum().item() / max(int((~keep).sum()), 1)
            logs["mask_ratio"] = (~keep).float().mean().item()
            if train_eval:
                e_pred = evaluator(pred, lq)
                balance = self.w["eval_balance"]
                l_lq = self._eval_ce(e_lq, lq_label, w, balance in ("lq", "both"))
                l_pred = self._eval_ce(e_pred, pred_label, w, balance == "both")
                total = total + self.w["eval"] * (l_lq + l_pred)
                logs["eval_lq_ce"] = l_lq.item()
                logs["eval_pred_ce"] = l_pred.item()
                logs["eval_lq_acc"] = (e_lq.detach().argmax(1) == lq_label).float().mean().item()
        logs["loss"] = total.item()
        return total, logs

    def _eval_ce(self, logits: torch.Tensor, label: torch.Tensor, w: torch.Tensor, balanced: bool) -> torch.Tensor:
        """Cross-entropy of ``phi_e``'s logits ``[B, 2, h, w]`` against good/bad labels ``[B, h, w]``."""
        if not balanced:
            return _weighted_mean(F.cross_entropy(logits.float(), label, reduction="none"), w)
        flat = logits.permute(0, 2, 3, 1).reshape(-1, 2).float()
        tw = w[:, None, None].expand_as(label).reshape(-1)
        return class_balanced_cross_entropy(flat, label.reshape(-1), self.w["beta"], tw)

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hr = batch["hr"].to(self.device, torch.float32)
        lr = batch["lr"].to(self.device, torch.float32)
        w = batch.get("weight")
        weights = torch.ones(hr.shape[0], device=self.device) if w is None else w.to(self.device, torch.float32).view(-1)
        return hr, lr, weights

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        hr, lr, w = self._inputs(batch)
        loss, logs = self._loss(hr, lr, w)
        return {"g": loss}, logs

    # --- validation / export -------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        batch = self._validation_batch()
        if batch is None:
            return {}, {}
        val = dict(self.cfg.get("val") or {})
        _unknown(val, ("count", "images", "steps", "alpha"), "val")
        m = self.model
        modes = {n: mod.training for n, mod in self.modules().items()}
        for mod in self.modules().values():
            mod.eval()
        hr, lr = batch["hr"], batch["lr"]
        w = torch.ones(hr.shape[0], device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(0)
        _, logs = self._loss(hr, lr, w, gen)
        target = m.hr_tokens(hr)
        result = m.restore(lr, steps=val.get("steps"), alpha=val.get("alpha"))
        assert result.lq_tokens is not None
        lq_img = m.decode_tokens(result.lq_tokens)
        sr = m.decode_tokens(result.tokens)
        for n, mod in self.modules().items():
            mod.train(modes[n])
        metrics = {k: v for k, v in logs.items() if k != "loss"}
        metrics.update(
            psnr_lq=_psnr(lq_img, hr),
            psnr_tokenizer=_psnr(m.decode_tokens(target), hr),
            lq_token_acc=(result.lq_tokens == target).float().mean().item(),
        )
        if m.can_refine:
            metrics.update(
                psnr_iter=_psnr(sr, hr),
                iter_token_acc=(result.tokens == target).float().mean().item(),
                steps_run=result.start_steps.float().mean().item(),
            )
        n = int(val.get("images", 4))
        lr_up = F.interpolate(lr, size=hr.shape[-2:], mode="nearest")
        rows = [_strip(lr_up, n), _strip(lq_img, n)] + ([_strip(sr, n)] if m.can_refine else []) + [_strip(hr, n)]
        return metrics, {"lr_lq_iter_hr": torch.cat(rows, dim=1)}

    def export(self, folder: str) -> None:
        self.model.save_pretrained(folder)


class LQEncoderTask(ITERTask):
    """Stage 1 of a staged schedule: the LQ encoder alone (Eq. 2)."""

    default_train = ("lq_encoder",)


class RefineEvalTask(ITERTask):
    """Stage 2 of a staged schedule: ``phi_r`` and ``phi_e`` with ``E_l`` frozen (Algorithm 1)."""

    default_train = ("refine", "evaluator")


__all__ = ["ITERTask", "LQEncoderTask", "RefineEvalTask"]
