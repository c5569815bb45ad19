"""Exponential moving average of the trainable weights.

Only parameters that an optimizer trains are averaged; everything else in the module
(buffers, frozen parameters such as an EMA codebook, which is already an average) is used
live. ``swap()`` puts the averaged weights into the live modules for validation and export
and restores the trained weights afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightEMA:
    """``ema = decay_t * ema + (1 - decay_t) * param`` after each optimizer step, with
    ``decay_t = min(decay, (1 + t) / (10 + t))`` when ``warmup`` (``t`` = updates so far),
    so early averages are not dominated by the random initialisation."""

    def __init__(self, modules: dict[str, nn.Module], trainable: set[int], decay: float, warmup: bool = True) -> None:
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        # (module name, parameter name) -> live parameter, for parameters some optimizer trains
        self.params: dict[str, dict[str, nn.Parameter]] = {}
        for mname, module in modules.items():
            own = {k: p for k, p in module.named_parameters() if id(p) in trainable}
            if own:
                self.params[mname] = own
        self.shadow: dict[str, dict[str, torch.Tensor]] = {
            m: {k: p.detach().clone().float() for k, p in ps.items()} for m, ps in self.params.items()
        }

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for m, ps in self.params.items():
            shadow = self.shadow[m]
            for k, p in ps.items():
                shadow[k].lerp_(p.detach().float(), 1.0 - d)
        self.updates += 1

    @contextmanager
    def swap(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the live modules."""
        backup = {m: {k: p.detach().clone() for k, p in ps.items()} for m, ps in self.params.items()}
        try:
            with torch.no_grad():
                for m, ps in self.params.items():
                    for k, p in ps.items():
                        p.copy_(self.shadow[m][k].to(p.dtype))
            yield
        finally:
            with torch.no_grad():
                for m, ps in self.params.items():
                    for k, p in ps.items():
                        p.copy_(backup[m][k])

    def state_dict(self) -> dict[str, object]:
        return {"updates": self.updates, "shadow": {m: dict(s) for m, s in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.updates = int(state["updates"])  # type: ignore[call-overload]
        shadow = state["shadow"]
        assert isinstance(shadow, dict)
        for m, ps in self.shadow.items():
            saved = shadow.get(m)
            if saved is None:
                raise KeyError(f"the checkpoint has no EMA weights for module '{m}'")
            for k in ps:
                ps[k].copy_(saved[k])


__all__ = ["WeightEMA"]
