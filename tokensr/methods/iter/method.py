"""ITER as an SR method: ``build(scale, weights, device, **options)``.

The LR image is padded (reflect) to a multiple of :attr:`ITERMethod.pad_multiple`, the LQ
encoder gives ``S_l``, Algorithm 2 refines it (``tokensr.methods.iter.sampling``) and the
tokenizer decodes ``S_0``; the output is cropped to exactly ``scale*h x scale*w``.

Large images are tiled as the reference code does above 720^2 LR pixels at f=8 x4, expressed
in tokens so the rule means the same for any tokenizer: whole-image inference up to
``MAX_TOKENS`` tokens, otherwise tiles of ``TILE_TOKENS`` tokens a side that overlap by
``OVERLAP_TOKENS`` tokens, blended by ``tokensr.inference.tiling`` (f=4 x4: 128-px LR tiles
above 360^2 LR pixels; f=8 x4: 256-px tiles above 720^2, the reference's numbers).

Options (strings are accepted, as the benchmark passes them):

- ``steps`` (the model's, 8): ``T``.
- ``alpha`` (the model's tuned default): threshold of Eq. 6; larger = fewer tokens of ``S_l``
  trusted = more refinement steps = stronger textures.
- ``adaptive`` (true): choose the start step from ``alpha``; false runs all ``steps`` from a
  fully masked canvas.
- ``sample`` (false): draw tokens (at ``temperature``, 1.0) and new masks (multinomially,
  by the evaluation scores) as the reference code does; false (default) is deterministic:
  argmax tokens and the top-scored tokens kept. ``seed`` (0) seeds the draws.
- ``tile`` (auto): LR tile side in pixels; 0 turns tiling off. ``tile_overlap`` (auto).
- ``color_fix`` (``none`` | ``wavelet`` | ``adain``; default :data:`DEFAULT_COLOR_FIX`): correct
  the decoded colours towards the LR input (``tokensr.inference.colorfix``), per tile. The
  decoder sees only tokens, so low-frequency colour drifts are corrected here (as UGTSR does).
- ``save_steps``: also write a Fig.-1-style PNG per image (decoded image after each step and
  the keep masks); a path ending in ``.png`` or a folder (``True``: ``iter-steps/``).

After each call :attr:`ITERMethod.last_start_steps` lists the start step ``T_s`` (= steps
actually run) of every image or tile processed, and :attr:`ITERMethod.last_steps_run` is
their mean.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokensr.errors import OptionError
from tokensr.inference.colorfix import COLOR_FIXES, color_fix
from tokensr.inference.tiling import pad_to_multiple, upscale_tiled
from tokensr.methods.iter.model import ITER
from tokensr.methods.loading import (
    as_bool,
    as_choice,
    as_float,
    as_int,
    color_levels_option,
    load_saved_model,
    save_steps_target,
)

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS: dict[int, str] = {4: "iter-small-x4", 2: "iter-small-x2"}
DEFAULT_STEPS_DIR = "iter-steps"
DEFAULT_COLOR_FIX = "wavelet"  # as UGTSR's: keeps the LR's low frequencies (docs/iter.md)
COLOR_LEVELS: dict[int, int] = {4: 2}  # wavelet levels per scale (docs/iter.md: measured); 5 where absent
MAX_TOKENS = 360 * 360  # reference: whole images up to 720^2 LR px at f=8 x4 = 360^2 tokens
TILE_TOKENS = 128  # reference: 256-px LR tiles at f=8 x4
OVERLAP_TOKENS = 16  # reference: 16 px padding on each side of a 256-px tile = 2 x 8 tokens


@dataclass
class ITEROutput:
    """:meth:`ITERMethod.upscale_with_info` result."""

    image: torch.Tensor  # [B, 3, H, W] in [0, 1]
    start_steps: list[int]  # T_s per image or tile processed (= refinement steps run)
    good_fraction: list[float]  # share of S_l's tokens judged good (p >= alpha), same order

    @property
    def steps_run(self) -> float:
        return sum(self.start_steps) / max(len(self.start_steps), 1)


class _Core:
    """The untiled method on LR batches whose sides are multiples of ``pad_multiple``."""

    def __init__(self, owner: ITERMethod) -> None:
        self.owner = owner
        self.scale = owner.scale
        self.pad_multiple = owner.pad_multiple
        self.name = "iter"

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        return self.owner._run_core(lr)


class ITERMethod:
    name = "iter"

    def __init__(
        self,
        model: ITER,
        steps: int | None = None,
        alpha: float | None = None,
        adaptive: bool = True,
        sample: bool = False,
        temperature: float = 1.0,
        seed: int = 0,
        tile: int | None = None,
        tile_overlap: int | None = None,
        save_steps: str | None = None,
        color: str = DEFAULT_COLOR_FIX,
        color_levels: int | str | None = None,
    ) -> None:
        self.model = model.eval()
        self.color = as_choice("color_fix", color, COLOR_FIXES)
        self.color_levels = color_levels_option(color_levels, model.scale, COLOR_LEVELS)
        self.scale = model.scale
        self.steps = int(model.config.steps if steps is None else steps)
        self.alpha = float(model.config.alpha if alpha is None else alpha)
        self.adaptive = adaptive
        self.sample = sample
        self.temperature = temperature
        self.seed = seed
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.save_steps = save_steps
        self.figure_name: str | None = None  # set by a caller to name the next step figure
        self.last_start_steps: list[int] = []
        self.last_good_fraction: list[float] = []
        self._generator: torch.Generator | None = None
        self._figures = 0

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def pad_multiple(self) -> int:
        return self.model.lr_multiple

    @property
    def last_steps_run(self) -> float | None:
        """Mean start step ``T_s`` (refinement steps run) over the last call's images/tiles."""
        if not self.last_start_steps:
            return None
        return sum(self.last_start_steps) / len(self.last_start_steps)

    # --- tiling plan ---------------------------------------------------------------------------
    def _lr_px(self, tokens: int) -> int:
        """LR pixels spanned by ``tokens`` tokens, rounded up to the pad multiple."""
        px = max(1, tokens * self.model.factor // self.scale)
        m = self.pad_multiple
        return -(-px // m) * m

    def tile_plan(self, h: int, w: int) -> tuple[int | None, int]:
        """(LR tile side or None for one pass, LR overlap) for an ``h x w`` LR image."""
        overlap = self.tile_overlap if self.tile_overlap is not None else self._lr_px(OVERLAP_TOKENS)
        if self.tile == 0:
            return None, overlap
        if self.tile is not None:
            return (self.tile if max(h, w) > self.tile else None), overlap
        tokens = (h * self.scale // self.model.factor) * (w * self.scale // self.model.factor)
        if tokens <= MAX_TOKENS:
            return None, overlap
        return self._lr_px(TILE_TOKENS), overlap

    # --- one batch ----------------------------------------------------------------------------
    def _run_core(self, lr: torch.Tensor) -> torch.Tensor:
        out, _ = self._restore(lr, record=False)
        return out

    def _restore(self, lr: torch.Tensor, record: bool):  # type: ignore[no-untyped-def]
        h, w = lr.shape[-2:]
        x = pad_to_multiple(lr.to(self.device, torch.float32), self.pad_multiple)
        result = self.model.restore(
            x,
            steps=self.steps,
            alpha=self.alpha,
            adaptive=self.adaptive,
            sample=self.sample,
            temperature=self.temperature,
            generator=self._generator,
            record=record,
        )
        self.last_start_steps += [int(v) for v in result.start_steps.tolist()]
        self.last_good_fraction += result.good_init.flatten(1).float().mean(1).tolist()
        img = self.model.decode_tokens(result.tokens)[..., : h * self.scale, : w * self.scale]
        if self.color != "none":
            img = color_fix(img, lr.to(img), self.color, self.color_levels).clamp(0, 1)
        return img, result

    # --- whole images --------------------------------------------------------------------------
    def _check(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise OptionError(f"iter expects an RGB batch [B, 3, h, w], got {tuple(lr.shape)}")
        return lr.float()

    def _reset(self) -> None:
        self.last_start_steps = []
        self.last_good_fraction = []
        self._generator = None
        if self.sample:
            self._generator = torch.Generator(device=self.device).manual_seed(self.seed)

    @torch.no_grad()
    def upscale_with_info(self, lr: torch.Tensor) -> ITEROutput:
        """Upscale and report the steps run and the share of good ``S_l`` tokens."""
        lr = self._check(lr)
        self._reset()
        core = _Core(self)
        outs = []
        for i in range(lr.shape[0]):
            one = lr[i : i + 1]
            tile, overlap = self.tile_plan(one.shape[-2], one.shape[-1])
            if tile is None:
                if self.save_steps:
                    outs.append(self._with_figure(one))
                else:
                    outs.append(self._run_core(one).to(lr.device))
            else:
                if self.save_steps:
                    log.warning("iter: no step figure for a tiled image (%dx%d LR)", one.shape[-1], one.shape[-2])
                outs.append(upscale_tiled(core, one, tile=tile, overlap=overlap, device=self.device, quiet=True))
        image = torch.cat(outs).clamp(0, 1)
        return ITEROutput(image, list(self.last_start_steps), list(self.last_good_fraction))

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        return self.upscale_with_info(lr).image

    # --- step figure ---------------------------------------------------------------------------
    def _with_figure(self, lr: torch.Tensor) -> torch.Tensor:
        h, w = lr.shape[-2:]
        out, result = self._restore(lr, record=True)
        s = self.scale
        assert result.lq_tokens is not None
        images = [self.model.decode_tokens(result.lq_tokens[:1])]
        first = result.trace[0]["keep_in"] if result.trace else result.good_init  # m_{T_s}
        masks = [first[:1, None].float()]
        captions = ["S_l"]
        for i, step in enumerate(result.trace):
            images.append(self.model.decode_tokens(step["pred"][:1]))
            # under the prediction of step t: the mask m_{t-1} chosen from it (all kept after t=1)
            nxt = result.trace[i + 1]["keep_in"][:1, None] if i + 1 < len(result.trace) else None
            masks.append(nxt.float() if nxt is not None else torch.ones_like(masks[0]))
            captions.append(f"t={int(step['t'])}")
        images = [im[0, :, : h * s, : w * s] for im in images]
        keep_h, keep_w = -(-h * s // self.model.factor), -(-w * s // self.model.factor)
        masks = [m[0, :, :keep_h, :keep_w] for m in masks]
        from tokensr.methods.iter.figure import save_step_figure

        path = save_step_figure(self._figure_path(), lr[0], images, masks, captions)
        log.info("wrote step figure %s", path)
        return out.to(lr.device)

    def _figure_path(self) -> Path:
        assert self.save_steps is not None
        self._figures += 1
        target = Path(self.save_steps)
        if target.suffix.lower() == ".png":
            return target if self._figures == 1 else target.with_name(f"{target.stem}-{self._figures}.png")
        name = self.figure_name or f"iter-{self._figures:04d}"
        return target / f"{name}_steps.png"


# --- option parsing ----------------------------------------------------------------------------
def load_model(weights: str | None, scale: int, device: str | torch.device = "cpu") -> ITER:
    """Load a saved ITER folder (or the bundled default for ``scale``) onto ``device``."""
    return load_saved_model(ITER, weights, scale, DEFAULT_WEIGHTS, device)


KNOWN_OPTIONS = (
    "steps",
    "alpha",
    "adaptive",
    "sample",
    "temperature",
    "seed",
    "tile",
    "tile_overlap",
    "save_steps",
    "color_fix",
    "color_levels",
)


def build(scale: int = 4, weights: str | None = None, device: str = "cpu", **options: Any) -> ITERMethod:
    """Build ITER for ``scale`` from ``weights`` (a saved folder; None = the bundled default)."""
    unknown = sorted(k for k, v in options.items() if k not in KNOWN_OPTIONS and v is not None)
    if unknown:
        raise OptionError(
            f"iter does not take the option(s): {', '.join(unknown)} (it takes {', '.join(KNOWN_OPTIONS)})"
        )
    opts = {k: v for k, v in options.items() if v is not None}
    model = load_model(weights, int(scale), device)
    if not model.can_refine:
        log.warning("this iter model has no refinement/evaluation networks: output is the LQ encoder's tokens only")
    tile = as_int("tile", opts["tile"], minimum=0) if "tile" in opts else None
    if tile is not None and 0 < tile < 8:
        raise OptionError(f"option tile must be 0 (off) or at least 8 px, got {tile}")
    return ITERMethod(
        model,
        steps=as_int("steps", opts.get("steps", model.config.steps)),
        alpha=as_float("alpha", opts.get("alpha", model.config.alpha), 0.0, 1.0),
        adaptive=as_bool("adaptive", opts.get("adaptive", True)),
        sample=as_bool("sample", opts.get("sample", False)),
        temperature=as_float("temperature", opts.get("temperature", 1.0), 0.0),
        seed=as_int("seed", opts.get("seed", 0), minimum=0),
        tile=tile,
        tile_overlap=as_int("tile_overlap", opts["tile_overlap"], minimum=0) if "tile_overlap" in opts else None,
        save_steps=save_steps_target(opts.get("save_steps"), DEFAULT_STEPS_DIR),
        color=opts.get("color_fix", DEFAULT_COLOR_FIX),  # checked by ITERMethod
        color_levels=opts.get("color_levels"),  # checked by ITERMethod
    )


__all__ = ["COLOR_LEVELS", "DEFAULT_COLOR_FIX", "DEFAULT_WEIGHTS", "ITERMethod", "ITEROutput", "build", "load_model"]
