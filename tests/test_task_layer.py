"""The shared training-task layer: config reading, the val section, the image loss, and every
config in configs/ building its task."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokensr.errors import OptionError
from tokensr.nn import losses as L
from tokensr.nn.discriminator import build_discriminator
from tokensr.train.batches import VAL_SEED_OFFSET, ValSettings, image_rows, validation_batch
from tokensr.train.config import ConfigError
from tokensr.train.options import ConfigDeprecationWarning, check_keys, loss_weights, rename_deprecated

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# --- options --------------------------------------------------------------------------------------
def test_unknown_key_names_the_nearest_one() -> None:
    check_keys(["l1", "gan"], ["l1", "gan", "perceptual"], "losses")
    with pytest.raises(ConfigError, match=r"unknown losses key 'perceptal' \(did you mean 'perceptual'\?\)"):
        check_keys(["perceptal"], ["l1", "perceptual"], "losses")
    with pytest.raises(ConfigError, match="known: l1, perceptual"):
        check_keys(["zzz"], ["l1", "perceptual"], "losses")


def test_loss_weights_are_typed_like_their_defaults() -> None:
    defaults = {"l1": 1.0, "disc_start": 100, "adaptive": True, "vgg": None, "mode": "auto"}
    got = loss_weights({"l1": 2, "disc_start": 1e3, "vgg": "x.pth"}, defaults)
    assert got == {"l1": 2.0, "disc_start": 1000, "adaptive": True, "vgg": "x.pth", "mode": "auto"}
    assert isinstance(got["l1"], float) and isinstance(got["disc_start"], int)
    with pytest.raises(ConfigError, match="losses.adaptive must be true or false"):
        loss_weights({"adaptive": 2}, defaults)
    with pytest.raises(ConfigError, match="losses.l1 must be a number"):
        loss_weights({"l1": "big"}, defaults)
    with pytest.raises(ConfigError, match="whole number"):
        loss_weights({"disc_start": 2.5}, defaults)


def test_old_spellings_move_to_the_new_ones_with_a_warning() -> None:
    renames = {"init_from": "init", "val_count": "val.count"}
    with pytest.warns(ConfigDeprecationWarning, match="is deprecated, write") as caught:
        cfg = rename_deprecated({"init_from": "a", "val_count": 3, "val": {"images": 2}}, renames, "t")
    assert "t: 'init_from' is deprecated, write 'init'" in [str(w.message) for w in caught]
    assert cfg == {"init": "a", "val": {"images": 2, "count": 3}}
    with pytest.raises(ConfigError, match="both init_from and init"):
        rename_deprecated({"init_from": "a", "init": "b"}, renames, "t")
    with warnings.catch_warnings():  # a null old key beside the new one (a config file's placeholder)
        warnings.simplefilter("ignore", ConfigDeprecationWarning)
        assert rename_deprecated({"init_from": None, "init": "b"}, renames, "t") == {"init": "b"}


def test_val_section_is_checked_and_old_val_data_still_read() -> None:
    val = ValSettings.parse({"count": 3, "steps": 4}, extra_keys=("steps",), count=16, images=2)
    assert (val.count, val.images, val.extra) == (3, 2, {"steps": 4})
    with pytest.raises(ConfigError, match="did you mean 'count'"):
        ValSettings.parse({"cout": 3})
    old = ValSettings.parse({"data": {"root": "photos", "crop_size": 64}})
    assert old.data_section({"root": "train", "seed": 1}) == {"root": "photos", "crop_size": 64, "seed": 1}


def _photos(folder: Path, n: int = 3, size: int = 96) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        y, x = np.mgrid[0:size, 0:size]
        img = 127 + 60 * np.sin(x / (3 + i) + y / 5)[..., None] + rng.normal(0, 25, (size, size, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def test_validation_batch_is_fixed_and_offset_from_training(tmp_path: Path) -> None:
    from tokensr.train.batches import crop_dataset

    root = _photos(tmp_path / "photos")
    data = {"root": str(root), "texture_threshold": 0, "cache_images": 0, "seed": 5}

    def dataset(section: dict, **over: object):  # type: ignore[no-untyped-def]
        return crop_dataset(section, 32, 4, task="test", degradation="realesrgan", **over)

    val = ValSettings.parse({"count": 2})
    a = validation_batch(data, val, dataset)
    b = validation_batch(data, val, dataset)
    assert a is not None and b is not None and a["hr"].shape == (2, 3, 32, 32) and a["lr"].shape == (2, 3, 8, 8)
    assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"])
    want = dataset({**data, "seed": 5 + VAL_SEED_OFFSET}, length=2, augment=False)[0]["hr"]
    assert torch.equal(a["hr"][0], want)
    assert validation_batch({}, val, dataset) is None
    with pytest.raises(OptionError, match="data folder not found"):
        dataset({"root": str(tmp_path / "missing")})
    with pytest.raises(OptionError, match="bad data option"):
        dataset({"root": str(root), "textur_threshold": 0})
    assert image_rows([a["hr"], a["hr"]], 2).shape == (3, 64, 64)


# --- the image loss -----------------------------------------------------------------------------------
def test_image_loss_reconstruction_is_the_weighted_sum_of_its_terms() -> None:
    g = torch.Generator().manual_seed(0)
    out, target = torch.rand(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g)
    weight = torch.tensor([1.0, 2.0, 0.0])
    loss = L.ImageLoss({"l1": 0.5, "l2": 2.0, "ms_ssim": 1.0}, input_range=(0.0, 1.0))
    nll, logs = loss.reconstruction(out, target, weight)
    per = 0.5 * L.l1_loss(out, target) + 2.0 * L.l2_loss(out, target) + L.MSSSIMLoss((0.0, 1.0))(out, target)
    assert nll.item() == pytest.approx(L.weighted_mean(per, weight).item(), rel=1e-6)
    assert set(logs) == {"l1", "l2", "ms_ssim"}
    result = loss(out, target, step=10**6)  # no discriminator: the GAN stays off
    assert result.d is None and torch.equal(result.g, result.nll)


GanCase = tuple[torch.nn.Conv2d, torch.nn.Module, L.ImageLoss, torch.Tensor, torch.Tensor]


def _gan_case(weights: dict[str, float]) -> GanCase:
    """A one-conv "generator", a small PatchGAN, the ImageLoss of ``weights`` with it, and a
    generated batch with its target, all in [-1, 1]."""
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(3, 3, 3, padding=1)
    disc = build_discriminator({"type": "patch", "ndf": 4, "n_layers": 2})
    loss = L.ImageLoss(weights, discriminator=disc)
    x, target = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    return layer, disc, loss, layer(x), target


def test_image_loss_gan_starts_at_disc_start_and_balances_adaptively() -> None:
    layer, disc, loss, out, target = _gan_case({"l1": 1.0, "gan": 0.5, "disc_start": 3, "feature_matching": 1.0})
    assert loss(out, target, step=2, last_layer=layer.weight).d is None
    result = loss(out, target, step=3, last_layer=layer.weight)
    assert result.d is not None and {"g_adv", "adaptive_weight", "feature_matching", "d_hinge"} <= set(result.logs)
    expected = result.nll + 0.5 * result.logs["adaptive_weight"] * result.logs["g_adv"]
    assert result.g.item() == pytest.approx(expected.item(), rel=1e-5)
    # the discriminator's loss reaches the discriminator only, not the generator
    grads = torch.autograd.grad(result.d, [layer.weight, *disc.parameters()], allow_unused=True)
    assert grads[0] is None and all(gr is not None for gr in grads[1:])
    with pytest.raises(ValueError, match="last_layer"):
        loss(out, target, step=3)
    fixed = L.ImageLoss({"gan": 0.5, "adaptive": False}, discriminator=disc)(out, target, step=0)
    assert fixed.g.item() == pytest.approx(0.5 * fixed.logs["g_adv"], rel=1e-5)


def test_image_loss_disc_warmup_trains_only_the_discriminator_first() -> None:
    layer, _, loss, out, target = _gan_case({"l1": 1.0, "gan": 0.5, "disc_start": 2, "disc_warmup": 3})
    assert loss(out, target, step=1, last_layer=layer.weight).d is None  # before disc_start: nothing
    for step in (2, 4):  # warming up: the discriminator learns, the generator sees its pixels only
        warm = loss(out, target, step=step, last_layer=layer.weight)
        assert warm.d is not None and torch.equal(warm.g, warm.nll)
        assert "adaptive_weight" not in warm.logs  # not computed for a term that is not added
    after = loss(out, target, step=5, last_layer=layer.weight)
    assert not torch.equal(after.g, after.nll)
    expected = after.nll + 0.5 * after.logs["adaptive_weight"] * after.logs["g_adv"]
    assert after.g.item() == pytest.approx(expected.item(), rel=1e-5)


def test_discriminator_init_warm_starts_from_a_checkpoint_or_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from tokensr.train.base import load_discriminator

    settings = {"type": "patch", "ndf": 4, "n_layers": 2}
    trained = build_discriminator(settings)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    torch.save({"step": 7, "modules": {"discriminator": state}}, tmp_path / "step.pt")
    save_file(state, str(tmp_path / "disc.safetensors"))
    for file in ("step.pt", "disc.safetensors"):
        fresh = build_discriminator(settings)
        load_discriminator(fresh, str(tmp_path / file))
        for k, v in fresh.state_dict().items():
            assert torch.equal(v, state[k]), (file, k)
    torch.save({"modules": {"vqgan": {}}}, tmp_path / "no_disc.pt")
    with pytest.raises(OptionError, match="not a training checkpoint with a discriminator"):
        load_discriminator(build_discriminator(settings), str(tmp_path / "no_disc.pt"))
    with pytest.raises(OptionError, match="does not fit"):
        load_discriminator(build_discriminator({"type": "patch", "ndf": 8, "n_layers": 2}), str(tmp_path / "step.pt"))
    with pytest.raises(OptionError, match="no such file"):
        load_discriminator(build_discriminator(settings), str(tmp_path / "missing.pt"))


def test_image_loss_maps_images_to_minus_one_one_for_its_networks() -> None:
    seen: list[torch.Tensor] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return (x - y).abs().flatten(1).mean(1)

    x = torch.full((1, 3, 8, 8), 0.25)
    L.ImageLoss({"perceptual": 1.0}, input_range=(0.0, 1.0), perceptual=Probe()).reconstruction(x, x)
    assert torch.allclose(seen[0], torch.full_like(x, -0.5))


def test_build_perceptual_uses_the_substitute_without_vgg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TOKENSR_VGG19", raising=False)
    monkeypatch.delenv("TOKENSR_METRIC_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    sub = torch.nn.Identity()
    assert L.build_perceptual("auto", substitute=sub) is sub
    assert L.build_perceptual("auto") is None
    assert isinstance(L.build_perceptual("ms_ssim"), L.MSSSIMLoss)
    with pytest.raises(OptionError, match="VGG19"):
        L.build_perceptual("vgg")


# --- every config builds its task ------------------------------------------------------------------
# configs whose `init` is an earlier stage's export: the tiny stage that stands in for it
EARLIER_STAGE = {
    "realsrt_critic": "realsrt_generator_tiny.yaml",
    "realsrt_ccm": "realsrt_critic_tiny.yaml",
    "realsrt_distill": "realsrt_ccm_tiny.yaml",
    "iter_refine": "iter_lq_encoder_tiny.yaml",
    "ugtsr_udl": "ugtsr_esu_tiny.yaml",
}


class StageExports:
    """Exports of tiny first stages (built, not trained), made on first use, for the configs
    that continue an earlier stage, and a tiny tokenizer for those that name a tokenizer of
    their own run (``runs/...``) or none."""

    def __init__(self, base: Path) -> None:
        from tiny_models import tiny_tokenizer

        self.base = base
        self.tokenizer = base / "tok"
        tiny_tokenizer().save_pretrained(self.tokenizer)
        self.made: dict[tuple[str, int], Path] = {}

    def export(self, config: str, overrides: list[str], key: tuple[str, int]) -> Path:
        from tokensr.train.config import load_config
        from tokensr.train.tasks import build_task

        if key not in self.made:
            cfg = load_config(CONFIGS / config, overrides)
            folder = self.base / f"{key[0]}_x{key[1]}"
            build_task(cfg.task, cfg.task_config, torch.device("cpu")).export(str(folder))
            self.made[key] = folder
        return self.made[key]

    def init_for(self, task: str, scale: int) -> Path:
        """The stand-in ``init`` of a continuing stage at ``scale``."""
        tok, sc = f"tokenizer={self.tokenizer}", f"scale={scale}"
        if task == "realsrt_critic":
            return self.export(EARLIER_STAGE[task], [tok, sc], (task, scale))
        if task in ("realsrt_ccm", "realsrt_distill"):
            earlier = self.init_for({"realsrt_ccm": "realsrt_critic", "realsrt_distill": "realsrt_ccm"}[task], scale)
            return self.export(EARLIER_STAGE[task], [f"init={earlier}"], (task, scale))
        return self.export(EARLIER_STAGE[task], [tok, sc], (task, scale))


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> StageExports:
    return StageExports(tmp_path_factory.mktemp("stages"))


def _config_names() -> list[str]:
    return sorted(p.name for p in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("name", _config_names())
def test_every_config_builds_its_task(
    name: str, stages: StageExports, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each config's task_config is read without an unknown key or a deprecation warning, its
    task is built (on a stand-in earlier stage where it continues one) and serves crops."""
    from tokensr.train.config import load_config
    from tokensr.train.tasks import build_task, task_class

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # no VGG19: the substitutes
    monkeypatch.delenv("TOKENSR_VGG19", raising=False)
    monkeypatch.delenv("TOKENSR_METRIC_WEIGHTS", raising=False)
    cfg = load_config(CONFIGS / name)
    cls = task_class(cfg.task)
    assert set(cfg.task_config) <= {"data", "val", *cls.keys}, name
    photos = _photos(tmp_path / "photos", n=2, size=272)
    overrides = [f"data.root={photos}", "data.length=2", "data.cache_images=0", "data.cache_dir=null"]
    tc = cfg.task_config
    if cfg.task in EARLIER_STAGE and "init" in tc:
        overrides.append(f"init={stages.init_for(cfg.task, int(tc.get('scale', 4)))}")
        if cfg.task == "realsrt_distill":  # narrower than the stand-in teacher (8 channels)
            overrides += ["decoder_ch=4", "ccm_encoder_ch=4"]
    elif "tokenizer" in tc and (tc["tokenizer"] is None or str(tc["tokenizer"]).startswith("runs/")):
        overrides.append(f"tokenizer={stages.tokenizer}")
    if (tc.get("discriminator") or {}).get("init"):  # a run's checkpoint (runs/ is not in a clone)
        overrides.append("discriminator.init=null")
    if (tc.get("losses") or {}).get("perceptual_loss") == "vgg":  # the paper configs need the VGG19 file
        overrides.append("losses.perceptual_loss=auto")
    cfg = load_config(CONFIGS / name, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)
        task = build_task(cfg.task, cfg.task_config, torch.device("cpu"))
    ds = task.train_dataset()
    assert len(ds) == 2 and set(task.param_groups()) <= {"g", "d"}
