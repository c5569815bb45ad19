"""Training and evaluation datasets.

- :class:`HRCropDataset`: a folder of clean HR photos -> random crops (low-texture crops
  skipped or down-weighted), on-the-fly degradation to LR, flips and 90-degree rotations.
  Every item is a pure function of ``(seed, epoch, index)``: runs are reproducible, DataLoader
  workers and DDP ranks (which see different indices) get different samples, and
  ``set_epoch`` gives fresh crops each epoch.
- :class:`PairedFolderDataset`: fixed HR/LR pairs matched by file stem, full images, for
  evaluation (e.g. the output of ``tokensr degrade``).

Items are dicts of CHW float32 tensors in [0, 1].
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from tokensr.data import ops
from tokensr.data.degradations import Degradation, build_degradation
from tokensr.data.images import list_images, read_rgb
from tokensr.errors import ImageReadError, OptionError
from tokensr.pretrained import atomic_write_bytes

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def texture_score(img: np.ndarray) -> float:
    """Mean absolute luma gradient in 8-bit levels (uint8 or [0, 1] float input).

    Flat sky or a blank wall scores about 0.3-2, ordinary photo content 5-10, foliage, fur
    and text 10-30. Computed on every other pixel, which is plenty for a threshold.
    """
    a = img[::2, ::2]
    g = a.astype(np.float32) @ _LUMA
    if img.dtype != np.uint8:
        g *= 255.0
    if g.shape[0] < 2 or g.shape[1] < 2:
        return 0.0
    # the step is 2 pixels, so halve to express the score per pixel
    return 0.25 * (float(np.abs(np.diff(g, axis=0)).mean()) + float(np.abs(np.diff(g, axis=1)).mean()))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 float32 / uint8 array -> 3xHxW float32 tensor in [0, 1]."""
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))


def dihedral(img: np.ndarray, flip: bool, rot: int) -> np.ndarray:
    """Horizontal flip then ``rot`` quarter turns counter-clockwise."""
    if flip:
        img = img[:, ::-1]
    if rot % 4:
        img = np.rot90(img, rot % 4)
    return img


_WORKER_CONFIGURED = False


def _single_thread_in_workers() -> None:
    """In a DataLoader worker, keep OpenCV to one thread (the workers are the parallelism;
    nested thread pools only oversubscribe the cores)."""
    global _WORKER_CONFIGURED
    if not _WORKER_CONFIGURED and get_worker_info() is not None:
        cv2.setNumThreads(1)
        _WORKER_CONFIGURED = True


def excluded_names(exclude: str | os.PathLike[str] | Sequence[str]) -> set[str]:
    """The file names an ``exclude`` option names: a list, or a text file of one name per line."""
    if isinstance(exclude, (str, os.PathLike)):
        path = Path(exclude)
        if not path.is_file():
            raise OptionError(f"exclude: no such file: {exclude}")
        lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
        return {line for line in lines if line}
    return {Path(str(name)).name for name in exclude}


class HRCropDataset(Dataset):
    """Random HR crops of a photo folder, optionally degraded on the fly to LR.

    Args:
        root: folder of HR images (subfolders too when ``recursive``).
        crop_size: side of the square HR crop; must be a multiple of ``scale``. Images smaller
            than the crop are padded by reflection.
        scale: 2 or 4 (needed with a degradation), or None for HR-only items.
        degradation: 'realesrgan', 'bsrgan', 'bsrgan_plus', a degradation callable, or None.
        seed: base seed; item ``i`` of epoch ``e`` draws from ``default_rng([seed, e, i])``.
        texture_threshold: minimum :func:`texture_score` of a crop (8-bit levels, 0 = off).
        low_texture: 'skip' draws up to ``max_tries`` crops and keeps the first one above the
            threshold (else the most textured, down-weighted); 'weight' keeps the first crop
            and returns ``weight = min(1, score / threshold)``.
        augment: random horizontal flip and 90-degree rotation of the pair.
        length: items per epoch (default: one per image); item ``i`` uses image ``i % n``.
        cache_images: decoded images kept per process in an LRU (0 = decode every item).
        cache_dir: optional folder of prebuilt (crop, LR) pairs; item ``i`` of epoch ``e``
            reuses variant ``e % cache_variants``, so later epochs skip decoding and degrading
            (augmentation is still fresh). Filled lazily; a folder built with other settings
            is refused.
        usm_hr: also return ``hr_usm``, the USM-sharpened HR that Real-ESRGAN uses as the
            target of its pixel and perceptual losses.
        exclude: file names to leave out (e.g. a validation split): a list of names, or the
            path of a text file with one name per line (``#`` starts a comment).

    Items: ``{"hr": 3xSxS, "lr": 3x(S/scale)x(S/scale) (with a degradation), "weight": ()}``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        crop_size: int = 256,
        scale: int | None = None,
        degradation: str | Degradation | None = None,
        seed: int = 0,
        texture_threshold: float = 2.0,
        augment: bool = True,
        length: int | None = None,
        low_texture: str = "skip",
        max_tries: int = 10,
        cache_images: int = 8,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_variants: int = 1,
        recursive: bool = False,
        usm_hr: bool = False,
        exclude: str | os.PathLike[str] | Sequence[str] | None = None,
    ) -> None:
        self.files = list_images(root, recursive=recursive)
        if exclude is not None:
            names = excluded_names(exclude)
            self.files = [f for f in self.files if Path(f).name not in names]
        if not self.files:
            raise ImageReadError(f"no images found in {root}" + (" (after exclude)" if exclude is not None else ""))
        if crop_size < 1:
            raise OptionError(f"crop_size must be positive, got {crop_size}")
        if degradation is not None and scale is None:
            raise OptionError("a degradation needs a scale (2 or 4)")
        if scale is not None:
            if scale < 1:
                raise OptionError(f"scale must be positive, got {scale}")
            if crop_size % scale:
                raise OptionError(f"crop_size {crop_size} is not a multiple of the scale {scale}")
        if low_texture not in ("skip", "weight"):
            raise OptionError(f"low_texture must be 'skip' or 'weight', got '{low_texture}'")
        if seed < 0:
            raise OptionError("seed must be non-negative")
        self.root = Path(root)
        self.crop_size = int(crop_size)
        self.scale = scale
        self.degradation = build_degradation(degradation) if degradation is not None else None
        self.seed = int(seed)
        self.texture_threshold = float(texture_threshold)
        self.low_texture = low_texture
        self.max_tries = max(1, int(max_tries))
        self.augment = augment
        self.length = int(length) if length is not None else len(self.files)
        self.cache_images = max(0, int(cache_images))
        self.cache_variants = max(1, int(cache_variants))
        self.usm_hr = usm_hr
        self.epoch = 0
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self._init_cache()

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Select the crops / degradations of ``epoch`` (call before each epoch, like
        ``DistributedSampler.set_epoch``; persistent workers need a fresh iterator)."""
        self.epoch = int(epoch)

    def _fingerprint(self) -> dict[str, Any]:
        deg = getattr(self.degradation, "name", type(self.degradation).__name__) if self.degradation else None
        cfg = getattr(self.degradation, "cfg", None)
        files = [p.relative_to(self.root).as_posix() for p in self.files]
        return {
            "version": 1,
            "files_sha1": hashlib.sha1("\n".join(files).encode()).hexdigest(),
            "crop_size": self.crop_size,
            "scale": self.scale,
            "degradation": deg,
            "degradation_config": repr(cfg),
            "plus": getattr(self.degradation, "plus", None),
            "seed": self.seed,
            "texture_threshold": self.texture_threshold,
            "low_texture": self.low_texture,
            "max_tries": self.max_tries,
            "usm_hr": self.usm_hr,
        }

    def _init_cache(self) -> None:
        assert self.cache_dir is not None
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.cache_dir / "cache_meta.json"
        meta = self._fingerprint()
        if meta_path.exists():
            with open(meta_path, encoding="utf-8") as f:
                old = json.load(f)
            if old != meta:
                raise OptionError(
                    f"cache folder {self.cache_dir} was built with other settings; use another folder or empty it"
                )
        else:
            text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
            atomic_write_bytes(meta_path, lambda p: Path(p).write_text(text, encoding="utf-8"))

    def _image(self, i: int) -> np.ndarray:
        if self.cache_images and i in self._lru:
            self._lru.move_to_end(i)
            return self._lru[i]
        img = read_rgb(self.files[i])
        if self.cache_images:
            self._lru[i] = img
            while len(self._lru) > self.cache_images:
                self._lru.popitem(last=False)
        return img

    # ------------------------------------------------------------------ sampling
    def _crop(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        s = self.crop_size
        h, w = img.shape[:2]
        if h < s or w < s:
            img = np.pad(img, ((0, max(0, s - h)), (0, max(0, s - w)), (0, 0)), mode="reflect")
            h, w = img.shape[:2]
        thr = self.texture_threshold
        tries = self.max_tries if (thr > 0 and self.low_texture == "skip") else 1
        best: np.ndarray | None = None
        best_score = -1.0
        for _ in range(tries):
            y = int(rng.integers(0, h - s + 1))
            x = int(rng.integers(0, w - s + 1))
            crop = img[y : y + s, x : x + s]
            score = texture_score(crop) if thr > 0 else 1.0
            if score > best_score:
                best, best_score = crop, score
            if score >= thr:
                break
        assert best is not None
        weight = 1.0 if thr <= 0 else min(1.0, best_score / thr)
        return np.ascontiguousarray(best), weight

    def _make_pair(self, index: int, variant: int) -> dict[str, Any]:
        """Crop (and degrade) item ``index``; a pure function of (seed, variant, index)."""
        rng = np.random.default_rng([self.seed, variant, index, 0])
        img = self._image(index % len(self.files))
        crop8, weight = self._crop(img, rng)
        out: dict[str, Any] = {"hr": crop8, "weight": weight}
        if self.degradation is not None or self.usm_hr:
            hr = ops.as_float_image(crop8)
            if self.degradation is not None:
                lr, _ = self.degradation(hr, rng, int(self.scale))  # type: ignore[arg-type]
                out["lr"] = ops.to_uint8(lr)
            if self.usm_hr:
                out["hr_usm"] = ops.to_uint8(ops.usm_sharpen(hr))
        return out

    def _cached_pair(self, index: int, variant: int) -> dict[str, Any]:
        assert self.cache_dir is not None
        path = self.cache_dir / f"v{variant:03d}" / f"{index:08d}.npz"
        if path.exists():
            try:
                with np.load(path) as z:
                    out: dict[str, Any] = {k: z[k] for k in z.files if k != "weight"}
                    out["weight"] = float(z["weight"])
                return out
            except (OSError, ValueError, KeyError):
                pass  # damaged entry: rebuild it
        out = self._make_pair(index, variant)
        buf = io.BytesIO()
        np.savez(buf, **{k: v for k, v in out.items() if k != "weight"}, weight=np.float32(out["weight"]))
        atomic_write_bytes(path, lambda p: Path(p).write_bytes(buf.getvalue()))
        return out

    #: ``dataset[(epoch, index)]`` is item ``index`` of ``epoch`` whatever ``set_epoch`` said, so
    #: a loader with persistent workers (whose copies never see ``set_epoch``) can change
    #: epochs and keep the workers' decoded-image LRUs warm (tokensr.train.data.DataStream)
    accepts_epoch_index = True

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch = self.epoch
        if isinstance(index, tuple):
            epoch, index = int(index[0]), int(index[1])
        if not 0 <= index < self.length:
            raise IndexError(index)
        _single_thread_in_workers()
        if self.cache_dir is not None:
            pair = self._cached_pair(index, epoch % self.cache_variants)
        else:
            pair = self._make_pair(index, epoch)
        arrays = {k: v for k, v in pair.items() if k != "weight"}
        if self.augment:
            rng = np.random.default_rng([self.seed, epoch, index, 1])
            flip = bool(rng.integers(2))
            rot = int(rng.integers(4))
            arrays = {k: dihedral(v, flip, rot) for k, v in arrays.items()}
        item = {k: to_tensor(v) for k, v in arrays.items()}
        item["weight"] = torch.tensor(pair["weight"], dtype=torch.float32)
        return item


class PairedFolderDataset(Dataset):
    """HR/LR pairs matched by file stem, full images (no crop): for evaluation.

    Give ``root`` holding ``hr/`` and ``lr/`` (the layout written by ``tokensr degrade``), or
    ``hr_dir`` and ``lr_dir``. ``scale`` (optional) is checked against every pair; without
    it each pair must have an integer ratio, the same on both axes.

    Items: ``{"hr": 3xHxW, "lr": 3xhxw, "name": stem}``; use batch size 1 for mixed sizes.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        hr_dir: str | os.PathLike[str] | None = None,
        lr_dir: str | os.PathLike[str] | None = None,
        scale: int | None = None,
    ) -> None:
        if root is not None:
            hr_dir = Path(root) / "hr" if hr_dir is None else hr_dir
            lr_dir = Path(root) / "lr" if lr_dir is None else lr_dir
        if hr_dir is None or lr_dir is None:
            raise OptionError("give a root with hr/ and lr/ folders, or both hr_dir and lr_dir")
        hr = {p.stem: p for p in list_images(hr_dir)}
        lr = {p.stem: p for p in list_images(lr_dir)}
        only_hr = sorted(set(hr) - set(lr))
        only_lr = sorted(set(lr) - set(hr))
        if only_hr or only_lr:
            parts = []
            if only_hr:
                parts.append(f"no LR for {', '.join(only_hr[:5])}")
            if only_lr:
                parts.append(f"no HR for {', '.join(only_lr[:5])}")
            raise ImageReadError(f"HR and LR folders do not match: {'; '.join(parts)}")
        if not hr:
            raise ImageReadError(f"no images found in {hr_dir}")
        self.names = sorted(hr)
        self.hr_files = [hr[n] for n in self.names]
        self.lr_files = [lr[n] for n in self.names]
        self.scale = scale

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        hr = read_rgb(self.hr_files[index])
        lr = read_rgb(self.lr_files[index])
        (H, W), (h, w) = hr.shape[:2], lr.shape[:2]
        s = self.scale
        if s is None:
            s = H // h if h else 0
        if s < 1 or (h * s, w * s) != (H, W):
            want = f"x{self.scale}" if self.scale else "an integer scale"
            raise ImageReadError(f"{self.names[index]}: HR {W}x{H} and LR {w}x{h} are not {want} apart")
        return {"hr": to_tensor(hr), "lr": to_tensor(lr), "name": self.names[index]}
