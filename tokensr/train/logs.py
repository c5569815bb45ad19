"""Run logs: a CSV file (always), TensorBoard (when installed) and validation images.

``run_dir/log.csv`` is in long format, one row per value: ``step,time,split,key,value``
(``split`` is ``train``, ``val`` or ``sync``). New keys can appear mid-run (e.g. the GAN
terms once the discriminator starts) without rewriting a header; pivot it for plots::

    df = pandas.read_csv("log.csv"); df[df.split == "train"].pivot(index="step", columns="key", values="value")

On resume, rows of steps after the resumed checkpoint are dropped (they will be logged again).
Validation images go to ``run_dir/val/step_00001234_<name>.png``.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tokensr.pretrained import atomic_write_bytes

log = logging.getLogger(__name__)

HEADER = ["step", "time", "split", "key", "value"]


class RunLogger:
    """Writes scalars and images for rank 0 (other ranks get a logger that does nothing)."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: str | bool = "auto") -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.csv_path = run_dir / "log.csv"
        self.tb: Any = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard in (True, "auto", "true", "yes"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                if tensorboard is True:
                    log.warning("tensorboard is not installed: logging to log.csv only")

    def truncate_after(self, step: int) -> None:
        """Drop CSV rows with a step after ``step`` (used when resuming)."""
        if not self.enabled or not self.csv_path.is_file():
            return
        with open(self.csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        kept = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
        buf = io.StringIO()
        csv.writer(buf).writerows(kept)
        text = buf.getvalue()
        atomic_write_bytes(self.csv_path, lambda p: Path(p).write_text(text, encoding="utf-8"))

    def scalars(self, step: int, values: dict[str, float], split: str = "train") -> None:
        if not self.enabled or not values:
            return
        new = not self.csv_path.is_file()
        now = f"{time.time():.3f}"
        with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            if new:
                w.writerow(HEADER)
            for k, v in values.items():
                w.writerow([step, now, split, k, f"{float(v):.6g}"])
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{split}/{k}", float(v), step)

    def images(self, step: int, images: dict[str, torch.Tensor]) -> list[Path]:
        """Save ``[3, H, W]`` (or ``[1, H, W]``) tensors in [0, 1] as PNG files."""
        if not self.enabled:
            return []
        out = []
        folder = self.run_dir / "val"
        folder.mkdir(parents=True, exist_ok=True)
        for name, img in images.items():
            t = img.detach().float().cpu()
            if t.dim() == 4:
                t = t[0]
            if t.shape[0] == 1:
                t = t.expand(3, -1, -1)
            arr = (t.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "image"
            path = folder / f"step_{step:08d}_{safe}.png"
            atomic_write_bytes(path, lambda p, a=arr: Image.fromarray(a).save(p, format="PNG"))
            if self.tb is not None:
                self.tb.add_image(f"val/{safe}", t.clamp(0, 1), step)
            out.append(path)
        return out

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


__all__ = ["RunLogger"]
