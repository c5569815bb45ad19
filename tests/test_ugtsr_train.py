"""UGTSR training stages on tiny batches (directly), plus one tiny run through the engine."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import tiny_tokenizer

from tokensr.errors import OptionError
from tokensr.methods.ugtsr.fusion import TopKSelect
from tokensr.methods.ugtsr.losses import candidate_targets
from tokensr.methods.ugtsr.model import UGTSR
from tokensr.methods.ugtsr.train import ESUTask, UDLTask, codebook_targets

TINY_D = {"type": "patch", "ndf": 8, "n_layers": 2}


def tiny_batch(n: int = 2, size: int = 32, scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 8, size // 8, generator=g)
    hr = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="area")
    return {"hr": hr, "lr": lr, "weight": torch.ones(n)}


def _steps(task: ESUTask | UDLTask, batch: dict[str, torch.Tensor], n: int, lr: float = 2e-3) -> list[float]:
    opt = torch.optim.Adam(list(task.param_groups()["g"]), lr=lr)
    values = []
    for step in range(n):
        losses, _ = task.losses(batch, step)
        opt.zero_grad()
        losses["g"].backward()
        opt.step()
        values.append(losses["g"].item())
    return values


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stage-I export after a few steps (its uncertainty head has learned something)."""
    torch.manual_seed(0)
    task = ESUTask(
        {"tokenizer": tiny_tokenizer(), "preset": "tiny", "losses": {"perceptual_loss": "tokenizer", "gan": 0}}, "cpu"
    )
    _steps(task, tiny_batch(), 4)
    out = tmp_path_factory.mktemp("ugtsr") / "stage1"
    task.export(str(out))
    return out


def test_esu_stage_trains_and_learns_uncertainty() -> None:
    torch.manual_seed(0)
    task = ESUTask(
        {
            "tokenizer": tiny_tokenizer(),
            "preset": "tiny",
            "losses": {"perceptual_loss": "tokenizer", "gan": 0.1},
            "discriminator": TINY_D,
        },
        "cpu",
    )
    # the paper's stage I: nearest matching, no Align-Attention, an uncertainty head
    cfg = task.model.config
    assert cfg.top_k == 1 and not cfg.align_attention and task.model.uncertainty is not None
    assert set(task.modules()) == {"ugtsr", "discriminator"}
    assert not any(p.requires_grad for p in task.model.tokenizer.parameters())
    head = [p for p in task.model.uncertainty.parameters()]  # type: ignore[union-attr]
    assert all(p.requires_grad for p in head)
    batch = tiny_batch()
    losses, logs = task.losses(batch, 0)
    assert set(losses) == {"g", "d"} and all(torch.isfinite(v) for v in losses.values())
    for k in ("esu", "l1", "perceptual", "cb_l2", "cb_gram", "g_adv", "d_hinge", "match_acc"):
        assert k in logs
    losses["d"].backward(inputs=list(task.param_groups()["d"]))
    before = [p.detach().clone() for p in head]
    values = _steps(task, batch, 8)
    assert values[-1] < values[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, head, strict=False))


def test_udl_stage_from_stage_one(stage1: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = UDLTask({"init": str(stage1), "preset": "tiny", "losses": {"perceptual_loss": "none", "gan": 0}}, "cpu")
    model, est = task.model, task.estimator
    assert model.config.top_k == 3 and model.config.align_attention and model.fusion is not None
    assert est is not None and est.tokenizer is model.tokenizer  # the frozen estimator shares the tokenizer
    assert set(task.modules()) == {"ugtsr", "estimator"}
    trained = {id(p) for p in task.param_groups()["g"]}
    assert not any(id(p) in trained for p in model.uncertainty.parameters())  # type: ignore[union-attr]
    assert not any(p.requires_grad for p in est.parameters())
    assert any(id(p) in trained for p in model.fusion.parameters())
    assert any(id(p) in trained for p in model.align.parameters())

    batch = tiny_batch()
    s = task.uncertainty_map(batch["lr"])
    with torch.no_grad():
        want = UGTSR.from_pretrained(stage1)(batch["lr"], with_uncertainty=True).uncertainty
    assert torch.allclose(s, want, atol=1e-5)  # the map comes from the stage-I model

    head_before = [p.detach().clone() for p in model.uncertainty.parameters()]  # type: ignore[union-attr]
    est_before = [p.detach().clone() for p in est.parameters()]
    values = _steps(task, batch, 8)
    assert values[-1] < values[0]
    assert all(torch.equal(a, b) for a, b in zip(head_before, model.uncertainty.parameters(), strict=False))  # type: ignore[union-attr]
    assert all(torch.equal(a, b) for a, b in zip(est_before, est.parameters(), strict=False))
    assert torch.allclose(task.uncertainty_map(batch["lr"]), s)
    _, logs = task.losses(batch, 9)
    assert "udl" in logs and "fused_cb_l2" in logs

    task.val_batch = batch
    metrics, images = task.validate(0)
    assert {"val_psnr", "val_match_top1", "val_match_top3", "val_match_final"} <= set(metrics)
    assert all(v.dim() == 3 and v.shape[0] == 3 for v in images.values())
    task.export(str(tmp_path / "s2"))
    config = json.loads((tmp_path / "s2" / "config.json").read_text())
    assert config["training"]["stage"] == "udl" and config["training"]["uncertainty_loss"] == "udl"
    assert config["top_k"] == 3


def test_udl_switches(stage1: Path) -> None:
    torch.manual_seed(0)
    batch = tiny_batch()
    base = {"preset": "tiny", "losses": {"perceptual_loss": "none", "gan": 0}}
    # the plain-L1 ablation variant: no estimator, no UDL term
    plain = UDLTask({**base, "init": str(stage1), "uncertainty": False, "model": {"top_k": 5}}, "cpu")
    assert plain.estimator is None and plain.model.config.top_k == 5
    _, logs = plain.losses(batch, 0)
    assert "udl" not in logs
    no_aa = UDLTask({**base, "init": str(stage1), "model": {"align_attention": False}}, "cpu")
    assert not no_aa.model.config.align_attention and len(no_aa.model.align) == 0
    # the cheaper source: the frozen head on the current model's own features
    own = UDLTask({**base, "init": str(stage1), "uncertainty_source": "self"}, "cpu")
    assert own.estimator is None
    losses, logs = own.losses(batch, 0)
    assert "udl" in logs and torch.isfinite(losses["g"])
    # without a stage-I model there is no uncertainty to use
    with pytest.raises(OptionError, match="stage-I"):
        UDLTask({**base, "tokenizer": tiny_tokenizer()}, "cpu")
    fresh = UDLTask({**base, "tokenizer": tiny_tokenizer(), "uncertainty": False}, "cpu")
    assert fresh.model.uncertainty is None and fresh.model.config.top_k == 3


def test_codebook_loss_on_the_fused_feature_is_optional(stage1: Path) -> None:
    """Eq. 13 puts the codebook loss on z^l only; the z' term is ``codebook_on: [.., fused]``,
    by default on for a residual fusion (as before the option) and off for a select fusion."""
    assert codebook_targets(None, "residual") == {"lq", "fused"} == codebook_targets("auto", "residual")
    assert codebook_targets(None, "select") == {"lq"}
    assert codebook_targets(["lq", "fused"], "select") == {"lq", "fused"}
    base = {"init": str(stage1), "preset": "tiny", "uncertainty": False}
    batch = tiny_batch()
    torch.manual_seed(0)
    residual = UDLTask({**base, "losses": {"perceptual_loss": "none", "gan": 0}}, "cpu")
    _, logs = residual.losses(batch, 0)
    assert {"cb_l2", "fused_cb_l2"} <= set(logs)
    torch.manual_seed(0)
    lq_only = UDLTask({**base, "losses": {"perceptual_loss": "none", "gan": 0, "codebook_on": "lq"}}, "cpu")
    losses, logs = lq_only.losses(batch, 0)
    assert "cb_l2" in logs and "fused_cb_l2" not in logs
    # without the z' term (and with z^l's term on the encoder only) the residual correction is
    # reached by the straight-through gradient of the image losses alone
    torch.manual_seed(0)
    only_cb = UDLTask({**base, "losses": {"perceptual_loss": "none", "gan": 0, "l1": 0, "codebook_on": "lq"}}, "cpu")
    g, _ = only_cb.losses(batch, 0)
    g["g"].backward()
    fusion = only_cb.model.fusion
    assert fusion is not None and all(p.grad is None or not p.grad.any() for p in fusion.parameters())
    torch.manual_seed(0)
    select = UDLTask(
        {**base, "model": {"fusion_mode": "select"}, "losses": {"perceptual_loss": "none", "gan": 0}}, "cpu"
    )
    _, logs = select.losses(batch, 0)
    assert "fused_cb_l2" not in logs and {"select_ce", "select_hit", "select_acc"} <= set(logs)
    with pytest.raises(OptionError, match="codebook_on"):
        UDLTask({**base, "losses": {"codebook_on": ["lq", "z"]}}, "cpu")


def test_select_fusion_learns_the_candidate_of_the_hr_code(stage1: Path) -> None:
    """The candidate cross-entropy alone (image and codebook losses off) trains the selection
    head: it falls over 20 steps, and it ignores pixels whose HR code is not among the k."""
    torch.manual_seed(0)
    task = UDLTask(
        {
            "init": str(stage1),
            "preset": "tiny",
            "uncertainty": False,
            "model": {"fusion_mode": "select"},
            "losses": {"perceptual_loss": "none", "gan": 0, "l1": 0, "codebook": 0},
        },
        "cpu",
    )
    assert isinstance(task.model.fusion, TopKSelect)
    batch = tiny_batch(n=2, size=64)
    _, logs = task.losses(batch, 0)
    assert 0 < logs["select_hit"] < 1  # some pixels have the HR code among the 3, some do not
    # the untrained head picks the nearest: its accuracy over the hits is top-1 / top-3
    with torch.no_grad():
        out = task.model(batch["lr"])
        target = candidate_targets(out.candidates, task.model.gt_indices(batch["hr"]))
    assert logs["select_acc"] == pytest.approx((target == 0).sum().item() / (target >= 0).sum().item())
    first, last = fit_select(task, batch, 20)
    assert last < 0.85 * first


def fit_select(task: UDLTask, batch: dict[str, torch.Tensor], steps: int) -> tuple[float, float]:
    opt = torch.optim.Adam(list(task.param_groups()["g"]), lr=3e-3)
    values = []
    for step in range(steps + 1):
        losses, logs = task.losses(batch, step)
        values.append(logs["select_ce"])
        opt.zero_grad()
        losses["g"].backward()
        opt.step()
    return values[0], values[-1]


def test_config_errors(stage1: Path) -> None:
    tok = tiny_tokenizer()
    with pytest.raises(OptionError, match="tokenizer"):
        ESUTask({"preset": "tiny"}, "cpu")
    with pytest.raises(OptionError, match="preset"):
        ESUTask({"tokenizer": tok, "preset": "huge"}, "cpu")
    with pytest.raises(OptionError, match="did you mean"):
        ESUTask({"tokenizer": tok, "preset": "tiny", "lossses": {}}, "cpu")
    with pytest.raises(OptionError, match="losses"):
        ESUTask({"tokenizer": tok, "preset": "tiny", "losses": {"udl_weight": 1}}, "cpu")
    with pytest.raises(OptionError, match="uncertainty_source"):
        UDLTask({"init": str(stage1), "preset": "tiny", "uncertainty_source": "magic"}, "cpu")
    with pytest.raises(OptionError, match="x4"):
        UDLTask({"init": str(stage1), "preset": "tiny", "scale": 2}, "cpu")
    task = ESUTask({"tokenizer": tok, "preset": "tiny", "losses": {"perceptual_loss": "none", "gan": 0}}, "cpu")
    with pytest.raises(OptionError, match="data.root"):
        task.train_dataset()


def test_engine_runs_both_stages(tmp_path: Path) -> None:
    from tokensr.train.config import load_config
    from tokensr.train.engine import train

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(
        root / "ugtsr_esu_tiny.yaml",
        [
            f"tokenizer={tmp_path / 'tok'}",
            f"data.root={photos}",
            f"run_dir={tmp_path / 'r1'}",
            "max_steps=2",
            "val_every=2",
            "ckpt_every=2",
            "losses.disc_start=1",
        ],
    )
    train(cfg)
    cfg = load_config(
        root / "ugtsr_udl_tiny.yaml",
        [
            f"init={tmp_path / 'r1' / 'export'}",
            f"data.root={photos}",
            f"run_dir={tmp_path / 'r2'}",
            "max_steps=2",
            "val_every=2",
            "ckpt_every=2",
        ],
    )
    trainer = train(cfg)
    assert "val_match_final" in trainer.last_val
    model = UGTSR.from_pretrained(tmp_path / "r2" / "export")
    assert model.config.top_k == 3 and model.config.training["uncertainty_loss"] == "udl"
    sr = model.upscale(torch.rand(1, 3, 9, 11))
    assert sr.shape == (1, 3, 36, 44) and torch.isfinite(sr).all()


def test_codebook_warmup_trains_only_the_encoder() -> None:
    torch.manual_seed(0)
    task = ESUTask(
        {
            "tokenizer": tiny_tokenizer(),
            "preset": "tiny",
            "losses": {"perceptual_loss": "none", "gan": 0.1, "codebook_warmup": 2},
            "discriminator": TINY_D,
        },
        "cpu",
    )
    batch = tiny_batch()
    losses, logs = task.losses(batch, 1)
    assert set(losses) == {"g"} and {"cb_l2", "cb_gram", "match_acc"} <= set(logs) and "l1" not in logs
    losses["g"].backward()
    model = task.model
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.uncertainty.parameters())  # type: ignore[union-attr]
    losses, logs = task.losses(batch, 2)  # warm-up over: the full stage-I loss
    assert {"g", "d"} == set(losses) and "esu" in logs and "l1" in logs


def test_x2_stage_warm_starts_from_an_x4_export(stage1: Path) -> None:
    """``warm_start`` copies the shared weights of another scale's export (x2 from x4), here
    with the stage-I uncertainty head carried over and used frozen (``uncertainty_source: self``)."""
    task = UDLTask(
        {
            "tokenizer": tiny_tokenizer(),
            "warm_start": str(stage1),
            "scale": 2,
            "preset": "tiny",
            "uncertainty_source": "self",
            "model": {"uncertainty_head": True},
            "losses": {"perceptual_loss": "none", "gan": 0},
        },
        "cpu",
    )
    source = UGTSR.from_pretrained(stage1).state_dict()
    own = task.model.state_dict()
    assert task.model.scale == 2
    for k in ("encoder.swin.0.blocks.0.norm1.weight", "uncertainty.net.2.weight"):
        assert k in own and torch.equal(own[k], source[k])
    assert own["encoder.to_swin.weight"].shape != source["encoder.to_swin.weight"].shape
    values = _steps(task, tiny_batch(scale=2), 4)
    assert all(math.isfinite(v) for v in values)
    with pytest.raises(OptionError, match="warm_start"):
        UDLTask(
            {
                "tokenizer": tiny_tokenizer(seed=1),
                "warm_start": str(stage1),
                "scale": 2,
                "preset": "tiny",
                "losses": {"perceptual_loss": "none", "gan": 0},
            },
            "cpu",
        )


def test_disc_warmup_keeps_the_gan_term_out_of_stage_two_at_first(stage1: Path) -> None:
    """With ``disc_warmup`` the generator loss equals the GAN-free loss for that many steps
    from ``disc_start`` (only the discriminator learns), then the hinge term comes in."""
    batch = tiny_batch()

    def task(losses: dict[str, Any]) -> UDLTask:
        torch.manual_seed(0)
        base = {"perceptual_loss": "none", "disc_start": 1}
        return UDLTask(
            {"init": str(stage1), "preset": "tiny", "discriminator": TINY_D, "losses": {**base, **losses}}, "cpu"
        )

    plain, warmed = task({"gan": 0}), task({"gan": 0.1, "disc_warmup": 2})
    assert warmed.loss.disc_warmup == 2 and warmed.discriminator is not None
    for a, b in zip(plain.model.parameters(), warmed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for step, warming in [(1, True), (2, True), (3, False)]:
        g_plain = plain.losses(batch, step)[0]["g"]
        losses, logs = warmed.losses(batch, step)
        assert "d" in losses and "g_adv" in logs
        if warming:
            torch.testing.assert_close(losses["g"], g_plain)
        else:
            assert not torch.allclose(losses["g"], g_plain)
