"""RealSRT's mask schedule and confidence-based iterative generation (paper sec. 3.2).

Training masks ``ceil(gamma(r) * N)`` random tokens (at least one) with ``r ~ U(0, 1)`` and
the square-root schedule ``gamma(r) = 1 - sqrt(r)``.

Inference starts from a canvas where every token is the mask id. At step ``t`` of ``T`` the
generator predicts every masked token (argmax, or sampling when a temperature is given), the
confidence of every token is scored, and the ``n_t`` least confident tokens are masked again
for the next step, with ``n_t = ceil(gamma((t + 1) / T) * N)`` (the paper's and the issue's
rule; the public reference code uses ``floor``, selectable with ``rounding="floor"``). Since
``gamma(1) = 0`` nothing is masked after the last step.

Two confidence sources:
- ``"critic"`` (RealSRT): ``1 - sigmoid(critic logit)``, scored on the whole canvas, so a token
  kept earlier can be re-masked when later context makes it unlikely.
- ``"generator"`` (MaskGIT, the paper's ablation (a)): the generator's softmax probability of
  the token it chose; tokens kept from earlier steps are never re-masked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import overload

import torch

ROUNDINGS = ("ceil", "floor")
CONFIDENCES = ("critic", "generator")


@overload
def gamma(r: float) -> float: ...
@overload
def gamma(r: torch.Tensor) -> torch.Tensor: ...
def gamma(r: float | torch.Tensor) -> float | torch.Tensor:
    """Square-root mask schedule ``1 - sqrt(r)``: the share of tokens masked at time ``r``."""
    if isinstance(r, torch.Tensor):
        return 1.0 - torch.sqrt(r)
    return 1.0 - math.sqrt(r)


def _round(x: float, rounding: str) -> int:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got '{rounding}'")
    # a tiny tolerance so that e.g. 0.5 * 1024 = 512.0000000001 does not ceil to 513
    return int(math.ceil(x - 1e-9)) if rounding == "ceil" else int(math.floor(x + 1e-9))


def remask_count(step: int, steps: int, n_tokens: int, rounding: str = "ceil") -> int:
    """Tokens masked again after step ``step`` (0-based) of ``steps``: ``round(gamma((step+1)/steps) * N)``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 <= step < steps:
        raise ValueError(f"step {step} is outside 0..{steps - 1}")
    n = _round(float(gamma((step + 1) / steps)) * n_tokens, rounding)
    return max(0, min(n_tokens, n))


def remask_counts(steps: int, n_tokens: int, rounding: str = "ceil") -> list[int]:
    """:func:`remask_count` for every step (the last is always 0)."""
    return [remask_count(t, steps, n_tokens, rounding) for t in range(steps)]


def training_mask(
    batch: int, n_tokens: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random training mask ``[batch, n_tokens]`` (True = masked).

    Each row draws ``r ~ U(0, 1)`` and masks ``ceil(gamma(r) * N)`` tokens (clamped to
    ``1..N``) at uniformly random positions.
    """
    where = generator.device if generator is not None else torch.device(device)
    r = torch.rand(batch, generator=generator, device=where)
    counts = torch.ceil(gamma(r) * n_tokens - 1e-6).clamp(1, n_tokens).long()
    # rank of each position in a random permutation; the `count` lowest ranks are masked
    rank = torch.rand(batch, n_tokens, generator=generator, device=where).argsort(dim=1).argsort(dim=1)
    return (rank < counts[:, None]).to(device)


def lowest_confidence_mask(confidence: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean mask ``[B, N]`` with exactly ``n`` True per row: the ``n`` lowest confidences."""
    mask = torch.zeros_like(confidence, dtype=torch.bool)
    if n > 0:
        idx = confidence.topk(n, dim=1, largest=False).indices
        mask.scatter_(1, idx, True)
    return mask


@dataclass
class GenerationStep:
    """What one iteration produced (all ``[B, N]``)."""

    tokens: torch.Tensor  # the full canvas after prediction, before re-masking
    confidence: torch.Tensor  # confidence in [0, 1] of every token of ``tokens``
    remasked: torch.Tensor  # bool: tokens masked again for the next step
    was_masked: torch.Tensor  # bool: tokens that were masked at the start of this step


@dataclass
class GenerationResult:
    tokens: torch.Tensor  # [B, N] final tokens (no mask ids left)
    steps: list[GenerationStep]


def iterative_generate(
    generator_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    critic_logits: Callable[[torch.Tensor], torch.Tensor] | None,
    batch: int,
    n_tokens: int,
    mask_id: int,
    device: torch.device | str,
    steps: int = 4,
    confidence: str = "critic",
    rounding: str = "ceil",
    temperature: float = 0.0,
    rng: torch.Generator | None = None,
    score_last: bool = True,
) -> GenerationResult:
    """Generate ``[batch, n_tokens]`` tokens from an all-masked canvas in ``steps`` iterations.

    ``generator_logits(ids, masked)`` maps a canvas (mask id allowed) and its mask ``[B, N]``
    to the logits ``[M, K]`` of the ``M`` masked positions (row-major order);
    ``critic_logits(ids)`` maps a full canvas to "was generated" logits ``[B, N]``.
    ``temperature == 0`` is argmax (deterministic); above 0, tokens are sampled from
    ``softmax(logits / temperature)`` using ``rng``. With ``score_last=False`` the last step's
    confidence (which changes nothing) is not computed and is reported as all ones.
    """
    if confidence not in CONFIDENCES:
        raise ValueError(f"confidence must be one of {CONFIDENCES}, got '{confidence}'")
    if confidence == "critic" and critic_logits is None:
        raise ValueError("critic confidence needs a critic")
    ids = torch.full((batch, n_tokens), mask_id, dtype=torch.long, device=device)
    history: list[GenerationStep] = []
    for t in range(steps):
        masked = ids == mask_id
        logits = generator_logits(ids, masked).float()  # [M, K]
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            if rng is not None and rng.device != probs.device:
                chosen = torch.multinomial(probs.cpu(), 1, generator=rng).to(probs.device)
            else:
                chosen = torch.multinomial(probs, 1, generator=rng)
            pred = chosen.squeeze(1)
        else:
            pred = logits.argmax(dim=-1)
        tokens = ids.clone()
        tokens[masked] = pred
        n = remask_count(t, steps, n_tokens, rounding)
        last = t == steps - 1
        if last and not score_last:
            conf = torch.ones(batch, n_tokens, device=ids.device)
            select = conf
        elif confidence == "critic":
            assert critic_logits is not None
            conf = 1.0 - torch.sigmoid(critic_logits(tokens).float())
            select = conf
        else:
            p_chosen = torch.softmax(logits, dim=-1).gather(-1, pred.unsqueeze(-1)).squeeze(-1)
            conf = torch.ones(batch, n_tokens, device=ids.device)
            conf[masked] = p_chosen
            select = torch.where(masked, conf, torch.full_like(conf, math.inf))
        remask = lowest_confidence_mask(select, n)
        history.append(GenerationStep(tokens, conf, remask, masked))
        ids = torch.where(remask, torch.full_like(tokens, mask_id), tokens)
    return GenerationResult(ids, history)
