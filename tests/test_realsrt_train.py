"""RealSRT training stages, run directly on tiny batches (no engine needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import fit, tiny_photos
from tiny_models import tiny_tokenizer as _tiny_tokenizer

from tokensr.errors import OptionError
from tokensr.methods.realsrt.model import RealSRT
from tokensr.methods.realsrt.train import CCMTask, CriticTask, GeneratorTask
from tokensr.nn.vqgan import VQGAN


def tiny_tokenizer(seed: int = 0) -> VQGAN:
    return _tiny_tokenizer(seed, (1, 2))


def tiny_batch(n: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(n, 3, 8, 8, generator=g)
    hr = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bilinear").clamp(0, 1)
    hr = (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    return {"hr": hr, "lr": lr, "weight": torch.ones(n)}


@pytest.fixture(scope="module")
def generator_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    task = GeneratorTask({"tokenizer": tiny_tokenizer(), "preset": "tiny"}, "cpu")
    folder = tmp_path_factory.mktemp("gen") / "export"
    task.export(str(folder))
    return folder


def test_generator_task_loss_trains() -> None:
    task = GeneratorTask({"tokenizer": tiny_tokenizer(), "preset": "tiny"}, "cpu")
    assert set(task.param_groups()) == {"g"}
    assert all(p.requires_grad for p in task.param_groups()["g"])
    assert not any(p.requires_grad for p in task.model.tokenizer.parameters())
    batch = tiny_batch()
    losses, logs = task.losses(batch, step=0)
    assert torch.isfinite(losses["g"]) and losses["g"].requires_grad
    assert 0 < logs["mask_ratio"] <= 1 and 0 <= logs["masked_acc"] <= 1
    codebook_before = task.model.tokenizer.quantizer.codebook.clone()
    task.model.tokenizer.train()  # as an engine might: the task must keep it in eval mode
    first, last = fit(task, batch, steps=12)
    assert last < first * 0.8
    assert torch.equal(task.model.tokenizer.quantizer.codebook, codebook_before)


def test_generator_loss_only_counts_masked_tokens() -> None:
    task = GeneratorTask({"tokenizer": tiny_tokenizer(), "preset": "tiny"}, "cpu")
    batch = tiny_batch(2)
    hr, lr = batch["hr"], batch["lr"]
    target = task.model.tokenizer.tokenize(hr).flatten(1)
    cond = task.model.condition(lr)
    torch.manual_seed(11)
    loss = task.losses(batch, 0)[0]["g"]
    torch.manual_seed(11)
    _, _, mask, ids = task._masked_inputs(hr, lr)
    logits = task.model.generator(ids, cond.lr, cond.hw)
    expected = torch.nn.functional.cross_entropy(logits[mask], target[mask])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (ids[mask] == task.model.mask_id).all() and torch.equal(ids[~mask], target[~mask])


def test_generator_needs_tokenizer() -> None:
    with pytest.raises(OptionError):
        GeneratorTask({"preset": "tiny"}, "cpu")
    with pytest.raises(OptionError):
        GeneratorTask({"tokenizer": tiny_tokenizer(), "preset": "huge"}, "cpu")


def test_critic_labels_are_the_mask(generator_folder: Path) -> None:
    task = CriticTask({"init": str(generator_folder), "preset": "tiny"}, "cpu")
    batch = tiny_batch(2)
    g = torch.Generator().manual_seed(4)
    cond, target, tokens, labels = task.critic_batch(batch["hr"], batch["lr"], g)
    g = torch.Generator().manual_seed(4)
    _, _, mask, ids = task._masked_inputs(batch["hr"], batch["lr"], g)
    assert torch.equal(labels, mask.float())
    assert torch.equal(tokens[~mask], target[~mask])  # unmasked tokens are the ground truth
    gen = task.model.generator(ids, cond.lr, cond.hw).argmax(-1)
    assert torch.equal(tokens[mask], gen[mask])  # masked tokens are the generator's argmax
    assert not (tokens == task.model.mask_id).any()


def test_critic_task_trains_with_generator_frozen(generator_folder: Path) -> None:
    task = CriticTask({"init": str(generator_folder), "preset": "tiny"}, "cpu")
    gen_state = {k: v.clone() for k, v in task.model.generator.state_dict().items()}
    params = set(map(id, task.param_groups()["g"]))
    assert params == {id(p) for p in task.critic.parameters()}
    assert not any(p.requires_grad for p in task.model.generator.parameters())
    first, last = fit(task, tiny_batch(), steps=12)
    assert last < first
    for k, v in task.model.generator.state_dict().items():
        assert torch.equal(v, gen_state[k]), k
    with pytest.raises(OptionError):
        CriticTask({"preset": "tiny"}, "cpu")


def test_ccm_task_trains_only_the_ccm(generator_folder: Path, tmp_path: Path) -> None:
    critic_task = CriticTask({"init": str(generator_folder), "preset": "tiny"}, "cpu")
    critic_task.export(str(tmp_path / "critic"))
    task = CCMTask({"init": str(tmp_path / "critic"), "tokens": "gt", "losses": {"perceptual": 0, "gan": 0}}, "cpu")
    assert task.discriminator is None and task.loss.perceptual is None and task.loss.ms_ssim is None
    assert {id(p) for p in task.param_groups()["g"]} == {id(p) for p in task.ccm.parameters()}
    frozen = {k: v.clone() for k, v in task.model.state_dict().items() if not k.startswith("ccm.")}
    batch = tiny_batch()
    # before training the CCM changes nothing: the zero conv makes it the identity
    with torch.no_grad():
        cond = task.model.condition(batch["lr"])
        ids = task.model.tokenizer.tokenize(batch["hr"]).flatten(1)
        assert torch.allclose(task.model.decode(ids, cond.hw, cond.lr_up), task.model.decode(ids, cond.hw), atol=1e-6)
    first, last = fit(task, batch, steps=10, lr=1e-3)
    assert last < first
    for k, v in task.model.state_dict().items():
        if not k.startswith("ccm."):
            assert torch.equal(v, frozen[k]), k
    task.export(str(tmp_path / "ccm"))
    loaded = RealSRT.from_pretrained(tmp_path / "ccm")
    assert loaded.ccm is not None and loaded.critic is not None
    assert loaded.ccm.zero_conv.weight.abs().sum() > 0


def test_ccm_losses_see_the_unclamped_decoder_output(generator_folder: Path, tmp_path: Path) -> None:
    """As in the reference code: a pixel overshooting [0, 1] is still penalised (and gets a
    gradient), where a clamped output would hide it."""
    critic_task = CriticTask({"init": str(generator_folder), "preset": "tiny"}, "cpu")
    critic_task.export(str(tmp_path / "critic"))
    task = CCMTask({"init": str(tmp_path / "critic"), "tokens": "gt", "losses": {"perceptual": 0, "gan": 0}}, "cpu")
    batch = tiny_batch()
    with torch.no_grad():  # push the decoder's output far above 1
        task.model.tokenizer.decoder.conv_out.bias.add_(3.0)
        cond = task.model.condition(batch["lr"])
        ids = task.model.tokenizer.tokenize(batch["hr"]).flatten(1)
        raw = task.model.decode(ids, cond.hw, cond.lr_up, clamp=False)
    assert float(raw.max()) > 1.5
    _, logs = task.losses(batch, step=0)
    expected = float(((raw - batch["hr"]) ** 2).mean())
    assert logs["l2"] == pytest.approx(expected, rel=1e-4)
    assert logs["l2"] > float(((raw.clamp(0, 1) - batch["hr"]) ** 2).mean()) * 1.5


def test_ccm_usm_target_aims_the_pixel_terms_at_the_sharpened_crop(generator_folder: Path, tmp_path: Path) -> None:
    """losses.usm_target: Real-ESRGAN's recipe. The pixel terms use the batch's ``hr_usm``, the
    discriminator the plain ``hr``; the training data is asked for the sharpened crop."""
    task = CCMTask(
        {
            "init": str(generator_folder),
            "tokens": "gt",
            "losses": {"perceptual": 0, "gan": 0.8, "disc_start": 0, "usm_target": True},
            "discriminator": {"type": "patch", "ndf": 8, "n_layers": 2},
        },
        "cpu",
    )
    batch = tiny_batch(2)
    batch["hr_usm"] = (batch["hr"] * 1.3 - 0.15).clamp(0, 1)
    seen: list[torch.Tensor] = []
    features = task.discriminator.features  # type: ignore[union-attr]
    task.discriminator.features = lambda x: seen.append(x) or features(x)  # type: ignore[union-attr, method-assign]
    task.loss.feature_matching = 1.0
    with torch.no_grad():
        cond = task.model.condition(batch["lr"])
        ids = task.model.tokenizer.tokenize(batch["hr"]).flatten(1)
        raw = task.model.decode(ids, cond.hw, cond.lr_up, clamp=False)
    _, logs = task.losses(batch, step=0)
    assert logs["l2"] == pytest.approx(float(((raw - batch["hr_usm"]) ** 2).mean()), rel=1e-4)
    assert torch.allclose(seen[1], batch["hr"] * 2 - 1)  # the real images: the plain crop
    data = tmp_path / "photos"
    data.mkdir()
    from PIL import Image

    Image.fromarray((torch.rand(48, 48, 3) * 255).byte().numpy()).save(data / "a.png")
    task.cfg = {**task.cfg, "data": {"root": str(data), "texture_threshold": 0}}
    assert "hr_usm" in task.train_dataset()[0]


def test_ccm_task_gan_branch(generator_folder: Path) -> None:
    task = CCMTask(
        {
            "init": str(generator_folder),
            "tokens": "generated",
            "steps": 2,
            "losses": {"perceptual": 0, "gan": 0.8, "disc_start": 1},
            "discriminator": {"type": "patch", "ndf": 8, "n_layers": 2},
        },
        "cpu",
    )
    assert task.confidence == "generator"  # the generator-stage folder has no critic
    assert task.discriminator is not None
    assert set(task.param_groups()) == {"g", "d"} and "discriminator" in task.modules()
    batch = tiny_batch(2)
    early, _ = task.losses(batch, step=0)
    assert set(early) == {"g"}
    losses, logs = task.losses(batch, step=1)
    assert set(losses) == {"g", "d"} and all(torch.isfinite(v) for v in losses.values())
    assert logs["adaptive_weight"] >= 0
    losses["g"].backward()
    assert task.ccm.zero_conv.weight.grad is not None
    losses["d"].backward()
    assert all(p.grad is not None for p in task.discriminator.parameters())


def test_validation_returns_metrics_and_images(generator_folder: Path) -> None:
    task = GeneratorTask({"init": str(generator_folder), "preset": "tiny"}, "cpu")
    assert task.validate(0) == ({}, {})  # no data configured
    task.val_batch = tiny_batch(2)
    metrics, images = task.validate(0)
    assert {"ce", "psnr_T4", "token_acc_T4"} <= set(metrics)
    (img,) = images.values()
    assert img.shape == (3, 96, 64) and 0 <= img.min() and img.max() <= 1  # 3 rows x 2 images


def test_ccm_substitutes_ms_ssim_without_vgg(
    generator_folder: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("TOKENSR_VGG19", raising=False)
    monkeypatch.delenv("TOKENSR_METRIC_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no cached VGG either
    task = CCMTask(
        {
            "init": str(generator_folder),
            "tokens": "gt",
            "losses": {"perceptual": 0.1, "gan": 0, "substitute": {"l1": 0.5, "ms_ssim": 2.0}},
        },
        "cpu",
    )
    assert task.loss.perceptual is None and task.loss.ms_ssim is not None
    assert (
        task.loss_weights["l1"] == 0.5
        and task.loss_weights["ms_ssim"] == 2.0
        and task.loss_weights["perceptual"] == 0.0
    )
    losses, logs = task.losses(tiny_batch(2), step=0)
    assert torch.isfinite(losses["g"]) and {"l1", "l2", "ms_ssim"} <= set(logs)


def test_config_errors(generator_folder: Path) -> None:
    with pytest.raises(OptionError, match="did you mean"):
        GeneratorTask({"tokenizer": tiny_tokenizer(), "preset": "tiny", "generatr": {}}, "cpu")
    with pytest.raises(OptionError, match="hr_dept"):
        GeneratorTask({"tokenizer": tiny_tokenizer(), "preset": "tiny", "generator": {"hr_dept": 3}}, "cpu")
    with pytest.raises(OptionError, match="losses"):
        CCMTask({"init": str(generator_folder), "losses": {"lpips": 1.0}}, "cpu")
    with pytest.raises(OptionError, match="critic"):
        CCMTask({"init": str(generator_folder), "confidence": "critic"}, "cpu")
    with pytest.raises(OptionError, match="init"):
        CriticTask({"init": "/nonexistent/realsrt"}, "cpu")
    task = GeneratorTask({"init": str(generator_folder), "preset": "tiny", "data": {"root": "/nonexistent"}}, "cpu")
    with pytest.raises(OptionError, match="data folder"):
        task.train_dataset()


def test_three_stages_with_the_engine(tmp_path: Path) -> None:
    """The tiny configs run through the real training engine, stage after stage, and the
    final export upscales an image."""
    from tokensr.methods.realsrt.method import build
    from tokensr.train.config import load_config
    from tokensr.train.engine import train

    photos = tiny_photos(tmp_path / "photos")
    tok = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(tok)
    configs = Path(__file__).resolve().parents[1] / "configs"
    common = [f"data.root={photos}", "max_steps=2", "val_every=2", "ckpt_every=2"]
    train(
        load_config(configs / "realsrt_generator_tiny.yaml", common + [f"tokenizer={tok}", f"run_dir={tmp_path / 'g'}"])
    )
    train(
        load_config(
            configs / "realsrt_critic_tiny.yaml",
            common + [f"init={tmp_path / 'g' / 'export'}", f"run_dir={tmp_path / 'c'}"],
        )
    )
    train(
        load_config(
            configs / "realsrt_ccm_tiny.yaml",
            common + [f"init={tmp_path / 'c' / 'export'}", f"run_dir={tmp_path / 'm'}"],
        )
    )
    model = RealSRT.from_pretrained(tmp_path / "m" / "export")
    assert model.critic is not None and model.ccm is not None
    out = build(weights=str(tmp_path / "m" / "export"))(torch.rand(1, 3, 11, 9))
    assert out.shape == (1, 3, 44, 36) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", ["tiny", "small", "paper"])
def test_configs_load_and_use_known_keys(size: str) -> None:
    from tokensr.train.config import load_config
    from tokensr.train.tasks import task_class

    configs = Path(__file__).resolve().parents[1] / "configs"
    for stage in ("generator", "critic", "ccm"):
        cfg = load_config(configs / f"realsrt_{stage}_{size}.yaml")
        cls = task_class(cfg.task)
        assert cls.__name__ == {"generator": "GeneratorTask", "critic": "CriticTask", "ccm": "CCMTask"}[stage]
        assert set(cfg.task_config) <= {"data", "val", *cls.keys}, stage
        assert set(cfg.engine.optim) == ({"g", "d"} if stage == "ccm" else {"g"})


def test_ccm_artifact_term_keeps_a_slow_reference(generator_folder: Path) -> None:
    task = CCMTask(
        {
            "init": str(generator_folder),
            "tokens": "gt",
            "losses": {"perceptual": 0, "gan": 0, "artifacts": 1.0, "artifacts_ema": 0.5},
        },
        "cpu",
    )
    assert task.ccm_ref is not None and "ccm_ref" in task.modules()
    assert "ccm_ref" not in task.ema_modules()  # the engine's EMA only tracks what is trained
    assert not any(p.requires_grad for p in task.ccm_ref.parameters())
    with torch.no_grad():
        for p in task.ccm.parameters():
            p.add_(0.1)
    before = [p.clone() for p in task.ccm_ref.parameters()]
    losses, logs = task.losses(tiny_batch(2), step=0)
    assert "artifacts" in logs and torch.isfinite(losses["g"])
    for b, r, p in zip(before, task.ccm_ref.parameters(), task.ccm.parameters(), strict=True):
        assert torch.allclose(r, 0.5 * b + 0.5 * p)  # one EMA step with decay 0.5
    losses["g"].backward()
    assert task.ccm.zero_conv.weight.grad is not None
    plain = CCMTask({"init": str(generator_folder), "tokens": "gt", "losses": {"perceptual": 0, "gan": 0}}, "cpu")
    assert plain.ccm_ref is None and "ccm_ref" not in plain.modules()
