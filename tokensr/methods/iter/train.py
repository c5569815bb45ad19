"""ITER training as engine tasks (see ``tokensr.train.task``): the paper's Eq. 2 and Algorithm 1.

One task class does all of it; ``train`` names the networks it trains (the others are
frozen), so the same code runs the paper's joint training and a staged schedule:

- ``train: [lq_encoder]`` (:class:`LQEncoderTask`): ``E_l`` learns to predict the
  ground-truth HR tokens ``S_h`` from the LR image (cross-entropy, Eq. 2), optionally with a
  pixel L1 loss through a hard Gumbel-softmax decode by the frozen tokenizer decoder.
- ``train: [refine, evaluator]`` (:class:`RefineEvalTask`): with ``E_l`` frozen, Algorithm 1:
  ``r ~ U(0, 1]``, ``ceil(gamma(r) N)`` random tokens of ``S_h`` masked (cosine schedule),
  ``phi_r(S_t, S_l, m_t)`` predicts ``S_h`` (cross-entropy, Eq. 4: on every token by default,
  ``refine_tokens: masked`` for the masked ones only; each sample's cross-entropy weighted by
  its mask ratio by default, as the reference code, see :func:`refine_cross_entropy`), and
  ``phi_e`` learns which tokens are
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
  (1), ``refine_tokens`` (``all`` | ``masked``), ``refine_weighting`` (``mask_ratio``: each
  sample's Eq.-4 cross-entropy times its mask ratio, as the reference code; ``mean``: a plain
  mean, what tokensr did before the option existed), ``eval_balance`` (``lq`` | ``both`` |
  ``none``), ``beta`` (0.9999), ``mask_schedule`` (``cosine`` | ``linear``).
- ``data``: keyword arguments of :class:`tokensr.data.datasets.HRCropDataset` (``root``,
  ``crop_size`` (preset: 128 small, 256 paper), ``degradation`` (``realesrgan``), ``seed``,
  ``length``, ``texture_threshold``, ``cache_dir``...); ``val``: ``{root (default data.root),
  crop_size, count: 4, images: 4, steps, alpha}`` (validation crops are ``data`` with another
  seed and no augmentation; ``val_data`` is the old spelling of ``val.root``/``val.crop_size``).

Config reading, crops, the validation batch and frozen modules come from the shared task layer
(:class:`tokensr.train.base.TaskBase`); the optional pixel term is
:class:`tokensr.nn.losses.ImageLoss`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tokensr.errors import OptionError
from tokensr.methods.iter.model import ITER, PRESETS
from tokensr.methods.iter.refine import class_balanced_cross_entropy
from tokensr.methods.iter.sampling import SCHEDULES, training_keep_mask
from tokensr.nn import losses as L
from tokensr.nn.vqgan import VQGAN
from tokensr.train.base import TaskBase, trainable_parameters
from tokensr.train.batches import image_rows
from tokensr.train.options import check_choice, check_keys, section

log = logging.getLogger(__name__)

PARTS = ("lq_encoder", "refine", "evaluator")
LOSS_DEFAULTS: dict[str, Any] = {
    "dist": 1.0,
    "pixel": 0.0,
    "refine": 1.0,
    "eval": 1.0,
    "gumbel_tau": 1.0,
    "refine_tokens": "all",
    "refine_weighting": "mask_ratio",
    "eval_balance": "lq",
    "beta": 0.9999,
    "mask_schedule": "cosine",
}


def _token_mean(
    per_token: torch.Tensor, sample_weight: torch.Tensor | None, select: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of ``per_token`` ``[B, ...]``, each token weighted by its sample's weight ``[B]``
    (equal without), over the ``select``-ed tokens only when given."""
    if sample_weight is None:
        sample_weight = torch.ones(per_token.shape[0], device=per_token.device)
    tw = sample_weight.view(-1, *([1] * (per_token.dim() - 1))).expand_as(per_token)
    if select is not None:
        tw = tw * select.float()
    return (per_token * tw).sum() / tw.sum().clamp_min(1e-8)


REFINE_WEIGHTINGS = ("mask_ratio", "mean")


def refine_cross_entropy(
    ce: torch.Tensor,
    keep: torch.Tensor,
    weighting: str,
    sample_weight: torch.Tensor | None = None,
    select: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 4 from the per-token cross-entropy ``ce [B, h, w]`` and the kept-token mask ``keep``
    (True = a ground-truth token of ``S_t``, False = ``[MASK]``).

    ``mean``: the (sample-weighted) mean over the tokens (``select``-ed ones only when given).
    ``mask_ratio``: every sample's tokens are first multiplied by that sample's mask ratio
    ``r_b`` (share of masked tokens), as the reference code weights them:
    ``sum_b r_b sum_n ce_bn / (B N)`` without sample weights and with all tokens. Samples with
    few masked tokens, whose targets are mostly copies of their input, count little.
    """
    if weighting == "mask_ratio":
        ratio = (~keep).flatten(1).float().mean(1)
        ce = ce * ratio.view(-1, *([1] * (ce.dim() - 1)))
    elif weighting != "mean":
        raise ValueError(f"refine weighting must be one of {REFINE_WEIGHTINGS}, got '{weighting}'")
    return _token_mean(ce, sample_weight, select)


class ITERTask(TaskBase):
    """Trains the networks named in ``train`` (default: all three, jointly as the paper)."""

    name = "iter"
    keys = (
        "tokenizer",
        "init",
        "preset",
        "lq_encoder",
        "refine",
        "evaluator",
        "scale",
        "steps",
        "alpha",
        "train",
        "losses",
    )
    val_keys = ("steps", "alpha")
    degradation = "realesrgan"
    default_train: tuple[str, ...] = PARTS

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str) -> None:
        super().__init__(cfg, device)
        self.preset = PRESETS[check_choice("preset", self.cfg.get("preset", "small"), PRESETS)]
        parts = self.cfg.get("train", list(self.default_train))
        parts = [parts] if isinstance(parts, str) else list(parts)
        check_keys(parts, PARTS, "train")
        if not parts:
            raise OptionError("train must name at least one of lq_encoder, refine, evaluator")
        self.parts = tuple(p for p in PARTS if p in parts)
        self.loss_weights = self.read_losses(LOSS_DEFAULTS)
        for k, choices in (
            ("refine_tokens", ("all", "masked")),
            ("refine_weighting", REFINE_WEIGHTINGS),
            ("eval_balance", ("lq", "both", "none")),
            ("mask_schedule", SCHEDULES),
        ):
            check_choice(f"losses.{k}", self.loss_weights[k], choices)
        self.pixel_loss = L.ImageLoss({"l1": 1.0}, input_range=(0.0, 1.0))
        self.model = self._build_model().to(self.device)
        self.model.requires_grad_(False)
        for part in self.parts:
            self._part(part).requires_grad_(True)
        self.freeze()

    # --- model ---------------------------------------------------------------------------------
    def _net_cfg(self, name: str) -> dict[str, Any]:
        return {**getattr(self.preset, name), **section(self.cfg, name)}

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
                model = ITER.create(
                    tokenizer.to(self.device), self._net_cfg("lq_encoder"), scale=int(self.cfg.get("scale", 4))
                )
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

    def frozen_modules(self) -> list[nn.Module]:
        """The tokenizer (EMA codebook) and the networks this task does not train."""
        others = [getattr(self.model, name) for name in PARTS if name not in self.parts]
        return [self.model.tokenizer] + [m for m in others if m is not None]

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
        return {"g": trainable_parameters(*(self._part(part) for part in self.parts))}

    # --- data ----------------------------------------------------------------------------------
    def crop_size(self, data: Mapping[str, Any]) -> int:
        crop = int(data.get("crop_size", self.preset.crop_size))
        unit = self.model.scale * self.model.lr_multiple
        if crop % unit:
            raise OptionError(
                f"crop_size {crop} must be a multiple of {unit} "
                f"(scale x{self.model.scale}, tokenizer f={self.model.factor})"
            )
        return crop

    def data_scale(self) -> int | None:
        return self.model.scale

    # --- losses --------------------------------------------------------------------------------
    def _loss(
        self,
        hr: torch.Tensor,
        lr: torch.Tensor,
        sample_weight: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self.keep_frozen()
        m, lw = self.model, self.loss_weights
        target = m.tokenizer.tokenize(hr)  # S_h [B, h, w]
        total = torch.zeros((), device=self.device)
        logs: dict[str, float] = {}
        # --- E_l (Eq. 2) ---
        if "lq_encoder" in self.parts:
            lq_logits = m.lq_logits(lr)
            if lq_logits.shape[-2:] != target.shape[-2:]:
                raise OptionError(
                    f"LQ token grid {tuple(lq_logits.shape[-2:])} != HR token grid {tuple(target.shape[-2:])}"
                )
            ce = F.cross_entropy(lq_logits.float(), target, reduction="none")
            dist = _token_mean(ce, sample_weight)
            total = total + lw["dist"] * dist
            lq = lq_logits.detach().argmax(1)
            logs["dist_ce"] = dist.item()
            if lw["pixel"] > 0:
                onehot = F.gumbel_softmax(lq_logits.float(), tau=lw["gumbel_tau"], hard=True, dim=1)
                pix, _ = self.pixel_loss.reconstruction(m.decode_onehot(onehot), hr, sample_weight)
                total = total + lw["pixel"] * pix
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
            keep = training_keep_mask(b, h * wd, self.device, lw["mask_schedule"], generator).view(b, h, wd)
            s_t = torch.where(keep, target, torch.full_like(target, m.mask_id))
            with torch.set_grad_enabled(grad and train_refine):
                r_logits = refine(s_t, lq, lq_good)
            if train_refine:
                ce = F.cross_entropy(r_logits.float(), target, reduction="none")
                sel = ~keep if lw["refine_tokens"] == "masked" else None
                l_ref = refine_cross_entropy(ce, keep, lw["refine_weighting"], sample_weight, sel)
                total = total + lw["refine"] * l_ref
                logs["refine_ce"] = l_ref.item()
            pred = r_logits.detach().argmax(1)
            pred_label = (pred == target).long()
            logs["refine_acc_masked"] = (pred_label.bool() & ~keep).float().sum().item() / max(int((~keep).sum()), 1)
            logs["mask_ratio"] = (~keep).float().mean().item()
            if train_eval:
                e_pred = evaluator(pred, lq)
                balance = lw["eval_balance"]
                l_lq = self._eval_ce(e_lq, lq_label, sample_weight, balance in ("lq", "both"))
                l_pred = self._eval_ce(e_pred, pred_label, sample_weight, balance == "both")
                total = total + lw["eval"] * (l_lq + l_pred)
                logs["eval_lq_ce"] = l_lq.item()
                logs["eval_pred_ce"] = l_pred.item()
                logs["eval_lq_acc"] = (e_lq.detach().argmax(1) == lq_label).float().mean().item()
        logs["loss"] = total.item()
        return total, logs

    def _eval_ce(
        self, logits: torch.Tensor, label: torch.Tensor, sample_weight: torch.Tensor | None, balanced: bool
    ) -> torch.Tensor:
        """Cross-entropy of ``phi_e``'s logits ``[B, 2, h, w]`` against good/bad labels ``[B, h, w]``."""
        if not balanced:
            return _token_mean(F.cross_entropy(logits.float(), label, reduction="none"), sample_weight)
        flat = logits.permute(0, 2, 3, 1).reshape(-1, 2).float()
        if sample_weight is None:
            sample_weight = torch.ones(label.shape[0], device=label.device)
        tw = sample_weight[:, None, None].expand_as(label).reshape(-1)
        return class_balanced_cross_entropy(flat, label.reshape(-1), self.loss_weights["beta"], tw)

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        hr, lr, sample_weight = self.inputs(batch)
        assert lr is not None
        loss, logs = self._loss(hr, lr, sample_weight)
        return {"g": loss}, logs

    # --- validation / export -------------------------------------------------------------------
    def evaluate(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        m = self.model
        hr, lr = batch["hr"], batch["lr"]
        gen = torch.Generator(device=self.device).manual_seed(0)
        _, logs = self._loss(hr, lr, None, gen)
        target = m.tokenizer.tokenize(hr)
        result = m.restore(lr, steps=self.val.extra.get("steps"), alpha=self.val.extra.get("alpha"))
        assert result.lq_tokens is not None
        lq_img = m.decode_tokens(result.lq_tokens)
        sr = m.decode_tokens(result.tokens)
        metrics = {k: v for k, v in logs.items() if k != "loss"}
        metrics.update(
            psnr_lq=L.psnr(lq_img, hr),
            psnr_tokenizer=L.psnr(m.decode_tokens(target), hr),
            lq_token_acc=(result.lq_tokens == target).float().mean().item(),
        )
        if m.can_refine:
            metrics.update(
                psnr_iter=L.psnr(sr, hr),
                iter_token_acc=(result.tokens == target).float().mean().item(),
                steps_run=result.start_steps.float().mean().item(),
            )
        lr_up = F.interpolate(lr, size=hr.shape[-2:], mode="nearest")
        rows = [lr_up, lq_img] + ([sr] if m.can_refine else []) + [hr]
        return metrics, {"lr_lq_iter_hr": image_rows(rows, self.val.images)}


class LQEncoderTask(ITERTask):
    """Stage 1 of a staged schedule: the LQ encoder alone (Eq. 2)."""

    name = "iter_lq_encoder"
    default_train = ("lq_encoder",)


class RefineEvalTask(ITERTask):
    """Stage 2 of a staged schedule: ``phi_r`` and ``phi_e`` with ``E_l`` frozen (Algorithm 1)."""

    name = "iter_refine"
    default_train = ("refine", "evaluator")


__all__ = ["REFINE_WEIGHTINGS", "ITERTask", "LQEncoderTask", "RefineEvalTask", "refine_cross_entropy"]
