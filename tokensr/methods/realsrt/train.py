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
``init`` points to and that ``tokensr upscale --method realsrt --weights FOLDER`` runs.

Task config keys (``task_config``)::

    tokenizer: vqgan-small     # generator stage: a VQGAN folder or bundled name
    init: FOLDER               # critic/CCM stages (and to continue a generator): a RealSRT folder
                               # (init_from: the old spelling, still read)
    preset: small              # transformer sizes: small | paper | tiny
    generator: {...}           # TokenTransformerConfig overrides (dim, heads, hr_depth, ...)
    critic: {...}              # same, for the critic stage
    scale: 4
    lr_patch: 32               # LR crop side (HR crop = lr_patch * scale, so no data.crop_size);
                               # stored with the model; default: preset
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
             disc_warmup: 0, adaptive: true, max_gan_weight: 1e4, artifacts: 0.0,
             artifacts_ema: 0.999, usm_target: false}
    discriminator: {type: patch, ndf: 64, n_layers: 3}

Config reading, crops, the validation batch and frozen modules come from the shared task layer
(:class:`tokensr.train.base.TaskBase`); the CCM's image terms are one
:class:`tokensr.nn.losses.ImageLoss`. ``perceptual`` needs the torchvision VGG19 file
(``vgg: FILE`` or ``TOKENSR_VGG19``); without it the ``substitute`` losses (L1 + 1 - MS-SSIM) are
used instead, with a warning.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tokensr.errors import OptionError
from tokensr.methods.realsrt.model import PRESETS, Condition, RealSRT
from tokensr.methods.realsrt.sampling import training_mask
from tokensr.nn import losses as L
from tokensr.nn.vqgan import VQGAN
from tokensr.train.base import TaskBase, trainable_parameters
from tokensr.train.batches import image_rows
from tokensr.train.options import check_choice, check_keys, section

log = logging.getLogger(__name__)

COMMON_KEYS = ("preset", "scale", "lr_patch", "stride", "lr_input", "init")
CCM_LOSS_DEFAULTS: dict[str, Any] = {
    "l2": 1.0,  # the reference code's pixel loss is MSE
    "l1": 0.0,
    "ms_ssim": 0.0,
    "perceptual": 0.1,  # the paper's perceptual weight
    "vgg": None,
    "substitute": {"l1": 1.0, "ms_ssim": 1.0},  # used instead of `perceptual` without VGG19
    "gan": 0.8,
    "feature_matching": 0.0,  # pix2pixHD discriminator feature matching (no ImageNet weights)
    "disc_start": 2000,
    "disc_warmup": 0,  # steps from disc_start in which only the discriminator learns
    "adaptive": True,
    "max_gan_weight": 1e4,
    # LDL's artefact term (Liang et al. 2022, as Real-ESRGAN's later recipes use): L1 where the
    # CCM's output is noisier and worse than a slow EMA copy of the CCM's. Not in the paper.
    "artifacts": 0.0,
    "artifacts_ema": 0.999,
    # Real-ESRGAN x4plus's targets: the pixel and perceptual terms aim at the USM-sharpened HR
    # crop (the discriminator still sees the plain one). Not in the paper.
    "usm_target": False,
}


def load_init(init: Any) -> RealSRT:
    """A task's ``init``: a RealSRT as it is, or the folder or bundled name of one (an
    :class:`OptionError` when it cannot be loaded)."""
    if isinstance(init, RealSRT):
        return init
    try:
        return RealSRT.from_pretrained(str(init))
    except FileNotFoundError as e:
        raise OptionError(f"init: {e}") from e
    except ValueError as e:
        raise OptionError(f"init {init}: {e}") from e


class _Stage(TaskBase):
    """What the three stages share: the preset, the model, the masked-token inputs, export."""

    trained: str = ""  # the module trained by this stage
    val_images = 2
    degradation = "realesrgan"

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str) -> None:
        super().__init__(cfg, device)
        preset = check_choice("preset", self.cfg.get("preset", "small"), PRESETS)
        self.preset = PRESETS[preset]
        self.model = self._build_model().to(self.device)
        self.model.requires_grad_(False)
        self.freeze()

    # --- model -------------------------------------------------------------------------------
    def _load_init(self) -> RealSRT:
        init = self.cfg.get("init")
        if init is None:
            raise OptionError(f"{type(self).__name__} needs init: the RealSRT folder of the previous stage")
        return load_init(init)

    def _build_model(self) -> RealSRT:  # pragma: no cover - overridden
        raise NotImplementedError

    def frozen_modules(self) -> list[nn.Module]:
        """The tokenizer (its EMA codebook must never update) and the earlier stages' networks."""
        others = [getattr(self.model, name) for name in ("generator", "critic") if name != self.trained]
        return [self.model.tokenizer] + [m for m in others if m is not None]

    def ema_modules(self) -> list[str]:
        return [self.trained]

    # --- data --------------------------------------------------------------------------------
    def crop_size(self, data: Mapping[str, Any]) -> int:
        crop = self.model.config.lr_patch * self.model.scale
        if "crop_size" in data and int(data["crop_size"]) != crop:
            raise OptionError(
                f"data.crop_size {data['crop_size']}: RealSRT crops lr_patch x scale = {crop} px; set lr_patch instead"
            )
        return crop

    def data_scale(self) -> int | None:
        return self.model.scale

    # --- batches -------------------------------------------------------------------------------
    def _masked_inputs(
        self, hr: torch.Tensor, lr: torch.Tensor, rng: torch.Generator | None = None
    ) -> tuple[Condition, torch.Tensor, torch.Tensor, torch.Tensor]:
        """LR condition, HR target tokens, a random training mask and the masked input ids."""
        cond = self.model.condition(lr)
        target = self.model.tokenizer.tokenize(hr).flatten(1)
        b, n = target.shape
        mask = training_mask(b, n, self.device, generator=rng)
        ids = torch.where(mask, torch.full_like(target, self.model.mask_id), target)
        return cond, target, mask, ids

    def _loss(
        self, hr: torch.Tensor, lr: torch.Tensor, sample_weight: torch.Tensor | None, rng: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:  # pragma: no cover
        raise NotImplementedError

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        hr, lr, sample_weight = self.inputs(batch)
        assert lr is not None
        loss, logs = self._loss(hr, lr, sample_weight)
        return {"g": loss}, logs


def _token_weights(sample_weight: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Per-token weights of the selected tokens: each carries its sample's weight."""
    if sample_weight is None:
        return torch.ones(int(mask.sum()), device=mask.device)
    return sample_weight[:, None].expand_as(mask)[mask]


class GeneratorTask(_Stage):
    """Stage 1: masked-token prediction (cross-entropy on masked tokens only)."""

    name = "realsrt_generator"
    keys = COMMON_KEYS + ("tokenizer", "generator")
    trained = "generator"

    def _build_model(self) -> RealSRT:
        if self.cfg.get("init") is not None:
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
        generator = {**self.preset.generator, **section(self.cfg, "generator")}
        try:
            return RealSRT.create(
                tokenizer.to(self.device),
                generator,
                scale=int(self.cfg.get("scale", 4)),
                lr_patch=int(self.cfg.get("lr_patch", self.preset.lr_patch)),
                lr_input=str(self.cfg.get("lr_input", "tokens")),
                stride=self.cfg.get("stride", self.preset.stride),
            )
        except (TypeError, ValueError) as e:
            raise OptionError(f"bad realsrt model option: {e}") from e

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str) -> None:
        super().__init__(cfg, device)
        self.model.generator.requires_grad_(True)

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.model.generator, "tokenizer": self.model.tokenizer}

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        return {"g": trainable_parameters(self.model.generator)}

    def _loss(
        self, hr: torch.Tensor, lr: torch.Tensor, sample_weight: torch.Tensor | None, rng: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        self.keep_frozen()
        cond, target, mask, ids = self._masked_inputs(hr, lr, rng)
        # logits of the masked tokens only, [M, K] in row-major order (the loss ignores the rest)
        logits = self.model.generator(ids, cond.lr, cond.hw, select=mask)
        ce = F.cross_entropy(logits.float(), target[mask], reduction="none")
        tw = _token_weights(sample_weight, mask)
        loss = (ce * tw).sum() / tw.sum().clamp_min(1e-8)
        with torch.no_grad():
            acc = (logits.argmax(-1) == target[mask]).float().mean().item()
        return loss, {"ce": loss.item(), "masked_acc": acc, "mask_ratio": mask.float().mean().item()}

    def evaluate(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        hr, lr = batch["hr"], batch["lr"]
        rng = torch.Generator(device=self.device).manual_seed(0)
        _, logs = self._loss(hr, lr, None, rng)
        cond = self.model.condition(lr)
        result = self.model.generate(cond, 4, "generator", score_last=False)
        sr = self.model.decode(result.tokens, cond.hw)
        target = self.model.tokenizer.tokenize(hr).flatten(1)
        metrics = {
            "ce": logs["ce"],
            "masked_acc": logs["masked_acc"],
            "token_acc_T4": (result.tokens == target).float().mean().item(),
            "psnr_T4": L.psnr(sr, hr),
            "psnr_bicubic": L.psnr(cond.lr_up, hr),
        }
        return metrics, {"bicubic_generated_hr": image_rows([cond.lr_up, sr, hr], self.val.images)}


class CriticTask(_Stage):
    """Stage 2: the critic learns which tokens of the frozen generator's canvas were masked."""

    name = "realsrt_critic"
    keys = COMMON_KEYS + ("critic",)
    trained = "critic"

    def _build_model(self) -> RealSRT:
        model = self._load_init()
        if model.critic is None:
            try:
                model.add_critic({**self.preset.critic, **section(self.cfg, "critic")})
            except (TypeError, ValueError) as e:
                raise OptionError(f"bad critic option: {e}") from e
        else:
            log.info("continuing to train the critic found in init")
        return model

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str) -> None:
        super().__init__(cfg, device)
        assert self.model.critic is not None
        self.critic = self.model.critic
        self.critic.requires_grad_(True)

    def modules(self) -> dict[str, nn.Module]:
        return {"critic": self.critic, "generator": self.model.generator, "tokenizer": self.model.tokenizer}

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        return {"g": trainable_parameters(self.critic)}

    @torch.no_grad()
    def critic_batch(
        self, hr: torch.Tensor, lr: torch.Tensor, rng: torch.Generator | None = None
    ) -> tuple[Condition, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The critic's input and labels: a random mask is filled in by the frozen generator
        (argmax); ``labels`` is 1 where the token was masked (generated), 0 where it is the
        ground truth. Returns ``(cond, target, tokens, labels)``."""
        self.keep_frozen()
        cond, target, mask, ids = self._masked_inputs(hr, lr, rng)
        tokens = target.clone()
        tokens[mask] = self.model.generator(ids, cond.lr, cond.hw, select=mask).argmax(-1)
        return cond, target, tokens, mask.float()

    def _loss(
        self, hr: torch.Tensor, lr: torch.Tensor, sample_weight: torch.Tensor | None, rng: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cond, target, tokens, labels = self.critic_batch(hr, lr, rng)
        mask = labels.bool()
        logits = self.critic(tokens, cond.lr, cond.hw)  # [B, N]
        bce = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
        loss = L.weighted_mean(bce.mean(dim=1), sample_weight)
        with torch.no_grad():
            acc = ((logits > 0) == mask).float().mean().item()
            wrong = ((tokens != target) & mask).sum().item() / max(1, int(mask.sum().item()))
        return loss, {"bce": loss.item(), "critic_acc": acc, "generator_err": wrong}

    def evaluate(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
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
        metrics = {
            "bce": logs["bce"],
            "critic_acc": logs["critic_acc"],
            "psnr_T4_critic": L.psnr(sr, hr),
            "psnr_T4_generator_conf": L.psnr(sr_maskgit, hr),
        }
        return metrics, {"generated_unconfidence1_hr": image_rows([sr, conf, hr], self.val.images)}


class CCMTask(_Stage):
    """Stage 3: the CCM learns to steer the frozen decoder (pixel + perceptual + GAN losses)."""

    name = "realsrt_ccm"
    keys = COMMON_KEYS + ("ccm", "tokens", "steps", "confidence", "losses", "discriminator")
    trained = "ccm"

    def _build_model(self) -> RealSRT:
        model = self._load_init()
        if model.ccm is None:
            try:
                model.add_ccm(self.cfg.get("ccm"))
            except (TypeError, ValueError) as e:
                raise OptionError(f"bad ccm option: {e}") from e
        else:
            log.info("continuing to train the CCM found in init")
        return model

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str) -> None:
        super().__init__(cfg, device)
        assert self.model.ccm is not None
        self.ccm = self.model.ccm
        self.ccm.requires_grad_(True)
        self.tokens = check_choice("tokens", self.cfg.get("tokens", "generated"), ("generated", "gt"))
        self.steps = int(self.cfg.get("steps", 4))
        default_conf = "critic" if self.model.critic is not None else "generator"
        self.confidence = str(self.cfg.get("confidence", default_conf))
        if self.confidence == "critic" and self.model.critic is None:
            raise OptionError("confidence: critic, but init has no critic (train the critic stage first)")
        self.loss_weights = self.read_losses(CCM_LOSS_DEFAULTS)
        perceptual = self._perceptual() if self.loss_weights["perceptual"] > 0 else None
        self.loss = self.image_loss(self.loss_weights, input_range=(0.0, 1.0), perceptual=perceptual)
        # the slow reference of the artefact term: a frozen copy of the CCM, moved towards it
        # after every step (a module of the task, so checkpoints carry it and resume is exact)
        self.ccm_ref: nn.Module | None = None
        if float(self.loss_weights["artifacts"]) > 0:
            self.ccm_ref = copy.deepcopy(self.ccm).requires_grad_(False).eval()

    def train_dataset(self) -> Dataset[Any]:
        data = section(self.cfg, "data")
        return self.dataset(data, usm_hr=True) if self.loss_weights["usm_target"] else self.dataset(data)

    def _perceptual(self) -> nn.Module | None:
        """VGG19 when its file is found; else the ``substitute`` weights move onto L1 and MS-SSIM."""
        from tokensr.nn.vgg import find_vgg19

        path = find_vgg19(self.loss_weights["vgg"])
        if path is not None:
            return L.build_perceptual(str(path), input_range=(-1.0, 1.0))
        sub = dict(self.loss_weights["substitute"] or {})
        check_keys(sub, ("l1", "ms_ssim"), "losses.substitute")
        log.warning(
            "no VGG19 weights (losses.vgg=FILE or TOKENSR_VGG19): the CCM trains with the substitute "
            "perceptual losses %s instead",
            sub,
        )
        self.loss_weights["perceptual"] = 0.0
        self.loss_weights["l1"] += float(sub.get("l1", 0.0))
        self.loss_weights["ms_ssim"] += float(sub.get("ms_ssim", 0.0))
        return None

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {
            "ccm": self.ccm,
            "generator": self.model.generator,
            "tokenizer": self.model.tokenizer,
        }
        if self.model.critic is not None:
            mods["critic"] = self.model.critic
        if self.discriminator is not None:
            mods["discriminator"] = self.discriminator
        ref = getattr(self, "ccm_ref", None)  # set after the base class's __init__
        if ref is not None:
            mods["ccm_ref"] = ref
        return mods

    def ema_modules(self) -> list[str]:
        return [name for name in self.modules() if name != "ccm_ref"]

    @torch.no_grad()
    def _reference_output(self, ids: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The artefact term's reference: the decoder steered by the slow CCM copy, after moving
        that copy one EMA step towards the CCM being trained."""
        assert self.ccm_ref is not None
        decay = float(self.loss_weights["artifacts_ema"])
        for p_ref, p in zip(self.ccm_ref.parameters(), self.ccm.parameters(), strict=True):
            p_ref.lerp_(p.detach(), 1.0 - decay)
        trained = self.model.ccm
        self.model.ccm = self.ccm_ref  # type: ignore[assignment]
        try:
            return self.model.decode(ids, cond.hw, cond.lr_up, clamp=False)
        finally:
            self.model.ccm = trained

    def param_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        groups = super().param_groups()
        groups["g"] = trainable_parameters(self.ccm)
        return groups

    @torch.no_grad()
    def _tokens(self, hr: torch.Tensor, cond: Condition) -> torch.Tensor:
        if self.tokens == "gt":
            return self.model.tokenizer.tokenize(hr).flatten(1)
        return self.model.generate(cond, self.steps, self.confidence, score_last=False).tokens

    def losses(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        self.keep_frozen()
        hr, lr, sample_weight = self.inputs(batch)
        assert lr is not None
        cond = self.model.condition(lr)
        ids = self._tokens(hr, cond)
        # the losses see the decoder's unclamped output, as the reference code's: a clamp would
        # stop the gradient wherever the CCM overshoots [0, 1]
        out = self.model.decode(ids, cond.hw, cond.lr_up, clamp=False)
        target = batch["hr_usm"].to(hr) if self.loss_weights["usm_target"] else hr
        terms = self.loss(out, target, step, last_layer=self.ccm.last_layer, sample_weight=sample_weight, real=hr)
        logs = {**terms.logs, "psnr": L.psnr(out.clamp(0, 1), hr)}
        if self.ccm_ref is None:
            return terms.per_optimizer(), logs
        artifacts = L.artifact_loss(out, self._reference_output(ids, cond), target)
        logs["artifacts"] = artifacts.item()
        return terms.per_optimizer(terms.g + float(self.loss_weights["artifacts"]) * artifacts), logs

    def evaluate(self, batch: dict[str, torch.Tensor], step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        hr, lr = batch["hr"], batch["lr"]
        cond = self.model.condition(lr)
        ids = self.model.generate(cond, self.steps, self.confidence, score_last=False).tokens
        plain = self.model.decode(ids, cond.hw)
        steered = self.model.decode(ids, cond.hw, cond.lr_up)
        metrics = {"psnr_no_ccm": L.psnr(plain, hr), "psnr_ccm": L.psnr(steered, hr)}
        return metrics, {"no_ccm_ccm_hr": image_rows([plain, steered, hr], self.val.images)}


__all__ = ["GeneratorTask", "CriticTask", "CCMTask", "CCM_LOSS_DEFAULTS", "load_init"]
