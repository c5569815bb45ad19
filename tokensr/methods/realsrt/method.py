"""RealSRT as an SR method: ``build(scale, weights, device, **options)``.

Two ways to run the patch-sized transformers over an LR image of any size (``aggregate``):

- ``tokens``: the whole image is upsampled and tokenised once; the generator and critic run on
  overlapping windows of the token grid (the model's patch size in tokens, every ``stride``);
  each token is kept from the window where it is most central
  (:mod:`tokensr.inference.token_windows`); the CCM runs window by window on the same grid
  (its encoder once over the whole image); the whole token map is decoded once and
  colour-corrected towards the whole LR image. On big images the three convolutional
  networks (tokenizer encoder, CCM encoder, decoder) run in large tiles of the token grid
  with a margin (:data:`CONV_TILE`, :mod:`tokensr.inference.grid_tiles`), which bounds their
  memory. No two windows'
  textures are averaged, and the decoder's receptive field spans window borders, so there
  are no seams. A caller's :attr:`RealSRTMethod.progress_hook` ``(done, total)`` hears of each
  batch of windows generated, of CCM windows fused and of each decoder tile decoded
  (``tokensr.inference.progress``), so one image shows progress on its own.
- ``pixels`` (the paper's sec. 3.4): the image is cut into overlapping LR patches, each patch
  is upsampled, tokenised, generated, decoded (through the CCM when present) and
  colour-corrected towards its LR patch, and the patches are blended with Gaussian weights
  (``tokensr.inference.patches``).

Options (strings are accepted, as the benchmark passes them):

- ``steps`` (4): iterations T.
- ``confidence`` ('critic' when the model has a critic, else 'generator'): which confidence
  chooses the tokens to re-mask; 'generator' is MaskGIT's rule (the paper's ablation).
- ``ccm`` (true when the model has one): decode through the conditional controlling module.
- ``aggregate`` (:data:`DEFAULT_AGGREGATE`): ``tokens`` or ``pixels``, as above.
- ``patch`` (the model's ``lr_patch``, in LR pixels), ``stride`` (in LR pixels; the model's
  saved stride, else patch/2: the paper's half overlap; with ``aggregate=tokens`` the default
  is :data:`TOKEN_STRIDE` of the patch), ``batch`` (patches or windows per forward pass;
  :data:`DEFAULT_BATCH`), ``color_fix``
  (:data:`DEFAULT_COLOR_FIX` 'wavelet' | 'adain' as in the paper | 'none'), ``color_levels``
  (wavelet depth, 5; fewer = more of the LR, more = more generated texture), ``rounding``
  ('ceil' as in the paper | 'floor' as in the reference code), ``temperature`` (0 = argmax,
  deterministic) and ``seed`` (for temperature > 0).
- ``lr_encoder`` (:data:`DEFAULT_LR_ENCODER`): the precision of the tokenizer encoder that
  makes the LR tokens. ``autocast`` runs it in the method's precision (bf16 convolutions where
  ``--precision`` resolves to bf16; the nearest-code search stays float32); ``fp32`` always
  runs it in float32, as training made the LR tokens. The two differ only under bf16/fp16.
A model folder may carry its own defaults for these options (``defaults`` in its config.json;
``tokensr convert`` stores the authors' inference settings there); options given now win.

- ``save_steps``: also write a Fig.-1-style PNG (image after each step + confidence maps).
  A path ending in ``.png`` is written as given (``-2``, ``-3``... appended for later images);
  otherwise it is a folder and each image gets ``<name>_steps.png`` where ``name`` is
  :attr:`RealSRTMethod.figure_name` when the caller sets it (e.g. the input file's stem), else
  ``realsrt-0001``, ``realsrt-0002``... ``save_steps=True`` (the bare ``--save-steps`` flag)
  means the folder ``realsrt-steps`` in the current directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokensr.errors import OptionError
from tokensr.inference.colorfix import COLOR_FIXES, DEFAULT_WAVELET_LEVELS, color_fix
from tokensr.inference.grid_tiles import grid_tile_count, map_in_tiles
from tokensr.inference.patches import aggregate_patches, reflect_pad
from tokensr.inference.progress import Progress
from tokensr.inference.token_windows import WindowGrid
from tokensr.methods.loading import (
    as_bool,
    as_choice,
    as_float,
    as_int,
    color_levels_option,
    load_saved_model,
    save_steps_target,
)
from tokensr.methods.realsrt.figure import save_step_figure
from tokensr.methods.realsrt.model import Condition, RealSRT
from tokensr.methods.realsrt.sampling import CONFIDENCES, ROUNDINGS, GenerationResult

log = logging.getLogger(__name__)

# bundled default per scale (trained by the lead; see docs/realsrt.md)
DEFAULT_WEIGHTS: dict[int, str] = {4: "realsrt-small-x4", 2: "realsrt-small-x2"}
# colour correction towards the LR input: the paper's 'adain', or 'wavelet' (the LR's low
# frequencies with the model's detail), chosen for the bundled weights (docs/realsrt.md). With
# aggregate='pixels' it corrects each decoded patch towards its LR patch, as the paper does;
# with 'tokens' (the default) it runs once on the decoded image (per tile) against the LR
DEFAULT_COLOR_FIX = "wavelet"
# wavelet levels per scale; none measured better than the fix's 5 (2..5 at x4, docs/realsrt.md)
COLOR_LEVELS: dict[int, int] = {}
# where step figures go when save_steps is just "on" (the CLI flag without a path)
DEFAULT_STEPS_DIR = "realsrt-steps"
# windows (or patches) per transformer call: on 2 CPU cores 32 windows take 27 % less time per
# window than 8 (GEMMs of 32 x 256 tokens keep both cores busy), with the same output
DEFAULT_BATCH = 32
# precision of the tokenizer encoder of the LR stream (see the module docstring): under bf16 on
# 2 CPU cores "autocast" takes about 0.9x the time of "fp32" for the whole method and changes
# 1.6 % of the LR tokens, with the same quality on the validation split (docs/realsrt.md "Speed")
LR_ENCODERS = ("autocast", "fp32")
DEFAULT_LR_ENCODER = "autocast"
AGGREGATES = ("tokens", "pixels")
DEFAULT_AGGREGATE = "tokens"
# default window stride of aggregate=tokens, as a share of the patch (docs/realsrt.md)
TOKEN_STRIDE = 1.0
# aggregate=tokens runs the convolutional networks (tokenizer encoder, CCM encoder, decoder)
# in tiles of this many tokens a side plus a margin, which bounds their memory on large images
# (tokensr.inference.grid_tiles; GroupNorm statistics are per tile, so tiles are large)
CONV_TILE = 192
CONV_MARGIN = 8


@dataclass
class StepOutputs:
    """Per-step results of :meth:`RealSRTMethod.upscale_with_steps` (full resolution)."""

    images: list[torch.Tensor]  # T x [B, 3, H, W] in [0, 1]: the image decoded after each step
    confidences: list[torch.Tensor]  # T x [B, 1, H, W] in [0, 1]: token confidences (1 = sure)

    @property
    def final(self) -> torch.Tensor:
        return self.images[-1]


class RealSRTMethod:
    name = "realsrt"

    def __init__(
        self,
        model: RealSRT,
        steps: int = 4,
        confidence: str = "critic",
        use_ccm: bool = True,
        patch: int | None = None,
        stride: int | None = None,
        batch: int = DEFAULT_BATCH,
        color: str = DEFAULT_COLOR_FIX,
        color_levels: int = DEFAULT_WAVELET_LEVELS,
        rounding: str = "ceil",
        temperature: float = 0.0,
        seed: int = 0,
        save_steps: str | None = None,
        var: float = 0.05,
        aggregate: str = DEFAULT_AGGREGATE,
        lr_encoder: str = DEFAULT_LR_ENCODER,
    ) -> None:
        self.model = model.eval()
        self.scale = model.scale
        self.steps = steps
        self.confidence = confidence
        self.use_ccm = use_ccm
        self.patch = patch or model.config.lr_patch
        self.stride = stride or default_stride(model, self.patch)
        self.batch = batch
        self.color = color
        self.color_levels = color_levels
        self.rounding = rounding
        self.temperature = temperature
        self.seed = seed
        self.save_steps = save_steps
        self.var = var
        self.aggregate = aggregate
        self.lr_encoder = lr_encoder
        self.figure_name: str | None = None  # set by a caller to name the next step figure
        # progress_hook(done, total): set by a caller (tiling does) to hear of each token window
        # generated, each CCM window fused and each decoder tile decoded (aggregate=tokens)
        self.progress_hook: Progress | None = None
        self._figures = 0
        self._done = 0
        self._total = 0

    @property
    def device(self) -> torch.device:
        """Where the model lives (the pipeline moves inputs here)."""
        return self.model.device

    # --- one batch of LR patches -------------------------------------------------------------
    def _rng(self) -> torch.Generator | None:
        return torch.Generator().manual_seed(self.seed) if self.temperature > 0 else None

    def _generate(self, x: torch.Tensor, score_last: bool) -> tuple[Condition, GenerationResult]:
        cond = self.model.condition(x, exact=self.lr_encoder == "fp32")
        result = self.model.generate(
            cond, self.steps, self.confidence, self.rounding, self.temperature, self._rng(), score_last=score_last
        )
        return cond, result

    def _decode(self, ids: torch.Tensor, cond: Condition, x: torch.Tensor) -> torch.Tensor:
        img = self.model.decode(ids, cond.hw, cond.lr_up if self.use_ccm else None)
        return color_fix(img, x, self.color, self.color_levels).clamp(0, 1)

    @torch.no_grad()
    def _patch_final(self, x: torch.Tensor) -> torch.Tensor:
        cond, result = self._generate(x, score_last=False)
        return self._decode(result.tokens, cond, x)

    @torch.no_grad()
    def _patch_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Stack of T images then T confidence maps on the channel axis."""
        cond, result = self._generate(x, score_last=True)
        size = cond.lr_up.shape[-2:]
        images = [self._decode(s.tokens, cond, x) for s in result.steps]
        confs = [
            torch.nn.functional.interpolate(s.confidence.view(-1, 1, *cond.hw), size=size, mode="nearest")
            for s in result.steps
        ]
        return torch.cat(images + confs, dim=1)

    # --- whole images --------------------------------------------------------------------------
    def _check(self, lr: torch.Tensor) -> torch.Tensor:
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise OptionError(f"realsrt expects an RGB batch [B, 3, h, w], got {tuple(lr.shape)}")
        return lr.to(self.model.device, torch.float32)

    @torch.no_grad()
    def upscale_with_steps(self, lr: torch.Tensor) -> StepOutputs:
        """The image after each of the ``steps`` iterations and each step's confidence map."""
        lr = self._check(lr)
        if self.aggregate == "tokens":
            return self._upscale_tokens(lr, with_steps=True)
        out = aggregate_patches(lr, self._patch_steps, self.scale, self.patch, self.stride, self.batch, self.var)
        t = self.steps
        images = [out[:, 3 * i : 3 * i + 3].clamp(0, 1) for i in range(t)]
        confs = [out[:, 3 * t + i : 3 * t + i + 1].clamp(0, 1) for i in range(t)]
        return StepOutputs(images, confs)

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        if self.save_steps:
            result = self.upscale_with_steps(lr)
            for k in range(lr.shape[0]):
                self._write_figure(lr[k], [im[k] for im in result.images], [c[k] for c in result.confidences], k)
            return result.final
        lr = self._check(lr)
        if self.aggregate == "tokens":
            return self._upscale_tokens(lr, with_steps=False).final
        out = aggregate_patches(lr, self._patch_final, self.scale, self.patch, self.stride, self.batch, self.var)
        return out.clamp(0, 1)

    # --- aggregate=tokens ------------------------------------------------------------------------
    def _pad_lr(self, lr: torch.Tensor) -> torch.Tensor:
        """Reflect-pad the bottom/right so each side is at least the patch and its upsampled
        size a multiple of the tokenizer factor."""
        f = self.model.tokenizer.factor

        def need(n: int) -> int:
            n = max(n, self.patch)
            while (n * self.scale) % f:
                n += 1
            return n

        h, w = lr.shape[-2:]
        return reflect_pad(lr, 0, need(w) - w, 0, need(h) - h)

    def _window_tokens(self) -> tuple[int, int]:
        """The window and its stride in tokens."""
        f = self.model.tokenizer.factor
        return self.patch * self.scale // f, max(1, round(self.stride * self.scale / f))

    @torch.no_grad()
    def _upscale_tokens(self, lr: torch.Tensor, with_steps: bool) -> StepOutputs:
        """Tokenise once, generate per window, keep each token from its most central window,
        decode once (see the module docstring)."""
        h, w = lr.shape[-2:]
        padded = self._pad_lr(lr)
        cond = self.model.condition(padded, CONV_TILE, CONV_MARGIN, exact=self.lr_encoder == "fp32")
        rows, cols = cond.hw
        window, stride = self._window_tokens()
        grid = WindowGrid(rows, cols, window, stride)
        b = lr.shape[0]
        lr_grid = cond.lr.reshape(b, rows, cols, *cond.lr.shape[2:])
        t_out = self.steps if with_steps else 1
        tokens = [torch.zeros(b, rows, cols, dtype=torch.long, device=lr.device) for _ in range(t_out)]
        confs = [torch.ones(b, rows, cols, device=lr.device) for _ in range(t_out)]
        jobs = [(k, top, left, part) for k in range(b) for top, left, part in grid.parts]
        # progress steps: each window generated, each CCM window fused, each decoder tile
        decode_steps = (len(grid.parts) if self.use_ccm else 0) + grid_tile_count(rows, cols, CONV_TILE, CONV_MARGIN)
        self._start_progress(len(jobs) + t_out * b * decode_steps)
        rng = self._rng()
        for n in range(0, len(jobs), self.batch):
            chunk = jobs[n : n + self.batch]
            win = torch.stack([lr_grid[k, top : top + window, left : left + window] for k, top, left, _ in chunk])
            wcond = Condition(cond.lr_up[:0], win.flatten(1, 2), (window, window))
            result = self.model.generate(
                wcond, self.steps, self.confidence, self.rounding, self.temperature, rng, score_last=with_steps
            )
            # the last step re-masks nothing, so its canvas is the final token map
            picks = result.steps if with_steps else result.steps[-1:]
            for i, (k, _, _, (gr, gc, wr, wc)) in enumerate(chunk):
                for t, step in enumerate(picks):
                    tokens[t][k, gr, gc] = step.tokens[i].view(window, window)[wr, wc]
                    confs[t][k, gr, gc] = step.confidence[i].view(window, window)[wr, wc].float()
            self._advance(len(chunk))
        images = []
        for ids in tokens:
            img = self._decode_map(ids, cond.lr_up, grid)
            img = color_fix(img, padded, self.color, self.color_levels).clamp(0, 1)
            images.append(img[..., : h * self.scale, : w * self.scale])
        size = cond.lr_up.shape[-2:]
        maps = [
            torch.nn.functional.interpolate(c[:, None], size=size, mode="nearest")[
                ..., : h * self.scale, : w * self.scale
            ]
            for c in confs
        ]
        return StepOutputs(images, maps)

    def _decode_map(self, ids: torch.Tensor, lr_up: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
        """Decode a whole token map ``[B, rows, cols]`` (through the CCM, window by window, when
        it is on) to an image in [0, 1]; the decoder runs in large tiles with a margin."""
        tok = self.model.tokenizer
        f = tok.factor
        rows, cols = ids.shape[-2:]
        h = tok.post_quant_conv(tok.quantizer.lookup(ids))
        if self.use_ccm:
            assert self.model.ccm is not None
            ccm = self.model.ccm
            feats = map_in_tiles(ccm.encoder, tok.to_net(lr_up), (rows, cols), CONV_TILE, CONV_MARGIN, unit_in=f)
            fused = h.clone()
            window = grid.window
            for k in range(ids.shape[0]):
                for n in range(0, len(grid.parts), self.batch):
                    chunk = grid.parts[n : n + self.batch]
                    hw = torch.stack([h[k, :, t : t + window, c : c + window] for t, c, _ in chunk])
                    cw = torch.stack([feats[k, :, t : t + window, c : c + window] for t, c, _ in chunk])
                    out = ccm.fuse(hw, cw)
                    for (_, _, (gr, gc, wr, wc)), o in zip(chunk, out, strict=False):
                        fused[k, :, gr, gc] = o[:, wr, wc]
                    self._advance(len(chunk))
            h = fused
        out = map_in_tiles(
            tok.decoder, h, (rows, cols), CONV_TILE, CONV_MARGIN, unit_out=f, after_each=lambda: self._advance(len(ids))
        )
        return tok.from_net(out).clamp(0, 1)

    # --- progress (aggregate=tokens) -------------------------------------------------------------
    def _start_progress(self, total: int) -> None:
        self._done, self._total = 0, total

    def _advance(self, n: int) -> None:
        """``n`` more steps (windows, or decoder tiles times images) are done; tell the hook."""
        self._done += n
        if self.progress_hook is not None and self._total > 0:
            self.progress_hook(min(self._done, self._total), self._total)

    def _figure_path(self, index: int = 0) -> Path:
        """Where the next figure goes (``index``: position in the batch, for named figures)."""
        assert self.save_steps is not None
        self._figures += 1
        target = Path(self.save_steps)
        if target.suffix.lower() == ".png":
            return target if self._figures == 1 else target.with_name(f"{target.stem}-{self._figures}.png")
        name = f"{self.figure_name}-{index + 1}" if self.figure_name and index else self.figure_name
        name = name or f"realsrt-{self._figures:04d}"
        return target / f"{name}_steps.png"

    def _write_figure(
        self, lr: torch.Tensor, images: list[torch.Tensor], confs: list[torch.Tensor], index: int = 0
    ) -> None:
        path = save_step_figure(self._figure_path(index), lr, images, confs)
        log.info("wrote step figure %s", path)


# --- factory ---------------------------------------------------------------------------------
def default_stride(model: RealSRT, patch: int) -> int:
    """The model's saved inference stride for its own patch size, else half the patch."""
    if model.config.stride and patch == model.config.lr_patch:
        return int(model.config.stride)
    return max(1, patch // 2)


def load_model(weights: str | None, scale: int, device: str | torch.device = "cpu") -> RealSRT:
    """Load a saved RealSRT folder (or the bundled default for ``scale``) onto ``device``."""
    return load_saved_model(RealSRT, weights, scale, DEFAULT_WEIGHTS, device)


def build(scale: int = 4, weights: str | None = None, device: str = "cpu", **options: Any) -> RealSRTMethod:
    """Build RealSRT for ``scale`` from ``weights`` (a saved folder; None = the bundled default)."""
    known = {
        "steps",
        "confidence",
        "ccm",
        "aggregate",
        "patch",
        "stride",
        "batch",
        "color_fix",
        "color_levels",
        "rounding",
        "temperature",
        "seed",
        "save_steps",
        "lr_encoder",
    }
    unknown = sorted(k for k, v in options.items() if k not in known and v is not None)
    if unknown:
        raise OptionError(
            f"realsrt does not take the option(s): {', '.join(unknown)} (it takes {', '.join(sorted(known))})"
        )
    opts = {k: v for k, v in options.items() if v is not None}
    model = load_model(weights, int(scale), device)
    if model.device.type == "cpu":
        # oneDNN's convolutions run about 10 % faster on channels-last maps on 2 CPU cores
        # (tokenizer encoder, CCM encoder, decoder; docs/realsrt.md "Speed"); outputs agree to
        # float rounding (max 2e-5 on a 512-px output)
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from the stubs
    saved = model.config.defaults or {}
    if sorted(set(saved) - known):
        raise OptionError(f"the model's saved defaults name unknown option(s): {', '.join(sorted(set(saved) - known))}")
    opts = {**saved, **opts}  # options given now win over the model's saved defaults

    confidence = as_choice(
        "confidence", opts.get("confidence", "critic" if model.critic is not None else "generator"), CONFIDENCES
    )
    if confidence == "critic" and model.critic is None:
        raise OptionError("this realsrt model has no critic; use --confidence generator or train the critic stage")
    use_ccm = as_bool("ccm", opts.get("ccm", model.ccm is not None))
    if use_ccm and model.ccm is None:
        raise OptionError("this realsrt model has no CCM; pass ccm=false or train the CCM stage")
    patch = as_int("patch", opts.get("patch", model.config.lr_patch))
    f = model.tokenizer.factor
    if (patch * model.scale) % f:
        raise OptionError(f"patch {patch} times the scale {model.scale} must be a multiple of the tokenizer factor {f}")
    aggregate = as_choice("aggregate", opts.get("aggregate", DEFAULT_AGGREGATE), AGGREGATES)
    if aggregate == "tokens":
        default = max(1, round(TOKEN_STRIDE * patch))
    else:
        default = default_stride(model, patch)
    stride = as_int("stride", opts.get("stride", default))
    if aggregate == "tokens" and (stride * model.scale) % f:
        raise OptionError(
            f"stride {stride} times the scale {model.scale} must be a multiple of the tokenizer factor {f} "
            "with aggregate=tokens"
        )
    if stride > patch:
        raise OptionError(f"stride {stride} must not exceed the patch size {patch}")
    save_steps = save_steps_target(opts.get("save_steps"), DEFAULT_STEPS_DIR)
    return RealSRTMethod(
        model,
        steps=as_int("steps", opts.get("steps", 4)),
        confidence=confidence,
        use_ccm=use_ccm,
        patch=patch,
        stride=stride,
        batch=as_int("batch", opts.get("batch", DEFAULT_BATCH)),
        color=as_choice("color_fix", opts.get("color_fix", DEFAULT_COLOR_FIX), COLOR_FIXES),
        color_levels=color_levels_option(opts.get("color_levels"), model.scale, COLOR_LEVELS),
        rounding=as_choice("rounding", opts.get("rounding", "ceil"), ROUNDINGS),
        temperature=as_float("temperature", opts.get("temperature", 0.0)),
        seed=as_int("seed", opts.get("seed", 0), minimum=0),
        save_steps=save_steps,
        aggregate=aggregate,
        lr_encoder=as_choice("lr_encoder", opts.get("lr_encoder", DEFAULT_LR_ENCODER), LR_ENCODERS),
    )
