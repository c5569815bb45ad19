"""The EMA vector quantizer: assignment, straight-through gradient, EMA codebook math,
first-batch initialisation, dead-code restart, and the legacy (learned codebook) loss."""

from __future__ import annotations

import pytest
import torch

from tokensr.nn.quantizer import VectorQuantizer

CODES = [[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]
# four 2-d vectors laid out as a 1x2x2x2 feature map (row-major positions)
POINTS = [[0.1, 0.0], [0.9, 1.2], [1.1, 0.8], [-0.2, 0.1]]


def feature_map(points: list[list[float]]) -> torch.Tensor:
    return torch.tensor(points).view(1, 2, 2, 2).permute(0, 3, 1, 2).contiguous()


def primed(
    decay: float = 0.9, dead_threshold: float = 0.0, sizes: tuple[float, ...] = (2.0, 2.0, 2.0)
) -> VectorQuantizer:
    """A 3-code EMA quantizer with a known, already-initialised codebook."""
    q = VectorQuantizer(3, 2, beta=0.25, ema=True, decay=decay, dead_threshold=dead_threshold)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor(CODES))
        q.cluster_size.copy_(torch.tensor(sizes))
        q.embed_sum.copy_(torch.tensor(CODES) * torch.tensor(sizes)[:, None])
        q.initialized.fill_(True)
    return q


def test_nearest_code_assignment_and_statistics() -> None:
    q = primed().eval()
    out = q(feature_map(POINTS))
    assert out.indices.tolist() == [[[0, 1], [1, 0]]]
    assert torch.allclose(out.z_q, feature_map([CODES[0], CODES[1], CODES[1], CODES[0]]), atol=1e-6)
    assert out.usage.item() == pytest.approx(2 / 3)
    assert out.perplexity.item() == pytest.approx(2.0, rel=1e-5)  # two codes, equally used
    # commitment loss only: beta * mean squared distance to the chosen codes
    pairs = zip(POINTS, [0, 1, 1, 0], strict=True)
    expected = 0.25 * sum((a - b) ** 2 for p, c in pairs for a, b in zip(p, CODES[c], strict=True)) / 8
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_eval_mode_leaves_codebook_alone() -> None:
    q = primed().eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q(feature_map(POINTS))
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


def test_ema_update_matches_hand_computation() -> None:
    decay, eps, K = 0.9, 1e-5, 3
    q = primed(decay=decay).train()
    q(feature_map(POINTS))
    # by hand: codes 0 and 1 get two points each, code 2 none
    counts = [2.0, 2.0, 0.0]
    sums = [[0.1 - 0.2, 0.0 + 0.1], [0.9 + 1.1, 1.2 + 0.8], [0.0, 0.0]]
    size = [decay * 2.0 + (1 - decay) * c for c in counts]
    esum = [[decay * 2.0 * CODES[k][d] + (1 - decay) * sums[k][d] for d in range(2)] for k in range(K)]
    n = sum(size)
    smoothed = [(s + eps) / (n + K * eps) * n for s in size]
    codes = [[esum[k][d] / smoothed[k] for d in range(2)] for k in range(K)]
    assert torch.allclose(q.cluster_size, torch.tensor(size), atol=1e-6)
    assert torch.allclose(q.embed_sum, torch.tensor(esum), atol=1e-6)
    assert torch.allclose(q.embedding.weight, torch.tensor(codes), atol=1e-6)
    # the used codes moved towards their points' mean, the unused one only by the smoothing
    assert q.embedding.weight[1, 1] > 1.0 and abs(q.embedding.weight[2, 0].item() - 5.0) < 1e-3


def test_dead_code_is_restarted_from_an_input_vector() -> None:
    torch.manual_seed(0)
    q = primed(decay=0.9, dead_threshold=1.0, sizes=(2.0, 2.0, 1.05)).train()
    q(feature_map(POINTS))
    # code 2 was unused: 0.9 * 1.05 < 1 -> restarted from one of this batch's vectors
    new = q.embedding.weight[2]
    assert any(torch.allclose(new, torch.tensor(p)) for p in POINTS)
    assert q.cluster_size[2].item() == 1.0
    assert torch.equal(q.embed_sum[2], new)
    # live codes are not restarted
    assert q.cluster_size[0].item() == pytest.approx(0.9 * 2.0 + 0.1 * 2.0)


def test_first_training_batch_initialises_codebook_from_inputs() -> None:
    torch.manual_seed(1)
    q = VectorQuantizer(8, 2, ema=True)
    assert not bool(q.initialized)
    z = feature_map(POINTS)
    q.train()(z)
    assert bool(q.initialized)
    for row in q.embedding.weight:
        # each code is (an EMA step away from) one of the batch's vectors
        assert min((row - torch.tensor(p)).norm().item() for p in POINTS) < 0.2


def test_straight_through_gradient_is_identity() -> None:
    q = primed().eval()
    z = feature_map(POINTS).requires_grad_(True)
    out = q(z)
    g = torch.randn_like(out.z_q)
    (out.z_q * g).sum().backward()
    assert torch.equal(z.grad, g)
    assert q.embedding.weight.grad is None  # the EMA codebook is not trained by gradients


def test_legacy_codebook_loss_trains_codes() -> None:
    q = VectorQuantizer(3, 2, beta=0.25, ema=False)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor(CODES))
    z = feature_map(POINTS).requires_grad_(True)
    out = q.train()(z)
    pairs = zip(POINTS, [0, 1, 1, 0], strict=True)
    mse = sum((a - b) ** 2 for p, c in pairs for a, b in zip(p, CODES[c], strict=True)) / 8
    assert out.loss.item() == pytest.approx(1.25 * mse, rel=1e-5)
    out.loss.backward()
    assert q.embedding.weight.grad is not None
    assert q.embedding.weight.grad[:2].abs().sum() > 0 and q.embedding.weight.grad[2].abs().sum() == 0
    assert z.grad is not None and z.grad.abs().sum() > 0
