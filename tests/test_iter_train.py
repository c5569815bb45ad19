"""ITER training stages (Eq. 2 and Algorithm 1) on tiny batches, the configs, and tiny runs
through the training engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_models import fit, tiny_tokenizer

from tokensr.errors import OptionError
from tokensr.methods.iter.model import ITER
from tokensr.methods.iter.train import (
    LOSS_DEFAULTS,
    ITERTask,
    LQEncoderTask,
    RefineEvalTask,
    refine_cross_entropy,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_batch(n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g)
    hr = F.interpolate(base, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    lr = F.interpolate(hr, scale_factor=0.25, mode="area")
    return {"hr": hr, "lr": lr, "weight": torch.ones(n)}


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def ids(params: Any) -> set[int]:
    return {id(p) for p in params}


@pytest.fixture(scope="module")
def lq_stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export of a briefly trained LQ-encoder stage."""
    task = LQEncoderTask({"tokenizer": tiny_tokenizer(), "preset": "tiny"}, "cpu")
    fit(task, tiny_batch(), steps=3)
    folder = tmp_path_factory.mktemp("iter") / "lq"
    task.export(str(folder))
    return folder


def test_lq_encoder_stage_trains_only_the_encoder() -> None:
    task = LQEncoderTask({"tokenizer": tiny_tokenizer(), "preset": "tiny"}, "cpu")
    model = task.model
    assert task.parts == ("lq_encoder",) and model.refine is None and model.evaluator is None
    assert set(task.param_groups()) == {"g"}
    assert ids(task.param_groups()["g"]) == ids(model.lq_encoder.parameters())
    assert not any(p.requires_grad for p in model.tokenizer.parameters())
    batch = tiny_batch()
    losses, logs = task.losses(batch, 0)
    assert torch.isfinite(losses["g"]) and {"dist_ce", "lq_acc", "loss"} <= set(logs)
    # Eq. 2: the loss is the cross-entropy of E_l's logits against the tokenizer's HR tokens
    with torch.no_grad():
        want = F.cross_entropy(model.lq_logits(batch["lr"]), model.tokenizer.tokenize(batch["hr"]))
    assert losses["g"].item() == pytest.approx(want.item(), rel=1e-5)
    tok_before = state(model.tokenizer)
    model.tokenizer.train()  # as an engine might: the task must keep it in eval mode
    first, last = fit(task, batch, steps=10)
    assert last < first * 0.9
    assert same(model.tokenizer, tok_before)  # frozen, EMA codebook included


def test_pixel_loss_reaches_the_encoder_through_the_gumbel_decode() -> None:
    task = LQEncoderTask(
        {"tokenizer": tiny_tokenizer(), "preset": "tiny", "losses": {"pixel": 1.0, "dist": 0.0}}, "cpu"
    )
    losses, logs = task.losses(tiny_batch(), 0)
    assert torch.isfinite(losses["g"]) and logs["pixel_l1"] > 0
    losses["g"].backward()
    head = task.model.lq_encoder.head.weight.grad
    assert head is not None and head.abs().sum() > 0
    assert all(p.grad is None for p in task.model.tokenizer.parameters())


def test_refine_stage_trains_phi_r_and_phi_e_with_e_l_frozen(lq_stage: Path) -> None:
    task = RefineEvalTask({"init": str(lq_stage), "preset": "tiny"}, "cpu")
    model = task.model
    assert task.parts == ("refine", "evaluator") and model.can_refine
    assert model.refine is not None and model.evaluator is not None
    trained = ids(task.param_groups()["g"])
    assert trained == ids(model.refine.parameters()) | ids(model.evaluator.parameters())
    assert not any(p.requires_grad for p in model.lq_encoder.parameters())
    batch = tiny_batch()
    losses, logs = task.losses(batch, 0)
    assert torch.isfinite(losses["g"])
    assert {"refine_ce", "eval_lq_ce", "eval_pred_ce", "mask_ratio", "refine_acc_masked"} <= set(logs)
    assert "dist_ce" not in logs and 0 < logs["mask_ratio"] <= 1
    losses["g"].backward()
    assert all(p.grad is None for p in model.lq_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.refine.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.evaluator.parameters())
    enc_before, tok_before = state(model.lq_encoder), state(model.tokenizer)
    first, last = fit(task, batch, steps=10)
    assert last < first
    assert same(model.lq_encoder, enc_before) and same(model.tokenizer, tok_before)


def test_joint_task_trains_all_three(tmp_path: Path) -> None:
    task = ITERTask({"tokenizer": tiny_tokenizer(), "preset": "tiny", "steps": 3, "alpha": 0.7}, "cpu")
    model = task.model
    assert task.parts == ("lq_encoder", "refine", "evaluator")
    assert set(task.modules()) == {"tokenizer", "lq_encoder", "refine", "evaluator"}
    assert task.ema_modules() == ["lq_encoder", "refine", "evaluator"]
    batch = tiny_batch()
    losses, logs = task.losses(batch, 0)
    assert {"dist_ce", "refine_ce", "eval_lq_ce", "eval_pred_ce"} <= set(logs)
    parts = (model.lq_encoder, model.refine, model.evaluator)
    assert ids(task.param_groups()["g"]) == set().union(*(ids(p.parameters()) for p in parts))  # type: ignore[union-attr]
    losses["g"].backward()
    for part in parts:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())  # type: ignore[union-attr]
    tok_before = state(model.tokenizer)
    first, last = fit(task, batch, steps=10)
    assert last < first and same(model.tokenizer, tok_before)
    # the inference defaults travel with the export
    task.export(str(tmp_path / "joint"))
    loaded = ITER.from_pretrained(tmp_path / "joint")
    assert loaded.can_refine and loaded.config.steps == 3 and loaded.config.alpha == 0.7


def test_refine_weighting_by_hand() -> None:
    """Eq. 4 weightings on a hand-made batch: sample 0 has nothing masked (mask ratio 0),
    sample 1 has half its tokens masked (0.5)."""
    ce = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    keep = torch.tensor([[[True, True], [True, True]], [[False, True], [False, True]]])
    assert refine_cross_entropy(ce, keep, "mean").item() == pytest.approx(36 / 8)
    # the reference: sum_b r_b sum_n ce_bn / (B N) = (0 * 10 + 0.5 * 26) / 8
    weighted = refine_cross_entropy(ce, keep, "mask_ratio")
    assert weighted.item() == pytest.approx(13 / 8)
    # the mask-ratio-0 sample contributes nothing, whatever its cross-entropy
    other = ce.clone()
    other[0] = 100.0
    assert refine_cross_entropy(other, keep, "mask_ratio").item() == pytest.approx(13 / 8)
    assert refine_cross_entropy(other, keep, "mean").item() != pytest.approx(36 / 8)
    # with sample weights (normalised by their sum) and on the masked tokens only
    w = torch.tensor([1.0, 3.0])
    assert refine_cross_entropy(ce, keep, "mask_ratio", w).item() == pytest.approx(3 * 0.5 * 26 / (4 + 12))
    masked = refine_cross_entropy(ce, keep, "mask_ratio", select=~keep)
    assert masked.item() == pytest.approx(0.5 * (5 + 7) / 2)
    with pytest.raises(ValueError):
        refine_cross_entropy(ce, keep, "sum")


def test_refine_loss_on_masked_tokens_only(lq_stage: Path) -> None:
    losses = {"refine_tokens": "masked", "refine_weighting": "mean"}
    task = RefineEvalTask({"init": str(lq_stage), "preset": "tiny", "losses": losses}, "cpu")
    m = task.model
    assert m.refine is not None and m.evaluator is not None
    batch = tiny_batch()
    torch.manual_seed(2)
    _, logs = task.losses(batch, 0)
    task.loss_weights["refine_weighting"] = "mask_ratio"
    torch.manual_seed(2)
    _, weighted_logs = task.losses(batch, 0)
    # recompute Eq. 4 by hand with the same random mask (the only draw from the global RNG)
    torch.manual_seed(2)
    from tokensr.methods.iter.sampling import training_keep_mask

    target = m.tokenizer.tokenize(batch["hr"])
    lq = m.lq_tokens(batch["lr"])
    b, h, w = target.shape
    with torch.no_grad():
        lq_good = m.evaluator(lq, lq).argmax(1).bool()
        keep = training_keep_mask(b, h * w, "cpu", "cosine").view(b, h, w)
        s_t = torch.where(keep, target, torch.full_like(target, m.mask_id))
        ce = F.cross_entropy(m.refine(s_t, lq, lq_good), target, reduction="none")
    assert logs["refine_ce"] == pytest.approx(ce[~keep].mean().item(), rel=1e-5)
    assert logs["mask_ratio"] == pytest.approx((~keep).float().mean().item())
    # the default weighting: each sample's masked tokens times its mask ratio
    ratio = (~keep).flatten(1).float().mean(1)
    want = (ce * ratio[:, None, None])[~keep].mean().item()
    assert weighted_logs["refine_ce"] == pytest.approx(want, rel=1e-5)
    assert LOSS_DEFAULTS["refine_weighting"] == "mask_ratio"


def test_validation_reports_refinement(lq_stage: Path) -> None:
    task = RefineEvalTask({"init": str(lq_stage), "preset": "tiny", "val": {"steps": 4, "alpha": 0.5}}, "cpu")
    assert task.validate(0) == ({}, {})  # no data configured
    task.val_batch = {k: v for k, v in tiny_batch().items() if k != "weight"}
    metrics, images = task.validate(0)
    assert {"psnr_lq", "psnr_tokenizer", "psnr_iter", "lq_token_acc", "iter_token_acc", "steps_run"} <= set(metrics)
    assert 1 <= metrics["steps_run"] <= 4
    (img,) = images.values()
    assert img.shape == (3, 4 * 32, 2 * 32) and 0 <= img.min() and img.max() <= 1  # LR | S_l | ITER | HR


def test_config_errors(lq_stage: Path) -> None:
    tok = tiny_tokenizer()
    with pytest.raises(OptionError, match="init"):
        RefineEvalTask({"tokenizer": tok, "preset": "tiny"}, "cpu")
    with pytest.raises(OptionError, match="tokenizer"):
        ITERTask({"preset": "tiny"}, "cpu")
    with pytest.raises(OptionError, match="preset"):
        ITERTask({"tokenizer": tok, "preset": "huge"}, "cpu")
    with pytest.raises(OptionError, match="did you mean"):
        ITERTask({"tokenizer": tok, "preset": "tiny", "losess": {}}, "cpu")
    with pytest.raises(OptionError, match="refine_tokens"):
        ITERTask({"tokenizer": tok, "preset": "tiny", "losses": {"refine_tokens": "some"}}, "cpu")
    with pytest.raises(OptionError, match="refine_weighting"):
        ITERTask({"tokenizer": tok, "preset": "tiny", "losses": {"refine_weighting": "sum"}}, "cpu")
    with pytest.raises(OptionError, match="at least one"):
        ITERTask({"tokenizer": tok, "preset": "tiny", "train": []}, "cpu")
    with pytest.raises(OptionError, match="x4"):
        RefineEvalTask({"init": str(lq_stage), "scale": 2}, "cpu")
    with pytest.raises(OptionError, match="init"):
        RefineEvalTask({"init": "/nonexistent/iter"}, "cpu")
    task = LQEncoderTask({"tokenizer": tok, "preset": "tiny"}, "cpu")
    with pytest.raises(OptionError, match="data.root"):
        task.train_dataset()
    with pytest.raises(OptionError, match="multiple"):
        task.crop_size({"crop_size": 30})


STAGES = {"iter": "ITERTask", "iter_lq_encoder": "LQEncoderTask", "iter_refine": "RefineEvalTask"}


@pytest.mark.parametrize("size", ["tiny", "small", "paper"])
def test_configs_load_and_use_known_keys(size: str) -> None:
    from tokensr.train.config import load_config
    from tokensr.train.tasks import task_class

    for name, cls_name in STAGES.items():
        cfg = load_config(CONFIGS / f"{name}_{size}.yaml")
        assert cfg.task == name and task_class(cfg.task).__name__ == cls_name
        tc = cfg.task_config
        assert set(tc) <= {"data", "val", *ITERTask.keys}, name
        assert set(tc.get("losses") or {}) <= set(LOSS_DEFAULTS), name
        assert set(cfg.engine.optim) == {"g"}
        parts = {
            "iter": ["lq_encoder", "refine", "evaluator"],
            "iter_lq_encoder": ["lq_encoder"],
            "iter_refine": ["refine", "evaluator"],
        }[name]
        assert tc["train"] == parts
        if "refine" in parts and size != "tiny":  # new runs weight Eq. 4 as the reference code
            assert tc["losses"]["refine_weighting"] == "mask_ratio"
        assert ("init" in tc) == (name == "iter_refine") and ("tokenizer" in tc) != (name == "iter_refine")
        data = tc["data"]
        assert data["degradation"] == "realesrgan"
        assert data["crop_size"] == {"tiny": 32, "small": 128, "paper": 256}[size]
        if size != "tiny":
            assert data["root"] == "../shared/data/train"
        if size == "small":
            # the staged configs record the bundled iter-small-x4 recipe (batch 8); the joint one is untried
            assert cfg.engine.batch_size == (4 if name == "iter" else 8)
            assert tc.get("tokenizer", "vqgan-small") == "vqgan-small"
        if size == "paper":
            assert cfg.engine.batch_size == 16 and cfg.engine.optim["g"]["lr"] == 1e-4
            assert cfg.engine.optim["g"]["betas"] == [0.9, 0.99]


def test_small_config_builds_with_the_bundled_tokenizer() -> None:
    from tokensr.train.config import load_config

    cfg = load_config(CONFIGS / "iter_small.yaml")
    task = ITERTask(cfg.task_config, "cpu")
    m = task.model
    assert m.factor == 4 and m.scale == 4 and m.tokenizer.config.codebook_size == 1024
    assert task.crop_size(cfg.task_config["data"]) == 128
    assert m.config.steps == 8 and m.config.alpha == 0.5


def _photos(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC).save(folder / f"p{i}.png")
    return folder


def test_tiny_configs_run_with_the_engine(tmp_path: Path) -> None:
    """Joint and staged tiny configs go through the real engine (2 steps each); the exports
    upscale an image with the ITER method."""
    from tokensr.methods.iter.method import build
    from tokensr.train.config import load_config
    from tokensr.train.engine import train

    photos = _photos(tmp_path / "photos")
    tok = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(tok)
    common = [f"data.root={photos}", "max_steps=2", "val_every=2", "ckpt_every=2"]
    joint = train(load_config(CONFIGS / "iter_tiny.yaml", common + [f"tokenizer={tok}", f"run_dir={tmp_path / 'j'}"]))
    assert {"psnr_iter", "steps_run"} <= set(joint.last_val)
    train(
        load_config(CONFIGS / "iter_lq_encoder_tiny.yaml", common + [f"tokenizer={tok}", f"run_dir={tmp_path / 'l'}"])
    )
    assert ITER.from_pretrained(tmp_path / "l" / "export").refine is None
    train(
        load_config(
            CONFIGS / "iter_refine_tiny.yaml",
            common + [f"init={tmp_path / 'l' / 'export'}", f"run_dir={tmp_path / 'r'}"],
        )
    )
    staged = ITER.from_pretrained(tmp_path / "r" / "export")
    stage1 = ITER.from_pretrained(tmp_path / "l" / "export")
    assert staged.can_refine
    for k, v in stage1.lq_encoder.state_dict().items():
        assert torch.equal(v, staged.lq_encoder.state_dict()[k]), k  # E_l stayed frozen in stage 2
    for run in ("j", "r"):
        out = build(weights=str(tmp_path / run / "export"))(torch.rand(1, 3, 9, 11))
        assert out.shape == (1, 3, 36, 44) and torch.isfinite(out).all()
