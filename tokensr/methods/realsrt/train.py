"""RealSRT training stages as engine tasks (``tokensr train``; see ``tokensr.train.task``).

The paper trains in three stages, each freezing what came before (sec. 4.1):

1. :class:`GeneratorTask` (``task: realsrt_generator``): the generator learns to predict
   masked HR tokens (cross-entropy on the masked tokens only) given the LR tokens. The
   tokenizer is frozen; a fresh :class:`RealSRT` is built around it.
2. :class:`CriticTask` (``task: realsrt_critic``): the frozen generator fills a randomly masked
   canvas (argmax); the critic learns, with binary cross-entropy on *every* token, which
   tokens were masked (label 1 = was masked, i.e. generated).
3. :class:`CCMTask` (``task: realsrt_ccm``): the conditional controlling module learns to steer
   the frozen decoder towards the HR image with the tokenizer's kind of losses: pixel (MSE),
   perceptual and a hinge GAN whose weight is adapted on the CCM's zero conv.

Each stage exports a complete RealSRT folder (``save_pretrained``) that the next stage's
``init_from`` points to and that ``tokensr upscale --method realsrt --weights FOLDER`` runs.

Task config keys (``task_config``)::

    tokenizer: vqgan-small     # generator stage: a VQGAN folder or bundled name
    init_from: FOLDER          # critic/CCM stages (and to continue a generator): a RealSRT folder
    preset: small              # transformer sizes: small | paper | tiny
    generator: {...}           # TokenTransformerConfig overrides (dim, heads, hr_depth, ...)
    critic: {...}              # same, for the critic stage
    scale: 4
    lr_patch: 32               # LR crop side (HR crop = lr_patch * scale); default: preset
    stride: 24                 # inference stride saved with the model; default: preset
    lr_input: tokens           # tokens (paper) | latents
    data: {root: FOLDER, degradation: realesrgan, ...HRCropDataset options}
    val: {root: FOLDER (default data.root), count: 4, images: 2}
    # CCM stage only:
    ccm: {attention: true}
    tokens: generated          # generated (the frozen transformer's output, as the reference
                               # code trains) | gt (the HR image's own tokens: much faster)
    steps: 4                   # generation steps when tokens = generated
    confidence: critic         # critic | generator
    losses: {l2: 1.0, l1: 0.0, ms_ssim: 0.0, perceptual: 0.1, vgg: null,
             substitute: {l1: 1.0, ms_ssim: 1.0}, gan: 0.8, disc_start: 2000,
             adaptive: true, max_gan_weight: 1e4}
    discriminator: {type: patch, ndf: 64, n_layers: 3}

``perceptual`` needs the torchvision VGG19 file (``vgg: FILE`` or ``TOKENSR_VGG19``); without
it the ``substitute`` losses (L1 + 1 - MS-SSIM) are used instead, with a warning.
"""
from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tokensr.errors import OptionError
from tokensr.methods.realsrt.model import PRESETS, Condition, RealSRT
from tokensr.methods.realsrt.sampling import training_mask
from tokensr.nn import losses as L
from tokensr.nn.vqgan import VQGAN

log = logging.getLogger(__name__)

VAL_SEED_OFFSET = 1_000_003
COMMON_KEYS = ("preset", "scale", "lr_patch", "stride", "lr_input", "data", "val", "init_from")
CCM_LOSS_DEFAULTS: dict[str, Any] = {
    "l2": 1.0,  # the reference code's pixel loss is MSE
    "l1": 0.0,
    "ms_ssim": 0.0,
    "perceptual": 0.1,  # the paper's perceptual weight
    "vgg": None,
    "substitute": {"l1": 1.0, "ms_ssim": 1.0},  # used instead of `perceptual` without VGG19
    "gan": 0.8,
    "disc_start": 2000,
    "adaptive": True,
    "max_gan_weight": 1e4,
}


def _check_keys(keys: Iterable[str], allowed: Iterable[str], where: str) -> None:
    allowed = list(allowed)
    for k in keys:
        if k not in allowed:
            close = difflib.get_close_matches(k, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(allowed)})"
            raise OptionError(f"unknown {where} key '{k}'{hint}")


class _Stage:
    """What the three stages share: config, model, data, validation batch, export."""

    extra_keys: tuple[str, ...] = ()
    trained: str = ""  # the module trained by this stage

    def __init__(self, cfg: dict[str, Any], device: torch.device | str) -> None:
        self.cfg = dict(cfg)
        _check_keys(self.cfg, COMMON_KEYS + self.extra_keys, f"{type(self).__name__} task_config")
        self.device = torch.device(device)
        preset = str(self.cfg.get("preset", "small"))
        if preset not in PRESETS:
            raise OptionError(f"unknown realsrt preset '{preset}' (choose from {', '.join(PRESETS)})")
        self.preset = PRESETS[preset]
        self.model = self._build_model().to(self.device)
        self.model.requires_grad_(False)
        self.val_batch: dict[str, torch.Tensor] | None = None  # built lazily; tests may set it

    # --- model -------------------------------------------------------------------------------
    def _load_init(self) -> RealSRT:
        init = self.cfg.get("init_from")
        if init is None:
            raise OptionError(f"{type(self).__name__} needs init_from: the RealSRT folder of the previous stage")
        if isinstance(init, RealSRT):
            return init
        try:
            return RealSRT.from_pretrained(str(init))
        except FileNotFoundError as e:
            raise OptionError(f"init_from: {e}") from e
        except ValueError as e:
            raise OptionError(f"init_from {init}: {e}") from e

    def _build_model(self) -> RealSRT:  # pragma: no cover - overridden
        raise NotImplementedError

    def _frozen_eval(self) -> None:
        """Keep frozen parts in eval mode whatever the caller did: the tokenizer's EMA codebook
        must never update here."""
        self.model.tokenizer.eval()
        for name in ("generator", "critic"):
            module = getattr(self.model, name)
            if module is not None and name != self.trained:
                module.eval()

    def ema_modules(self) -> list[str]:
        return [self.trained]

    def export(self, folder: str) -> None:
        self.model.save_pretrained(folder)

    # --- data --------------------------------------------------------------------------------
    def _dataset(self, section: dict[str, Any], **overrides: Any) -> Dataset[Any]:
        from tokensr.data.datasets import HRCropDataset

        root = section.get("root")
        if not root:
            raise OptionError("realsrt training needs data.root: a folder of HR photos (data.root=FOLDER)")
        if not Path(root).is_dir():
            where = "" if Path(root).is_absolute() else f" (from {Path.cwd()})"
            raise OptionError(f"data folder not found: {root}{where}; set data.root=FOLDER")
        kwargs = {k: v for k, v in section.items() if k not in ("root", "crop_size", "scale")}
        kwargs.setdefault("degradation", "realesrgan")
        kwargs.update(overrides)
        crop = self.model.config.lr_patch * self.model.scale
        try:
            return HRCropDataset(root, crop_size=crop, scale=self.model.scale, **kwargs)
        except TypeError as e:
            raise OptionError(f"bad data option: {e}") from e

    def train_dataset(self) -> Dataset[Any]:
        return self._dataset(dict(self.cfg.get("data") or {}))

    def _validation_batch(self) -> dict[str, torch.Tensor] | None:
        if self.val_batch is None:
            val = dict(self.cfg.get("val") or {})
            _check_keys(val, ("root", "count", "images"), "val")
            section = dict(self.cfg.get("data") or {})
            if val.get("root"):
                section["root"] = val["root"]
            if not section.get("root"):
                return None
            count = int(val.get("count", 4))
            seed = int(section.pop("seed", 0)) + VAL_SEED_OFFSET
            section.pop("length", None)
            section.pop("cache_dir", None)
            ds = self._dataset(section, seed=seed, length=count, augment=False)
            items = [ds[i] for i in range(count)]
            self.val_batch = {k: torch.stack([it[k] for it in items]) for k in ("hr", "lr")}
        return {k: v.to(self.device) for k, v in self.val_batch.items()}

    def _n_images(self) -> int:
        return int((self.cfg.get("val") or {}).get("images", 2))

    # --- batches -------------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        hr = batch["hr"].to(self.device, torch.float32)
        lr = batch["lr"].to(self.device, torch.float32)
        w = batch.get("weight")
        return hr, lr, (w.to(self.device, torch.float32).view(-1) if w is not None else None)

    def _masked_inputs(
        self, hr: torch.Tensor, lr: torch.Tensor, rng: torch.Generator | None = None
    ) -> tuple[Condition, torch.Tensor, torch.Tensor, torch.Tensor]:
        """LR condition, HR target tokens, a random training mask and the masked input ids."""
        cond = self.model.condition(lr)
        target = self.model.hr_tokens(hr)
        b, n = target.shape
        mask = training_mask(b, n, self.device, generator=rng)
        ids = torch.where(mask, torch.full_like(target, self.model.mask_id), target)
        return cond, target, mask, ids


def _token_weights(w: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Per-token weights of the selected tokens: each carries its sample's weight."""
    if w is None:
        return torch.ones(int(mask.sum()), device=mask.device)
    return w[:, None].expand_as(mask)[mask]


def _strip(images: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` images of ``[B, 3, H, W]`` side by side, ``[3, H, n*W]``."""
    return torch.cat(list(images[:n].clamp(0, 1).cpu()), dim=2)


class GeneratorTask(_Stage):
    """Stage 1: masked-token prediction (cross-entropy on masked tokens only)."""

    extra_keys = ("tokenizer", "generator")
    trained = "generator"

    def _build_model(self) -> RealSRT:
        if self.cfg.get("init_from") is not None:
            return self._load_init()
        tok = self.cfg.get("tokenizer")
        if tok is None:
            raise OptionError("the generator stage needs tokenizer: a VQGAN folder or bundled name (e.g. vqgan-small)")
        if isinstance(tok, VQGAN):
            tokenizer = tok
        else:
            try:
                tokenizer = VQGAN.from_pretrained(str(tok))
            except FileNotFoundError as e:
                raise OptionError(f"tokenizer: {e}") from e
        generator = {**self.preset.generator, **(self.cfg.get("generator") or {})}
        try:
            return RealSRT.create(
                tokenizer.to(self.device), generator,
                scale=int(self.cfg.get("scale", 4)),
                lr_patch=int(self.cfg.get("lr_patch", self.preset.lr_patch)),
                lr_input=str(self.cfg.get("lr_input", "tokens")),
                stride=self.cfg.get("stride", self.preset.stride),
            )
        except (TypeError, ValueError) as e:
            raise OptionError(f"bad realsrt model option: {e}") from e

    def __init__(self, cfg: dict[str, Any], device: torch.device | str) -> None:
        super().__init__(cfg, device)
        self.model.generator.requires_grad_(True)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.model.generator, "tokenizer": self.model.tokenizer}

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        return {"g": [p for p in self.model.generator.parameters() if p.requires_grad]}

    def _loss(self, hr: torch.Tensor, lr: torch.Tensor, w: torch.Tensor | None,
              rng: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        self._frozen_eval()
        cond, target, mask, ids = self._masked_inputs(hr, lr, rng)
        # logits of the masked tokens only, [M, K] in row-major order (the loss ignores the rest)
        logits = self.model.generator(ids, cond.lr, cond.hw, select=mask)
        ce = F.cross_entropy(logits.float(), target[mask], reduction="none")
        tw = _token_weights(w, mask)
        loss = (ce * tw).sum() / tw.sum().clamp_min(1e-8)
        with torch.no_grad():
            acc = (logits.argmax(-1) == target[mask]).float().mean().item()
        return loss, {"ce": loss.item(), "masked_acc": acc, "mask_ratio": mask.float().mean().item()}

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        hr, lr, w = self._inputs(batch)
        loss, logs = self._loss(hr, lr, w)
        return {"g": loss}, logs

    @torch.no_grad()
    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        batch = self._validation_batch()
        if batch is None:
            return {}, {}
        was = self.model.generator.training
        self.model.generator.eval()
        hr, lr = batch["hr"], batch["lr"]
        rng = torch.Generator(device=self.device).manual_seed(0)
        _, logs = self._loss(hr, lr, None, rng)
        cond = self.model.condition(lr)
        result = self.model.generate(cond, 4, "generator", score_last=False)
        sr = self.model.decode(result.tokens, cond.hw)
        target = self.model.hr_tokens(hr)
        self.model.generator.train(was)
        metrics = {
            "ce": logs["ce"],
            "masked_acc": logs["masked_acc"],
            "token_acc_T4": (result.tokens == target).float().mean().item(),
            "psnr_T4": L.psnr(sr, hr),
            "psnr_bicubic": L.psnr(cond.lr_up, hr),
        }
        n = self._n_images()
        grid = torch.cat([_strip(cond.lr_up, n), _strip(sr, n), _strip(hr, n)], dim=1)
        return metrics, {"bicubic_generated_hr": grid}


class CriticTask(_Stage):
    """Stage 2: the critic learns which tokens of the frozen generator's canvas were masked."""

    extra_keys = ("critic",)
    trained = "critic"

    def _build_model(self) -> RealSRT:
        model = self._load_init()
        if model.critic is None:
            try:
                model.add_critic({**self.preset.critic, **(self.cfg.get("critic") or {})})
            except (TypeError, ValueError) as e:
                raise OptionError(f"bad critic option: {e}") from e
        else:
            log.info("continuing to train the critic found in init_from")
        return model

    def __init__(self, cfg: dict[str, Any], device: torch.device | str) -> None:
        super().__init__(cfg, device)
        assert self.model.critic is not None
        self.critic = self.model.critic
        self.critic.requires_grad_(True)

    def modules(self) -> dict[str, nn.Module]:
        return {"critic": self.critic, "generator": self.model.generator, "tokenizer": self.model.tokenizer}

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        return {"g": [p for p in self.critic.parameters() if p.requires_grad]}

    @torch.no_grad()
    def critic_batch(
        self, hr: torch.Tensor, lr: torch.Tensor, rng: torch.Generator | None = None
    ) -> tuple[Condition, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The critic's input and labels: a random mask is filled in by the frozen generator
        (argmax); ``labels`` is 1 where the token was masked (generated), 0 where it is the
        ground truth. Returns ``(cond, target, tokens, labels)``."""
        self._frozen_eval()
        cond, target, mask, ids = self._masked_inputs(hr, lr, rng)
        tokens = target.clone()
        tokens[mask] = self.model.generator(ids, cond.lr, cond.hw, select=mask).argmax(-1)
        return cond, target, tokens, mask.float()

    def _loss(self, hr: torch.Tensor, lr: torch.Tensor, w: torch.Tensor | None,
              rng: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        cond, target, tokens, labels = self.critic_batch(hr, lr, rng)
        mask = labels.bool()
        logits = self.critic(tokens, cond.lr, cond.hw)  # [B, N]
        bce = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
        loss = L.weighted_mean(bce.mean(dim=1), w)
        with torch.no_grad():
            acc = ((logits > 0) == mask).float().mean().item()
            wrong = ((tokens != target) & mask).sum().item() / max(1, int(mask.sum().item()))
        return loss, {"bce": loss.item(), "critic_acc": acc, "generator_err": wrong}

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        hr, lr, w = self._inputs(batch)
        loss, logs = self._loss(hr, lr, w)
        return {"g": loss}, logs

    @torch.no_grad()
    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        batch = self._validation_batch()
        if batch is None:
            return {}, {}
        was = self.critic.training
        self.critic.eval()
        hr, lr = batch["hr"], batch["lr"]
        rng = torch.Generator(device=self.device).manual_seed(0)
        _, logs = self._loss(hr, lr, None, rng)
        cond = self.model.condition(lr)
        with_critic = self.model.generate(cond, 4, "critic")
        maskgit = self.model.generate(cond, 4, "generator", score_last=False)
        sr = self.model.decode(with_critic.tokens, cond.hw)
        sr_maskgit = self.model.decode(maskgit.tokens, cond.hw)
        conf = with_critic.steps[0].confidence.view(-1, 1, *cond.hw)
        conf = F.interpolate(1 - conf, size=hr.shape[-2:], mode="nearest").expand(-1, 3, -1, -1)
        self.critic.train(was)
        metrics = {
            "bce": logs["bce"],
            "critic_acc": logs["critic_acc"],
            "psnr_T4_critic": L.psnr(sr, hr),
            "psnr_T4_generator_conf": L.psnr(sr_maskgit, hr),
        }
        n = self._n_images()
        grid = torch.cat([_strip(sr, n), _strip(conf, n), _strip(hr, n)], dim=1)
        return metrics, {"generated_unconfidence1_hr": grid}


class CCMTask(_Stage):
    """Stage 3: the CCM learns to steer the frozen decoder (pixel + perceptual + GAN losses)."""

    extra_keys = ("ccm", "tokens", "steps", "confidence", "losses", "discriminator")
    trained = "ccm"

    def _build_model(self) -> RealSRT:
        model = self._load_init()
        if model.ccm is None:
            try:
                model.add_ccm(self.cfg.get("ccm"))
            except (TypeError, ValueError) as e:
                raise OptionError(f"bad ccm option: {e}") from e
        else:
            log.info("continuing to train the CCM found in init_from")
        return model

    def __init__(self, cfg: dict[str, Any], device: torch.device | str) -> None:
        super().__init__(cfg, device)
        assert self.model.ccm is not None
        self.ccm = self.model.ccm
        self.ccm.requires_grad_(True)
        self.tokens = str(self.cfg.get("tokens", "generated"))
        if self.tokens not in ("generated", "gt"):
            raise OptionError(f"tokens must be 'generated' or 'gt', got '{self.tokens}'")
        self.steps = int(self.cfg.get("steps", 4))
        default_conf = "critic" if self.model.critic is not None else "generator"
        self.confidence = str(self.cfg.get("confidence", default_conf))
        if self.confidence == "critic" and self.model.critic is None:
            raise OptionError("confidence: critic, but init_from has no critic (train the critic stage first)")
        lcfg = dict(self.cfg.get("losses") or {})
        _check_keys(lcfg, CCM_LOSS_DEFAULTS, "losses")
        self.w = {**CCM_LOSS_DEFAULTS, **lcfg}
        for k in ("l1", "l2", "ms_ssim", "perceptual", "gan", "max_gan_weight"):
            self.w[k] = float(self.w[k])
        self.disc_start = int(self.w["disc_start"])
        self.perceptual: nn.Module | None = None
        if self.w["perceptual"] > 0:
            self._setup_perceptual()
        self.ms_ssim = L.MSSSIMLoss((0.0, 1.0)) if self.w["ms_ssim"] > 0 else None
        self.discriminator: nn.Module | None = None
        if self.w["gan"] > 0:
            from tokensr.nn.discriminator import build_discriminator

            dcfg = dict(self.cfg.get("discriminator") or {"type": "patch"})
            self.discriminator = build_discriminator(dcfg).to(self.device).train()

    def _setup_perceptual(self) -> None:
        from tokensr.nn.vgg import find_vgg19

        path = find_vgg19(self.w["vgg"])
        if path is not None:
            self.perceptual = L.PerceptualLoss(path, input_range=(0.0, 1.0)).to(self.device)
            return
        sub = dict(self.w["substitute"] or {})
        _check_keys(sub, ("l1", "ms_ssim"), "losses.substitute")
        log.warning(
            "no VGG19 weights (losses.vgg=FILE or TOKENSR_VGG19): the CCM trains with the substitute "
            "perceptual losses %s instead", sub,
        )
        self.w["perceptual"] = 0.0
        self.w["l1"] += float(sub.get("l1", 0.0))
        self.w["ms_ssim"] += float(sub.get("ms_ssim", 0.0))

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"ccm": self.ccm, "generator": self.model.generator,
                                      "tokenizer": self.model.tokenizer}
        if self.model.critic is not None:
            mods["critic"] = self.model.critic
        if self.discriminator is not None:
            mods["discriminator"] = self.discriminator
        return mods

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        groups: dict[str, Iterable[nn.Parameter]] = {"g": [p for p in self.ccm.parameters() if p.requires_grad]}
        if self.discriminator is not None:
            groups["d"] = list(self.discriminator.parameters())
        return groups

    @torch.no_grad()
    def _tokens(self, hr: torch.Tensor, cond: Condition) -> torch.Tensor:
        if self.tokens == "gt":
            return self.model.hr_tokens(hr)
        return self.model.generate(cond, self.steps, self.confidence, score_last=False).tokens

    def _reconstruction(self, out: torch.Tensor, hr: torch.Tensor,
                        w: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted per-sample pixel/structure/perceptual losses (images in [0, 1])."""
        out32 = out.float()
        per = torch.zeros(out.shape[0], device=out.device)
        logs: dict[str, float] = {}
        terms = (("l2", L.l2_loss), ("l1", L.l1_loss), ("ms_ssim", self.ms_ssim), ("perceptual", self.perceptual))
        for name, fn in terms:
            if fn is not None and self.w[name] > 0:
                v = fn(out32 if name != "perceptual" else out, hr)
                per = per + self.w[name] * v
                logs[name] = v.mean().item()
        return L.weighted_mean(per, w), logs

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        self._frozen_eval()
        hr, lr, w = self._inputs(batch)
        cond = self.model.condition(lr)
        ids = self._tokens(hr, cond)
        out = self.model.decode(ids, cond.hw, cond.lr_up)
        nll, logs = self._reconstruction(out, hr, w)
        result: dict[str, torch.Tensor] = {}
        g = nll
        if self.discriminator is not None and step >= self.disc_start:
            g_adv = L.hinge_g_loss(self.discriminator(out * 2 - 1))
            if self.w["adaptive"]:
                aw = L.adaptive_gan_weight(nll, g_adv, self.ccm.last_layer, self.w["max_gan_weight"])
            else:
                aw = torch.ones((), device=self.device)
            g = g + self.w["gan"] * aw * g_adv
            real = self.discriminator(hr * 2 - 1)
            fake = self.discriminator(out.detach() * 2 - 1)
            result["d"] = L.hinge_d_loss(real, fake)
            logs.update(g_adv=g_adv.item(), adaptive_weight=aw.item(), d_hinge=result["d"].item())
        result["g"] = g
        logs["psnr"] = L.psnr(out, hr)
        return result, logs

    @torch.no_grad()
    def validate(self, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        batch = self._validation_batch()
        if batch is None:
            return {}, {}
        was = self.ccm.training
        self.ccm.eval()
        self._frozen_eval()
        hr, lr = batch["hr"], batch["lr"]
        cond = self.model.condition(lr)
        ids = self.model.generate(cond, self.steps, self.confidence, score_last=False).tokens
        plain = self.model.decode(ids, cond.hw)
        steered = self.model.decode(ids, cond.hw, cond.lr_up)
        self.ccm.train(was)
        metrics = {"psnr_no_ccm": L.psnr(plain, hr), "psnr_ccm": L.psnr(steered, hr)}
        n = self._n_images()
        grid = torch.cat([_strip(plain, n), _strip(steered, n), _strip(hr, n)], dim=1)
        return metrics, {"no_ccm_ccm_hr": grid}


__all__ = ["GeneratorTask", "CriticTask", "CCMTask", "CCM_LOSS_DEFAULTS"]
