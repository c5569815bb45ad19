"""RealSRT mask schedule, training masks and the confidence-based re-masking rule."""

from __future__ import annotations

import math

import pytest
import torch

from tokensr.methods.realsrt.sampling import (
    gamma,
    iterative_generate,
    lowest_confidence_mask,
    remask_count,
    remask_counts,
    training_mask,
)


def test_gamma_is_one_minus_sqrt() -> None:
    assert gamma(0.0) == 1.0 and gamma(1.0) == 0.0
    assert gamma(0.25) == pytest.approx(0.5)
    r = torch.tensor([0.0, 0.36, 1.0])
    assert torch.allclose(gamma(r), torch.tensor([1.0, 0.4, 0.0]))  # type: ignore[arg-type]


def test_reference_counts_with_floor() -> None:
    # the public reference code: floor((1 - sqrt((s+1)/T)) * 1024) -> 512, 299, 137, then 0
    assert remask_counts(4, 1024, rounding="floor") == [512, 299, 137, 0]


def test_paper_counts_with_ceil() -> None:
    # the paper / issue rule n = ceil(gamma((t+1)/T) * N); 0.5 * 1024 is exactly 512
    assert remask_counts(4, 1024, rounding="ceil") == [512, 300, 138, 0]
    for t, n in enumerate(remask_counts(7, 777)):
        assert n == math.ceil((1 - math.sqrt((t + 1) / 7)) * 777 - 1e-9)


def test_counts_decrease_and_end_at_zero() -> None:
    for steps in (1, 2, 3, 8, 16):
        counts = remask_counts(steps, 256)
        assert counts[-1] == 0
        assert all(a >= b for a, b in zip(counts, counts[1:], strict=False))
    with pytest.raises(ValueError):
        remask_count(4, 4, 100)
    with pytest.raises(ValueError):
        remask_count(0, 4, 100, rounding="round")


def test_training_mask_counts_follow_schedule() -> None:
    g = torch.Generator().manual_seed(3)
    n = 200
    mask = training_mask(64, n, generator=g)
    counts = mask.sum(1)
    assert counts.min() >= 1 and counts.max() <= n
    # reproduce the draws: r first, then the permutation
    g2 = torch.Generator().manual_seed(3)
    r = torch.rand(64, generator=g2)
    expected = torch.ceil((1 - r.sqrt()) * n - 1e-6).clamp(1, n).long()
    assert torch.equal(counts, expected)
    # positions are random: different rows with equal counts differ
    assert not torch.equal(mask[0], mask[1])
    # E[gamma(r)] = 1/3 for the square-root schedule
    big = training_mask(4000, 100, generator=torch.Generator().manual_seed(0)).float().mean().item()
    assert abs(big - 1 / 3) < 0.02


def test_lowest_confidence_mask_picks_lowest() -> None:
    conf = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.7, 0.6]])
    m = lowest_confidence_mask(conf, 2)
    assert m.tolist() == [[False, True, False, True], [True, False, False, True]]
    assert not lowest_confidence_mask(conf, 0).any()


class FakeModels:
    """A generator that always predicts (position + step) % K and a critic with fixed scores."""

    def __init__(self, k: int, n: int, critic_scores: torch.Tensor) -> None:
        self.k, self.n = k, n
        self.calls = 0
        self.inputs: list[torch.Tensor] = []
        self.critic_scores = critic_scores

    def generator(self, ids: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        self.inputs.append(ids.clone())
        b, n = ids.shape
        pos = torch.arange(n).expand(b, n)
        target = (pos + self.calls) % self.k
        self.calls += 1
        logits = torch.full((b, n, self.k), -5.0)
        logits.scatter_(2, target[..., None], 5.0)
        # the generator is more sure at even positions
        logits[:, ::2] *= 2
        return logits[masked]

    def critic(self, ids: torch.Tensor) -> torch.Tensor:
        return self.critic_scores.expand(ids.shape[0], -1)  # logit of "was masked"


def test_critic_remasking_rule() -> None:
    n, k, steps = 16, 7, 4
    scores = torch.linspace(-3, 3, n)  # the critic distrusts high positions most
    fake = FakeModels(k, n, scores)
    res = iterative_generate(fake.generator, fake.critic, batch=2, n_tokens=n, mask_id=k, device="cpu", steps=steps)
    counts = remask_counts(steps, n)
    assert fake.inputs[0].eq(k).all()  # starts from an all-masked canvas
    for t, st in enumerate(res.steps):
        assert int(st.remasked[0].sum()) == counts[t]
        # the least confident = the highest critic logits = the last positions
        assert st.remasked[0, n - counts[t] :].all() and not st.remasked[0, : n - counts[t]].any()
        assert torch.allclose(st.confidence[0], 1 - torch.sigmoid(scores))
        if t + 1 < steps:
            assert torch.equal(fake.inputs[t + 1] == k, st.remasked)
    assert not (res.tokens == k).any()
    # critic confidence re-masks kept tokens too: the last positions are regenerated every step
    assert res.tokens[0, -1].item() == (n - 1 + steps - 1) % k


def test_generator_confidence_never_remasks_kept_tokens() -> None:
    n, k, steps = 16, 7, 4
    fake = FakeModels(k, n, torch.zeros(n))
    res = iterative_generate(
        fake.generator, None, batch=1, n_tokens=n, mask_id=k, device="cpu", steps=steps, confidence="generator"
    )
    for t, st in enumerate(res.steps):
        assert not (st.remasked & ~st.was_masked).any()
        assert int(st.remasked.sum()) == remask_counts(steps, n)[t]
        # step 0: odd positions (lower probability) are re-masked first
        if t == 0:
            assert not st.remasked[0, ::2].any()
    assert not (res.tokens == k).any()
    with pytest.raises(ValueError):
        iterative_generate(fake.generator, None, 1, n, k, "cpu", steps=2, confidence="critic")


def test_argmax_is_deterministic_and_temperature_samples() -> None:
    torch.manual_seed(0)
    table = torch.randn(10, 5)

    def gen(ids: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        return table.expand(ids.shape[0], -1, -1)[masked]

    def critic(ids: torch.Tensor) -> torch.Tensor:
        return (ids.float() * 0.1).sin()

    a = iterative_generate(gen, critic, 3, 10, 5, "cpu", steps=3).tokens
    b = iterative_generate(gen, critic, 3, 10, 5, "cpu", steps=3).tokens
    assert torch.equal(a, b) and torch.equal(a[0], table.argmax(1))
    s1 = iterative_generate(
        gen, critic, 3, 10, 5, "cpu", steps=3, temperature=5.0, rng=torch.Generator().manual_seed(1)
    )
    s2 = iterative_generate(
        gen, critic, 3, 10, 5, "cpu", steps=3, temperature=5.0, rng=torch.Generator().manual_seed(1)
    )
    assert torch.equal(s1.tokens, s2.tokens)
    assert not torch.equal(s1.tokens, a)
