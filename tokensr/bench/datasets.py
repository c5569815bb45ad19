"""Benchmark data sets: a folder with ``hr/`` and ``lr/`` (paired, matched by file stem) or a
folder of LR images without ground truth (every image directly inside it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokensr.errors import OptionError
from tokensr.metrics.image import list_images


@dataclass(frozen=True)
class Sample:
    name: str  # file stem
    lr: Path
    hr: Path | None


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path
    samples: tuple[Sample, ...]

    @property
    def paired(self) -> bool:
        return any(s.hr is not None for s in self.samples)


def load_dataset(root: str | Path, max_images: int | None = None) -> Dataset:
    root = Path(root)
    if not root.is_dir():
        raise OptionError(f"{root}: data folder not found")
    name = root.resolve().name
    hr_dir, lr_dir = root / "hr", root / "lr"
    if hr_dir.is_dir() and lr_dir.is_dir():
        hrs = {p.stem: p for p in list_images(hr_dir)}
        lrs = list_images(lr_dir)
        samples = [Sample(p.stem, p, hrs[p.stem]) for p in lrs if p.stem in hrs]
        unmatched = [p.name for p in lrs if p.stem not in hrs]
        if unmatched:
            raise OptionError(f"{root}: no hr/ image for lr/{unmatched[0]} ({len(unmatched)} unmatched)")
    else:
        samples = [Sample(p.stem, p, None) for p in list_images(root)]
    stems = [s.name for s in samples]
    if len(set(stems)) != len(stems):
        raise OptionError(f"{root}: two images share a name (stem) -- rename one")
    if not samples:
        raise OptionError(f"{root}: no images found (expected hr/ + lr/ or image files)")
    if max_images is not None:
        samples = samples[:max_images]
    return Dataset(name, root, tuple(samples))
