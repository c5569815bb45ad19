"""ITER's mask schedule, start-step rule and adaptive inference (paper Algorithms 1 and 2).

Time runs as in the paper: step ``t = T`` is the fully masked canvas ``S_T`` and ``t = 0`` the
clean token map ``S_0``. The schedule ``gamma(r)`` is the share of tokens that are *masked*
at time ``r = t / T``: ``gamma(0) = 0`` and ``gamma(1) = 1``. Two schedules:

- ``linear``: ``gamma(r) = r`` (inference, as the reference code);
- ``cosine``: ``gamma(r) = sin(r * pi / 2)``, MaskGIT's cosine schedule written in this time
  direction (training mask ratios, as the reference code).

So at step ``t`` the canvas keeps ``keep_count(t) = floor((1 - gamma(t / T)) * N)`` tokens.

**Start step** (Algorithm 2, lines 3-8). The evaluation network scores the initial
restoration ``S_l``; the tokens with ``p(good) >= alpha`` form ``m_s`` (Eq. 6). Starting from
``T_s = T``, while ``keep_count(T_s - 1) < sum(m_s)``, decrease ``T_s``. The loop stops at the
latest step whose next mask keeps at least as many tokens as ``S_l`` already has good ones;
since ``keep_count(0) = N`` it always stops at ``T_s >= 1``, so at least one refinement step
runs. ``T_s`` is the number of refinement steps actually run, and never decreases when
``alpha`` grows (fewer good tokens, earlier start).

The authors' released code uses a slightly different rule (``start_rule="reference"``): it
runs step ``t`` only if that step's *input* mask keeps at least ``sum(m_s)`` tokens, i.e.
``T_s`` is the largest ``t`` with ``keep_count(t) >= sum(m_s)`` (usually one step fewer than
the paper's rule), and none at all (``T_s = 0``: the output is ``S_l``) when ``S_l`` has more
good tokens than ``keep_count(1)``.

**Reverse process** (Algorithm 2, lines 9-16). ``S_{T_s} = m_s * S_l + (1 - m_s) * [MASK]``,
``m_{T_s} = m_s`` (Eq. 7). For ``t = T_s .. 1``: the refinement network predicts every token
of ``S_{t-1}`` from ``(S_t, S_l, m_t)`` (argmax, or a draw at a temperature); the evaluation
network scores ``S_{t-1}``; the mask ``m_{t-1}`` keeps ``k = keep_count(t - 1)`` tokens and
the others are masked again. As in the reference code, the kept set only grows: the tokens
kept at step ``t`` stay kept and the ``k - |m_t|`` new ones are chosen among the rest by the
evaluation score, either the top ones (``sample=False``, deterministic, the default here) or
drawn without replacement with probability proportional to the score (``sample=True``, the
reference's multinomial draw). ``keep_count(0) = N``, so ``S_0`` is the last prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

SCHEDULES = ("linear", "cosine")
START_RULES = ("paper", "reference")  # Algorithm 2 as printed / as the released code runs it

# Float slack for the floor/ceil of schedule products (e.g. (1 - 2/3) * 3 = 0.99999...).
_EPS = 1e-9


def gamma(r: float, schedule: str = "linear") -> float:
    """Share of masked tokens at time ``r = t / T`` in [0, 1] (0 -> clean, 1 -> all masked)."""
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"r must be in [0, 1], got {r}")
    if schedule == "linear":
        return float(r)
    if schedule == "cosine":
        return math.sin(r * math.pi / 2)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got '{schedule}'")


def gamma_tensor(r: torch.Tensor, schedule: str = "cosine") -> torch.Tensor:
    """:func:`gamma` on a tensor of times."""
    if schedule == "linear":
        return r
    if schedule == "cosine":
        return torch.sin(r * (math.pi / 2))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got '{schedule}'")


def keep_count(t: int, steps: int, n_tokens: int, schedule: str = "linear") -> int:
    """Tokens kept (unmasked) at step ``t`` of ``steps``: ``floor((1 - gamma(t / T)) * N)``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 <= t <= steps:
        raise ValueError(f"step {t} is outside 0..{steps}")
    n = math.floor((1.0 - gamma(t / steps, schedule)) * n_tokens + _EPS)
    return max(0, min(n_tokens, n))


def start_step_from_count(n_good: int, steps: int, n_tokens: int, schedule: str = "linear", rule: str = "paper") -> int:
    """Algorithm 2, lines 3-8, given ``sum(m_s)`` = the number of good tokens in ``S_l``
    (``rule="reference"``: the released code's rule, see the module docstring)."""
    if rule not in START_RULES:
        raise ValueError(f"start rule must be one of {START_RULES}, got '{rule}'")
    t_s = steps
    if rule == "reference":
        while t_s > 0 and keep_count(t_s, steps, n_tokens, schedule) < n_good:
            t_s -= 1
        return t_s
    while keep_count(t_s - 1, steps, n_tokens, schedule) < n_good:
        t_s -= 1
    return t_s


def start_step(good_prob: torch.Tensor, alpha: float, steps: int = 8, schedule: str = "linear") -> int:
    """Start step ``T_s`` for one token map from its evaluation scores ``p(good)`` (any shape).

    Tokens with ``p >= alpha`` count as good (Eq. 6). ``T_s`` in ``1..steps`` is also the
    number of refinement steps run; it is non-decreasing in ``alpha``.
    """
    n_good = int((good_prob >= alpha).sum().item())
    return start_step_from_count(n_good, steps, good_prob.numel(), schedule)


def start_steps(
    good_prob: torch.Tensor, alpha: float, steps: int = 8, schedule: str = "linear", rule: str = "paper"
) -> torch.Tensor:
    """:func:`start_step` per sample of a batch ``[B, ...]``; returns a long tensor ``[B]``."""
    flat = good_prob.flatten(1)
    counts = (flat >= alpha).sum(1).tolist()
    n = flat.shape[1]
    return torch.tensor([start_step_from_count(int(c), steps, n, schedule, rule) for c in counts], dtype=torch.long)


# --- training (Algorithm 1) -------------------------------------------------------------------
def training_keep_mask(
    batch: int,
    n_tokens: int,
    device: torch.device | str,
    schedule: str = "cosine",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random forward-diffusion masks ``m_t`` ``[B, N]`` (True = kept, from ``S_h``).

    Per sample ``r ~ U(0, 1]`` and ``ceil(gamma(r) * N)`` random tokens (at least one) are
    masked (Algorithm 1, lines 2-4).
    """
    u = torch.rand(batch, device=device, generator=generator)
    r = 1.0 - u  # (0, 1]
    n_mask = torch.ceil(gamma_tensor(r, schedule) * n_tokens - _EPS).long().clamp(1, n_tokens)
    noise = torch.rand(batch, n_tokens, device=device, generator=generator)
    rank = noise.argsort(dim=1).argsort(dim=1)
    return rank >= n_mask[:, None]


# --- inference (Algorithm 2) ------------------------------------------------------------------
def _gumbel(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, device=device, generator=generator).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def select_keep(
    score: torch.Tensor,
    prev_keep: torch.Tensor,
    k: int | torch.Tensor,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next keep mask ``[B, N]``: everything in ``prev_keep`` plus the best others, ``k`` in all.

    ``score`` ``[B, N]`` is the evaluation network's ``p(good)``. Deterministic: the highest
    scores win (ties broken by position). ``sample``: the extra tokens are drawn without
    replacement with probability proportional to the score (Gumbel-top-k).
    """
    b, n = score.shape
    k_t = torch.as_tensor(k, device=score.device).long().expand(b)
    if bool((prev_keep.sum(1) > k_t).any()):
        raise ValueError("the keep count must not shrink: k is smaller than the tokens already kept")
    keys = score.float()
    if sample:
        keys = torch.log(keys.clamp_min(1e-10)) + _gumbel(keys.shape, keys.device, generator)
    keys = keys.masked_fill(prev_keep, float("inf"))
    order = keys.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=score.device).expand(b, n))
    return rank < k_t[:, None]


def pick_tokens(
    logits: torch.Tensor,
    sample: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Tokens ``[B, h, w]`` from logits ``[B, K, h, w]``: argmax, or a draw at ``temperature``."""
    if not sample or temperature <= 0:
        return logits.argmax(1)
    scaled = logits.float() / temperature
    return (scaled + _gumbel(scaled.shape, scaled.device, generator)).argmax(1)


@dataclass
class RefineResult:
    """What :func:`adaptive_refine` produced for a batch."""

    tokens: torch.Tensor  # [B, h, w] S_0
    start_steps: torch.Tensor  # [B] long: T_s = refinement steps run per sample
    good_init: torch.Tensor  # [B, h, w] bool: m_s, the tokens of S_l judged good (Eq. 6)
    lq_tokens: torch.Tensor | None = None  # [B, h, w] S_l
    # with record=True: per step t (T_s..1, shared across the batch) the keep mask m_t used as
    # input and the prediction S_{t-1}; samples that had not started yet hold their m_s / S_l
    trace: list[dict[str, torch.Tensor]] = field(default_factory=list)


RefineFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
EvalFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def adaptive_refine(
    lq_tokens: torch.Tensor,
    refine_fn: RefineFn,
    eval_fn: EvalFn,
    mask_id: int,
    steps: int = 8,
    alpha: float = 0.5,
    schedule: str = "linear",
    adaptive: bool = True,
    sample: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    record: bool = False,
    start_rule: str = "paper",
) -> RefineResult:
    """Algorithm 2 on a batch of initial restorations ``S_l`` ``[B, h, w]``.

    ``refine_fn(S_t, S_l, lq_good)`` returns token logits ``[b, K, h, w]`` (``S_t`` holds
    ``mask_id`` where masked; ``lq_good`` is ``m_s``); ``eval_fn(S, S_l)`` returns ``p(good)``
    ``[b, h, w]``. Both get only the samples that are active at the current step.
    ``adaptive=False`` runs the plain reverse process: all ``steps`` from a fully masked canvas.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    b, h, w = lq_tokens.shape
    n = h * w
    good_prob = eval_fn(lq_tokens, lq_tokens)
    good_init = good_prob >= alpha
    if adaptive:
        t_start = start_steps(good_prob, alpha, steps, schedule, start_rule).to(lq_tokens.device)
        keep = good_init.flatten(1).clone()
    else:
        t_start = torch.full((b,), steps, dtype=torch.long, device=lq_tokens.device)
        keep = torch.zeros(b, n, dtype=torch.bool, device=lq_tokens.device)
    canvas = torch.where(keep, lq_tokens.flatten(1), torch.full_like(lq_tokens.flatten(1), mask_id))
    tokens = lq_tokens.flatten(1).clone()  # S_l for samples that have not started
    trace: list[dict[str, torch.Tensor]] = []
    for t in range(int(t_start.max().item()), 0, -1):
        active = (t_start >= t).nonzero().squeeze(1)
        sub_lq = lq_tokens[active]
        logits = refine_fn(canvas[active].view(-1, h, w), sub_lq, good_init[active])
        pred = pick_tokens(logits, sample, temperature, generator).flatten(1)
        k = keep_count(t - 1, steps, n, schedule)
        if k >= n:
            new_keep = torch.ones_like(keep[active])
        else:
            score = eval_fn(pred.view(-1, h, w), sub_lq).flatten(1)
            new_keep = select_keep(score, keep[active], k, sample, generator)
        if record:
            trace.append(
                {
                    "t": torch.tensor(t),
                    "active": active.clone(),
                    "keep_in": keep.view(b, h, w).clone(),
                    "pred": pred.view(-1, h, w).clone(),
                }
            )
        tokens[active] = pred
        keep[active] = new_keep
        canvas[active] = torch.where(new_keep, pred, torch.full_like(pred, mask_id))
    return RefineResult(tokens.view(b, h, w), t_start, good_init, lq_tokens, trace)


__all__ = [
    "SCHEDULES",
    "START_RULES",
    "RefineResult",
    "adaptive_refine",
    "gamma",
    "gamma_tensor",
    "keep_count",
    "pick_tokens",
    "select_keep",
    "start_step",
    "start_step_from_count",
    "start_steps",
    "training_keep_mask",
]
