"""ITER's mask schedule, start step and adaptive inference (paper Algorithms 1-2, Eq. 6-7),
checked on hand-computed cases and with fake refinement/evaluation functions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokensr.methods.iter.sampling import (
    adaptive_refine,
    gamma,
    gamma_tensor,
    keep_count,
    pick_tokens,
    select_keep,
    start_step,
    start_step_from_count,
    start_steps,
    training_keep_mask,
)

K = 16  # codes
MASK = K  # the mask id is the codebook size
H = W = 8  # N = 64 tokens
N = H * W


# --- schedule ----------------------------------------------------------------------------------
def test_gamma_values_and_errors() -> None:
    for schedule in ("linear", "cosine"):
        assert gamma(0.0, schedule) == 0.0 and gamma(1.0, schedule) == pytest.approx(1.0)
    assert gamma(0.25) == 0.25
    assert gamma(0.5, "cosine") == pytest.approx(math.sin(math.pi / 4))
    r = torch.tensor([0.0, 0.3, 1.0])
    assert torch.allclose(gamma_tensor(r, "cosine"), torch.tensor([gamma(float(v), "cosine") for v in r]))
    assert torch.equal(gamma_tensor(r, "linear"), r)
    with pytest.raises(ValueError):
        gamma(1.5)
    with pytest.raises(ValueError):
        gamma(0.5, "square")


def test_keep_count_linear_and_cosine() -> None:
    # linear, T=8, N=64: floor((1 - t/8) * 64) = 64 - 8t
    assert [keep_count(t, 8, 64) for t in range(9)] == [64, 56, 48, 40, 32, 24, 16, 8, 0]
    # cosine: floor((1 - sin(t pi / 16)) * 64), e.g. t=1: 0.8049 * 64 = 51.5; t=4: 0.2929 * 64 = 18.7
    assert [keep_count(t, 8, 64, "cosine") for t in range(9)] == [64, 51, 39, 28, 18, 10, 4, 1, 0]
    # float slack: (1 - 2/3) * 3 is 0.999... in floating point but means exactly 1 token
    assert keep_count(2, 3, 3) == 1 and keep_count(1, 3, 3) == 2
    with pytest.raises(ValueError):
        keep_count(9, 8, 64)
    with pytest.raises(ValueError):
        keep_count(0, 0, 64)


# --- start step (Algorithm 2, lines 3-8) ---------------------------------------------------------
@pytest.mark.parametrize(
    "n_good, linear, cosine",
    [
        (0, 8, 8),  # nothing trusted: the whole reverse process
        (8, 8, 6),  # linear: keep_count(7) = 8 >= 8 -> stays at T; cosine: keep_count(6) = 4 < 8, keep_count(5) = 10
        (9, 7, 6),
        (16, 7, 5),
        (17, 6, 5),
        (20, 6, 4),  # cosine: keep_count(4) = 18 < 20 <= keep_count(3) = 28
        (56, 2, 1),
        (57, 1, 1),
        (64, 1, 1),  # everything trusted: still one refinement step
    ],
)
def test_start_step_hand_computed(n_good: int, linear: int, cosine: int) -> None:
    assert start_step_from_count(n_good, 8, 64) == linear
    assert start_step_from_count(n_good, 8, 64, "cosine") == cosine
    prob = torch.full((N,), 0.1)
    prob[torch.randperm(N, generator=torch.Generator().manual_seed(n_good))[:n_good]] = 0.9
    assert start_step(prob.view(H, W), 0.5, 8) == linear


def test_start_step_edges() -> None:
    prob = torch.rand(1, H, W, generator=torch.Generator().manual_seed(0))
    assert start_step(prob, 0.0, 8) == 1  # alpha = 0: every token is good -> T_s = 1
    assert start_step(prob, 1.01, 8) == 8  # alpha > 1: no token is good -> T_s = T
    assert start_step(prob, 0.5, 1) == 1  # T = 1: one step whatever alpha
    steps = [start_step(prob, a, 8) for a in torch.linspace(0, 1.01, 12).tolist()]
    assert steps == sorted(steps)  # non-decreasing in alpha


def test_start_steps_per_sample() -> None:
    prob = torch.rand(5, H, W, generator=torch.Generator().manual_seed(1))
    prob[0] = 1.0
    prob[1] = 0.0
    got = start_steps(prob, 0.5, 8)
    assert got.dtype == torch.long and got.shape == (5,)
    assert got.tolist() == [start_step(p, 0.5, 8) for p in prob]
    assert got[0] == 1 and got[1] == 8


# --- training masks (Algorithm 1, lines 2-4) -------------------------------------------------
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_training_keep_mask_counts(schedule: str) -> None:
    b = 32
    keep = training_keep_mask(b, N, "cpu", schedule, torch.Generator().manual_seed(3))
    assert keep.shape == (b, N) and keep.dtype == torch.bool
    u = torch.rand(b, generator=torch.Generator().manual_seed(3))  # the same draw of r = 1 - u
    want = [min(N, max(1, math.ceil(gamma(1.0 - float(x), schedule) * N - 1e-9))) for x in u]
    assert (~keep).sum(1).tolist() == want
    assert len({tuple(row.tolist()) for row in keep}) > 1  # positions differ between samples


@pytest.mark.parametrize("schedule, mean", [("cosine", 2 / math.pi), ("linear", 0.5)])
def test_training_mask_ratio_follows_the_schedule(schedule: str, mean: float) -> None:
    keep = training_keep_mask(4000, N, "cpu", schedule, torch.Generator().manual_seed(0))
    ratio = (~keep).float().mean(1)
    assert ratio.min() >= 1 / N  # at least one token masked
    # E[gamma(r)] for r ~ U(0, 1], plus at most one token of rounding up
    assert mean <= ratio.mean().item() <= mean + 1 / N + 0.02


# --- select_keep ----------------------------------------------------------------------------------
def test_select_keep_deterministic() -> None:
    score = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3]])
    prev = torch.tensor([[False, False, False, False, True]])
    keep = select_keep(score, prev, 3)
    assert keep.tolist() == [[False, True, False, True, True]]  # prev + the two best others
    assert torch.equal(select_keep(score, prev, 1), prev)  # nothing new to add
    ties = select_keep(torch.full((1, 5), 0.5), torch.zeros(1, 5, dtype=torch.bool), 2)
    assert ties.tolist() == [[True, True, False, False, False]]  # ties broken by position
    per_sample = select_keep(score.expand(2, 5), prev.expand(2, 5), torch.tensor([1, 4]))
    assert per_sample.sum(1).tolist() == [1, 4] and per_sample[1].tolist() == [False, True, True, True, True]
    with pytest.raises(ValueError, match="shrink"):
        select_keep(score, torch.ones(1, 5, dtype=torch.bool), 3)


def test_select_keep_sampled() -> None:
    b = 4000
    score = torch.tensor([0.6, 0.3, 0.1, 0.0]).expand(b, 4)
    prev = torch.zeros(b, 4, dtype=torch.bool)
    keep = select_keep(score, prev, 1, sample=True, generator=torch.Generator().manual_seed(0))
    again = select_keep(score, prev, 1, sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(keep, again)  # reproducible with a seeded generator
    assert (keep.sum(1) == 1).all()
    freq = keep.float().mean(0)
    assert torch.allclose(freq, torch.tensor([0.6, 0.3, 0.1, 0.0]), atol=0.03)  # proportional to the score
    # the kept set always survives, and the count is exact
    prev = torch.zeros(b, 4, dtype=torch.bool)
    prev[:, 3] = True
    keep = select_keep(score, prev, 2, sample=True, generator=torch.Generator().manual_seed(1))
    assert keep[:, 3].all() and (keep.sum(1) == 2).all()
    assert not torch.equal(keep, select_keep(score, prev, 2))  # differs from the deterministic choice


def test_pick_tokens() -> None:
    logits = torch.randn(2, K, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pick_tokens(logits), logits.argmax(1))
    assert torch.equal(pick_tokens(logits, sample=True, temperature=0.0), logits.argmax(1))
    two = torch.log(torch.tensor([0.25, 0.75])).view(1, 2, 1, 1).expand(1, 2, 64, 64)
    drawn = pick_tokens(two, sample=True, generator=torch.Generator().manual_seed(0))
    assert drawn.float().mean().item() == pytest.approx(0.75, abs=0.03)


# --- Algorithm 2 with fake networks ------------------------------------------------------------
class Fakes:
    """``refine_fn`` predicts a step-dependent token map; ``eval_fn`` scores ``S_l`` with
    ``lq_prob`` on its first call and returns seeded random scores afterwards."""

    def __init__(self, lq_prob: torch.Tensor, seed: int = 0) -> None:
        self.lq_prob = lq_prob
        self.gen = torch.Generator().manual_seed(seed)
        self.refine_calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.preds: list[torch.Tensor] = []
        self.eval_calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.scores: list[torch.Tensor] = []

    def refine(self, s_t: torch.Tensor, s_l: torch.Tensor, lq_good: torch.Tensor) -> torch.Tensor:
        self.refine_calls.append((s_t.clone(), s_l.clone(), lq_good.clone()))
        step = len(self.preds) + 1
        pos = torch.arange(H * W).view(1, H, W).expand(s_t.shape[0], H, W)
        pred = (pos * 3 + step) % K
        self.preds.append(pred)
        return F.one_hot(pred, K).permute(0, 3, 1, 2).float()

    def eval(self, s: torch.Tensor, s_l: torch.Tensor) -> torch.Tensor:
        self.eval_calls.append((s.clone(), s_l.clone()))
        if len(self.eval_calls) == 1:
            return self.lq_prob
        score = torch.rand(s.shape, generator=self.gen)
        self.scores.append(score)
        return score


def _lq(b: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, K, (b, H, W), generator=torch.Generator().manual_seed(seed))


def _prob_with_good(n_good: int, seed: int = 0) -> torch.Tensor:
    prob = torch.full((N,), 0.2)
    prob[torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:n_good]] = 0.8
    return prob.view(1, H, W)


def test_adaptive_refine_follows_algorithm_2() -> None:
    lq = _lq()
    prob = _prob_with_good(20)  # linear T=8: keep_count(6) = 16 < 20 <= keep_count(5) = 24 -> T_s = 6
    fakes = Fakes(prob)
    res = adaptive_refine(lq, fakes.refine, fakes.eval, mask_id=MASK, steps=8, alpha=0.5, record=True)
    good = prob >= 0.5
    assert res.start_steps.tolist() == [6]
    assert torch.equal(res.good_init, good) and torch.equal(res.lq_tokens, lq)
    assert len(fakes.refine_calls) == 6 and len(res.trace) == 6
    # phi_e first scores S_l against itself (Eq. 6)
    assert torch.equal(fakes.eval_calls[0][0], lq) and torch.equal(fakes.eval_calls[0][1], lq)
    # Eq. 7: S_{T_s} = m_s * S_l + (1 - m_s) * [MASK]; phi_r also gets S_l and m_s
    s_first = fakes.refine_calls[0][0]
    assert torch.equal(s_first, torch.where(good, lq, torch.full_like(lq, MASK)))
    assert all(torch.equal(c[1], lq) and torch.equal(c[2], good) for c in fakes.refine_calls)
    kept_sets = [c[0] != MASK for c in fakes.refine_calls]
    counts = [int(k.sum()) for k in kept_sets]
    # input of step t = T_s..1: |m_s| at T_s, then keep_count(t) (= what step t + 1 chose, keep_count((t+1) - 1))
    assert counts == [20] + [keep_count(t, 8, N) for t in range(5, 0, -1)] == [20, 24, 32, 40, 48, 56]
    for i, kept in enumerate(kept_sets):
        assert torch.equal(kept, res.trace[i]["keep_in"])
        assert kept[good].all()  # the tokens judged good in S_l stay kept from the start
        if i:
            assert kept[kept_sets[i - 1]].all()  # the kept set only grows
            # kept tokens carry the previous prediction; the others are masked again
            prev_pred = fakes.preds[i - 1]
            assert torch.equal(fakes.refine_calls[i][0][kept], prev_pred[kept])
            # the new kept tokens are the best-scored among the previously masked ones
            score = fakes.scores[i - 1]
            new = kept & ~kept_sets[i - 1]
            rest = ~kept
            assert score[new].min() >= score[rest].max()
    # no evaluation after the last step (everything is kept then); S_0 is the last prediction
    assert len(fakes.eval_calls) == 1 + 5
    assert torch.equal(res.tokens, fakes.preds[-1])


def test_plain_reverse_process_runs_all_steps() -> None:
    lq = _lq()
    fakes = Fakes(_prob_with_good(60))  # would start at T_s = 1 if adaptive
    res = adaptive_refine(lq, fakes.refine, fakes.eval, mask_id=MASK, steps=8, alpha=0.5, adaptive=False)
    assert res.start_steps.tolist() == [8]
    assert len(fakes.refine_calls) == 8
    assert (fakes.refine_calls[0][0] == MASK).all()  # starts from S_T, fully masked
    counts = [int((c[0] != MASK).sum()) for c in fakes.refine_calls]
    assert counts == [keep_count(t, 8, N) for t in range(8, 0, -1)] == [0, 8, 16, 24, 32, 40, 48, 56]
    assert torch.equal(res.tokens, fakes.preds[-1])


def test_batch_samples_start_at_their_own_step() -> None:
    lq = _lq(3, seed=1)
    prob = torch.cat([torch.full((1, H, W), 0.9), torch.full((1, H, W), 0.1), _prob_with_good(20)])
    fakes = Fakes(prob)
    res = adaptive_refine(lq, fakes.refine, fakes.eval, mask_id=MASK, steps=8, alpha=0.5)
    assert res.start_steps.tolist() == [1, 8, 6]
    sizes = [c[0].shape[0] for c in fakes.refine_calls]
    assert sizes == [1, 1, 2, 2, 2, 2, 2, 3]  # t=8,7: sample 1; t=6..2: samples 1, 2; t=1: all
    # sample 0 (everything good) runs once, on S_l itself, at the last step
    last_canvas = fakes.refine_calls[-1][0]
    assert torch.equal(last_canvas[0], lq[0])
    # sample 2 joins at t=6 with its own S_l-initialised canvas
    joined = fakes.refine_calls[2][0][1]
    good2 = prob[2] >= 0.5
    assert torch.equal(joined, torch.where(good2, lq[2], torch.full_like(lq[2], MASK)))
    assert torch.equal(res.tokens, fakes.preds[-1])  # every sample ends with the last prediction


def test_adaptive_refine_rejects_zero_steps() -> None:
    fakes = Fakes(_prob_with_good(5))
    with pytest.raises(ValueError):
        adaptive_refine(_lq(), fakes.refine, fakes.eval, mask_id=MASK, steps=0)
