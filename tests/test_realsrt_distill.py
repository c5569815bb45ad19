"""RealSRT's speed stage: a narrower decoder and CCM encoder distilled from a trained model
(tokensr.methods.realsrt.distill)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from tiny_models import fit, tiny_photos, tiny_tokenizer

from tokensr.errors import OptionError
from tokensr.methods.realsrt.ccm import CCM, CCMConfig
from tokensr.methods.realsrt.distill import DistillTask, copy_leading_channels, student_model
from tokensr.methods.realsrt.model import RealSRT
from tokensr.nn.vqgan import Decoder, VQGANConfig


def tiny_realsrt(seed: int = 0) -> RealSRT:
    model = RealSRT.from_preset("tiny", tiny_tokenizer(seed, (1, 2)))
    assert model.ccm is not None
    with torch.no_grad():  # a CCM that does something (its zero conv starts at zero)
        torch.manual_seed(seed + 1)
        model.ccm.zero_conv.weight.normal_(0, 0.05)
    return model.eval()


def tiny_batch(n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(n, 3, 8, 8, generator=g)
    hr = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bilinear").clamp(0, 1)
    return {"hr": hr, "lr": lr, "weight": torch.ones(n)}


def test_decoder_ch_sets_the_decoder_width_only() -> None:
    cfg = VQGANConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, mid_attention=False, code_dim=8, codebook_size=16)
    wide, narrow = Decoder(cfg), Decoder(dataclasses.replace(cfg, decoder_ch=8))
    assert wide.conv_in.out_channels == 32 and narrow.conv_in.out_channels == 16
    assert wide.conv_out.in_channels == 16 and narrow.conv_out.in_channels == 8
    z = torch.randn(1, 8, 4, 4)
    assert narrow(z).shape == wide(z).shape == (1, 3, 8, 8)


def test_copy_leading_channels_slices_every_tensor() -> None:
    cfg = VQGANConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, mid_attention=False, code_dim=8, codebook_size=16)
    teacher = Decoder(cfg)
    same = Decoder(cfg)
    copy_leading_channels(same, teacher)
    z = torch.randn(1, 8, 4, 4)
    assert torch.equal(same(z), teacher(z))  # the full width is an exact copy
    narrow = Decoder(dataclasses.replace(cfg, decoder_ch=8))
    copy_leading_channels(narrow, teacher)
    t = teacher.state_dict()
    for name, v in narrow.state_dict().items():
        assert torch.equal(v, t[name][tuple(slice(0, s) for s in v.shape)]), name
    with pytest.raises(ValueError, match="not a slice"):
        copy_leading_channels(Decoder(dataclasses.replace(cfg, decoder_ch=32)), teacher)


def test_ccm_encoder_ch_narrows_the_encoder_copy() -> None:
    tok = tiny_tokenizer(0, (1, 2))
    paper = CCM.from_tokenizer(tok)
    assert all(torch.equal(v, tok.encoder.state_dict()[k]) for k, v in paper.encoder.state_dict().items())
    narrow = CCM.from_tokenizer(tok, CCMConfig(encoder_ch=4))
    assert narrow.encoder.conv_in.out_channels == 4 and paper.encoder.conv_in.out_channels == 8
    h = torch.randn(1, tok.config.code_dim, 4, 4)
    assert narrow(h, torch.rand(1, 3, 8, 8)).shape == h.shape


def test_student_keeps_the_teachers_tokens_and_fusion() -> None:
    teacher = tiny_realsrt()
    student = student_model(teacher, 4, 4)
    assert student.config.tokenizer["decoder_ch"] == 4 and student.config.ccm["encoder_ch"] == 4
    assert teacher.config.tokenizer.get("decoder_ch") is None and teacher.config.ccm.get("encoder_ch") is None
    t = teacher.state_dict()
    for name, v in student.state_dict().items():
        # every tensor is the teacher's, the narrowed ones its leading channels
        assert torch.equal(v, t[name][tuple(slice(0, s) for s in v.shape)]), name
    assert student.ccm.encoder.conv_in.out_channels == 4 and student.tokenizer.decoder.conv_out.in_channels == 4
    lr = torch.rand(1, 3, 8, 8)
    assert torch.equal(student.condition(lr).lr, teacher.condition(lr).lr)
    # the same width and the paper's encoder: the student is the teacher
    twin = student_model(teacher, teacher.tokenizer.config.ch, None)
    ids = teacher.tokenizer.tokenize(teacher.upsample(lr)).flatten(1)
    hw = (16, 16)
    up = teacher.upsample(lr)
    assert torch.allclose(twin.decode(ids, hw, up), teacher.decode(ids, hw, up), atol=1e-6)


def test_task_trains_only_the_student_parts() -> None:
    teacher = tiny_realsrt()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    task = DistillTask({"init": teacher, "decoder_ch": 4, "ccm_encoder_ch": 4}, "cpu")
    assert set(task.modules()) == {"decoder", "ccm_encoder"} == set(task.ema_modules())
    trained = {id(p) for p in task.param_groups()["g"]}
    expected = {id(p) for m in task.modules().values() for p in m.parameters()}
    assert trained == expected
    assert not any(p.requires_grad for p in task.student.generator.parameters())
    assert not any(p.requires_grad for p in task.student.ccm.res1.parameters())
    generator = {k: v.clone() for k, v in task.student.generator.state_dict().items()}
    batch = tiny_batch()
    losses, logs = task.losses(batch, step=0)
    assert {"image_l1", "features_l1", "psnr_vs_teacher"} <= set(logs)
    task.student.train()  # as an engine might: the frozen parts go back to eval mode
    first, last = fit(task, batch, steps=15)
    assert last < first * 0.8
    assert not task.student.generator.training and not task.teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in task.student.generator.state_dict().items():
        assert torch.equal(v, generator[k]), k
    with torch.no_grad():
        metrics, images = task.evaluate(batch, 0)
    assert metrics["psnr_vs_teacher"] > 0 and images["teacher_student_hr"].shape[0] == 3


def test_decoder_only_distillation_needs_no_feature_term() -> None:
    task = DistillTask({"init": tiny_realsrt(), "decoder_ch": 4, "tokens": "generated", "steps": 2}, "cpu")
    assert set(task.modules()) == {"decoder"}
    losses, logs = task.losses(tiny_batch(), step=0)
    assert "features_l1" not in logs and losses["g"].requires_grad


def test_config_errors() -> None:
    with pytest.raises(OptionError, match="needs init"):
        DistillTask({"decoder_ch": 4}, "cpu")
    with pytest.raises(OptionError, match="nothing to distil"):
        DistillTask({"init": tiny_realsrt()}, "cpu")
    with pytest.raises(OptionError, match="ccm_encoder_ch"):
        DistillTask({"init": tiny_realsrt(), "ccm_encoder_ch": "narrow"}, "cpu")
    with pytest.raises(OptionError, match="decoder_ch"):
        DistillTask({"init": tiny_realsrt(), "decoder_ch": 0}, "cpu")
    with pytest.raises(OptionError, match="not a slice"):
        DistillTask({"init": tiny_realsrt(), "decoder_ch": 64}, "cpu")
    with pytest.raises(OptionError, match="unknown"):
        DistillTask({"init": tiny_realsrt(), "decoder_ch": 4, "width": 3}, "cpu")
    with pytest.raises(OptionError, match="init"):
        DistillTask({"init": "/nonexistent/folder", "decoder_ch": 4}, "cpu")


def test_engine_run_exports_a_working_student(tmp_path: Path) -> None:
    """The tiny config through the real engine; its export loads and upscales."""
    from tokensr.methods.realsrt.method import build
    from tokensr.train.config import load_config
    from tokensr.train.engine import train

    photos = tiny_photos(tmp_path / "photos")
    teacher = tmp_path / "teacher"
    tiny_realsrt().save_pretrained(teacher)
    configs = Path(__file__).resolve().parents[1] / "configs"
    overrides = [f"init={teacher}", f"data.root={photos}", f"run_dir={tmp_path / 'd'}", "max_steps=2"]
    train(load_config(configs / "realsrt_distill_tiny.yaml", overrides + ["val_every=2", "ckpt_every=2"]))
    student = RealSRT.from_pretrained(tmp_path / "d" / "export")
    assert student.tokenizer.config.decoder_ch == 4
    assert student.ccm is not None and student.ccm.encoder.conv_in.out_channels == 4
    out = build(weights=str(tmp_path / "d" / "export"))(torch.rand(1, 3, 11, 9))
    assert out.shape == (1, 3, 44, 36) and torch.isfinite(out).all()
    # resumable: a second run continues from the last checkpoint
    train(load_config(configs / "realsrt_distill_tiny.yaml", overrides[:-1] + ["max_steps=4"]), resume=True)
    assert (tmp_path / "d" / "checkpoints").is_dir()


def test_configs_load_and_use_known_keys() -> None:
    from tokensr.train.config import load_config
    from tokensr.train.tasks import task_class

    configs = Path(__file__).resolve().parents[1] / "configs"
    for size in ("tiny", "small"):
        cfg = load_config(configs / f"realsrt_distill_{size}.yaml")
        assert task_class(cfg.task) is DistillTask
        assert set(cfg.task_config) <= {"data", "val", *DistillTask.keys}
        assert set(cfg.engine.optim) == {"g"}
