"""The Python API: `load` an SR method, `upscale` an image.

    >>> import tokensr
    >>> sr = tokensr.upscale("photo.jpg", method="bicubic", scale=4)   # PIL image
    >>> method = tokensr.load("bicubic", scale=2)
    >>> sr = tokensr.upscale(numpy_rgb_uint8, method=method)           # uint8 array

`upscale` returns the kind of image it was given: PIL in, PIL out (same mode family);
numpy in, numpy out (same dtype and channel layout); a path in, a PIL image out.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokensr.errors import OptionError
from tokensr.inference.pipeline import DEFAULT_OVERLAP, upscale_image
from tokensr.inference.precision import DEFAULT_PRECISION
from tokensr.inference.tiling import Progress
from tokensr.io import LoadedImage, from_pil, read_image, to_pil
from tokensr.methods import METHODS, build_method
from tokensr.methods.base import SRMethod

# config.json "model_type" of saved weights -> the method (in tokensr.methods.METHODS) that runs them.
MODEL_TYPE_TO_METHOD: dict[str, str] = {
    "realsrt": "realsrt",
    "iter": "iter",
    "ugtsr": "ugtsr",
    "femasr": "femasr",
}

DEFAULT_SCALE = 4


def check_device(device: str | torch.device) -> str:
    """Validate a device string ('cpu', 'cuda', 'cuda:1', 'mps'); OptionError if unusable here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise OptionError(f"unknown device '{device}' (use cpu or cuda)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(
                f"device '{device}' requested but CUDA is not available on this machine (use --device cpu)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"device '{device}' does not exist ({torch.cuda.device_count()} CUDA device(s) found)")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise OptionError(f"device '{device}' requested but MPS is not available on this machine")
    elif dev.type != "cpu":
        raise OptionError(f"unsupported device '{device}' (use cpu or cuda)")
    return str(dev)


def _is_method(obj: Any) -> bool:
    return callable(obj) and hasattr(obj, "scale") and hasattr(obj, "name") and not isinstance(obj, (str, os.PathLike))


def method_for_weights(name_or_path: str | os.PathLike[str]) -> tuple[str, Path, dict[str, Any]]:
    """(method name, weights folder, config) for a bundled model name or a weights folder."""
    from tokensr import pretrained

    try:
        folder = pretrained.resolve(name_or_path)
    except pretrained.WeightsNotFoundError as e:
        raise OptionError(str(e)) from e
    try:
        config = pretrained.read_config(folder)
    except (OSError, json.JSONDecodeError) as e:
        raise OptionError(f"{folder / pretrained.CONFIG_NAME}: unreadable model config ({e})") from e
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPE_TO_METHOD:
        known = ", ".join(sorted(MODEL_TYPE_TO_METHOD))
        raise OptionError(f"{folder}: model_type '{model_type}' is not an SR model tokensr can run (known: {known})")
    return MODEL_TYPE_TO_METHOD[model_type], folder, config


def load(
    name_or_path_or_method: str | os.PathLike[str] | SRMethod,
    scale: int | None = None,
    device: str = "cpu",
    **options: Any,
) -> SRMethod:
    """Build an SR method from a method name, a bundled model name, or a weights folder.

    - a name in ``tokensr.methods.METHODS`` (``"bicubic"``, ``"realsrt"``, ...) builds that
      method (with its default weights, if it has any);
    - a bundled model name or a folder with ``config.json`` picks the method from the config's
      ``model_type`` and loads those weights;
    - an already built method is returned as it is.

    ``scale`` defaults to the config's ``scale`` for weights, else 4. ``options`` go to the
    method's factory (e.g. ``steps=8``).
    """
    if _is_method(name_or_path_or_method):
        method = name_or_path_or_method
        if scale is not None and int(method.scale) != scale:  # type: ignore[union-attr]
            raise OptionError(f"method '{method.name}' upscales x{method.scale}, not x{scale}")  # type: ignore[union-attr]
        return method  # type: ignore[return-value]
    if not isinstance(name_or_path_or_method, (str, os.PathLike)):
        kind = type(name_or_path_or_method).__name__
        raise OptionError(f"expected a method name, a model name or path, or a method; got {kind}")
    device = check_device(device)
    name = os.fspath(name_or_path_or_method)
    if name in METHODS:
        return build_method(name, scale=scale or DEFAULT_SCALE, weights=None, device=device, **options)
    try:
        method_name, folder, config = method_for_weights(name)
    except OptionError as e:
        raise OptionError(f"'{name}' is not a method ({', '.join(METHODS)}) or a model: {e}") from e
    use_scale = scale or int(config.get("scale", DEFAULT_SCALE))
    return build_method(method_name, scale=use_scale, weights=str(folder), device=device, **options)


def _loaded_from_array(arr: np.ndarray) -> tuple[LoadedImage, Any]:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise OptionError(f"expected an H x W, H x W x 1/2/3/4 image array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise OptionError("image array has no pixels")
    if arr.dtype == np.uint8:
        planes, bits = arr.astype(np.float32) / 255.0, 8
    elif arr.dtype == np.uint16:
        planes, bits = arr.astype(np.float32) / 65535.0, 16
    elif arr.dtype.kind == "f":
        planes = arr.astype(np.float32)
        if not np.isfinite(planes).all():
            raise OptionError("float image array contains NaN or infinity")
        lo, hi = float(planes.min()), float(planes.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise OptionError(f"float image arrays must hold values in [0, 1] (got {lo:.4g}..{hi:.4g})")
        planes, bits = np.clip(planes, 0.0, 1.0), 16
    else:
        raise OptionError(f"unsupported image array dtype {arr.dtype} (use uint8, uint16 or float in [0, 1])")
    return LoadedImage.from_planes(planes, bit_depth=bits), arr.dtype


def _array_from_loaded(img: LoadedImage, like: np.ndarray) -> np.ndarray:
    planes = img.planes()
    if like.ndim == 2:
        planes = planes[..., 0]
    if like.dtype == np.uint8:
        return img.to_uint(8) if like.ndim == 3 else img.to_uint(8)[..., 0]
    if like.dtype == np.uint16:
        return img.to_uint(16) if like.ndim == 3 else img.to_uint(16)[..., 0]
    return planes.astype(like.dtype)


def upscale(
    image: Any,
    method: str | os.PathLike[str] | SRMethod | None = None,
    scale: int | None = None,
    tile: int | None = None,
    device: str = "cpu",
    *,
    tile_overlap: int = DEFAULT_OVERLAP,
    tile_batch: int = 1,
    progress: bool | Progress = False,
    precision: str = DEFAULT_PRECISION,
    **options: Any,
) -> Any:
    """Upscale a PIL image, a numpy array or an image file; returns the same kind of image.

    image: ``PIL.Image.Image``; numpy ``H x W`` (gray), ``H x W x 3`` (RGB) or ``H x W x 4``
        (RGBA) — also ``H x W x 1`` / ``H x W x 2`` — as uint8, uint16 or float in [0, 1];
        or a path (returns a PIL image: 16-bit gray as mode I;16, 16-bit colour as 8-bit,
        since Pillow has no 16-bit colour mode; use the CLI or numpy for 16-bit colour).
    method: a method name, bundled model name or weights folder (see `load`), or a method;
        None = ``tokensr.methods.default_method(scale)``, the best bundled method for the
        scale (as the CLI without ``--method``), else bicubic.
    scale: upscaling factor (default: the method's / model's, else 4).
    tile: LR tile side (None: automatic, 512-px tiles for images larger than that; 0: the
        whole image in one pass); see ``tokensr.inference.tiling``. ``tile_overlap`` /
        ``tile_batch`` tune it.
    progress: True draws a tile progress bar on stderr (in a terminal); a callable
        ``progress(done, total)`` is called after every batch of tiles instead (e.g. to drive
        a web page's progress display).
    precision: the method's arithmetic, ``auto`` (bf16 on a CPU with native bfloat16, else
        fp32), ``fp32``, ``bf16`` or ``fp16`` (CUDA); see ``tokensr.inference.precision``.
    Alpha is upscaled separately (bicubic); gray stays gray; ICC profiles are kept.
    """
    from PIL import Image

    if method is None:
        from tokensr.methods import default_method

        method = default_method(scale)
    sr_method = load(method, scale=scale, device=device, **options)
    callback = progress if callable(progress) else None
    run = dict(
        tile=tile, overlap=tile_overlap, batch=tile_batch, quiet=not progress, progress=callback, precision=precision
    )
    if isinstance(image, Image.Image):
        result = upscale_image(from_pil(image), sr_method, **run)  # type: ignore[arg-type]
        return to_pil(result)
    if isinstance(image, np.ndarray):
        loaded, _ = _loaded_from_array(image)
        result = upscale_image(loaded, sr_method, **run)  # type: ignore[arg-type]
        return _array_from_loaded(result, image)
    if isinstance(image, (str, os.PathLike)):
        result = upscale_image(read_image(image), sr_method, **run)  # type: ignore[arg-type]
        return to_pil(result)
    raise OptionError(f"cannot upscale a {type(image).__name__}: give a PIL image, a numpy array or a file path")
