"""The family-independent part of `tokensr convert`: reading checkpoints without pickle code,
finding the state dict in common wrappers, strict loading with a one-line report, recognising
the family, and writing a weights folder with a model card. The families themselves are
tested in tests/test_convert_<family>.py against the authors' own outputs."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import tiny_tokenizer
from torch import nn

import tokensr.convert as conv
from tokensr.cli import main
from tokensr.convert.base import ConversionError, Family, StateDict, find_state_dict, load_strict, read_checkpoint
from tokensr.nn.vqgan import VQGAN


def _authors_layout(model: nn.Module) -> StateDict:
    """The tiny VQGAN's weights under made-up 'author' names: ``net.`` prefix."""
    return {f"net.{k}": v.clone() for k, v in model.state_dict().items()}


def _fake_family(reference: VQGAN) -> Family:
    def matches(state: Mapping[str, torch.Tensor]) -> bool:
        return any(k.startswith("net.") for k in state)

    def convert(states: Sequence[StateDict]) -> nn.Module:
        model = VQGAN(reference.config)
        load_strict(model, {k[len("net.") :]: v for k, v in states[0].items()}, "the fake checkpoint")
        return model

    return Family("fake", "A fake family (tests)", "https://example.org/fake", "MIT", matches, convert)


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> VQGAN:
    ref = tiny_tokenizer(seed=3)
    fam = _fake_family(ref)
    monkeypatch.setattr(conv, "families", lambda: [fam])
    return ref


def test_state_dict_is_found_inside_common_wrappers_and_module_prefix_dropped(tmp_path: Path) -> None:
    w = {"a.weight": torch.ones(2, 2), "b": torch.zeros(3)}
    assert find_state_dict(w) is not w and set(find_state_dict(w)) == {"a.weight", "b"}
    assert set(find_state_dict({"params_ema": w, "params": {"x": torch.ones(1)}})) == {"a.weight", "b"}
    assert set(find_state_dict({"state_dict": w, "epoch": 3, "global_step": 10})) == {"a.weight", "b"}
    torch.save({"params": {f"module.{k}": v for k, v in w.items()}, "iter": 5}, tmp_path / "ddp.pth")
    assert set(read_checkpoint(tmp_path / "ddp.pth")) == {"a.weight", "b"}
    save_file(w, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_checkpoint(tmp_path / "w.safetensors")["a.weight"], w["a.weight"])
    with pytest.raises(ConversionError, match="no state dict found: the file holds a dict of 2 entries"):
        find_state_dict({"epoch": 3, "optimizer": {"lr": 0.1}})


def test_files_that_are_not_checkpoints_are_refused_in_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint\n")
    with pytest.raises(ConversionError, match="is not a PyTorch checkpoint or safetensors file"):
        read_checkpoint(text)
    (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ConversionError, match="is not a PyTorch checkpoint or safetensors file"):
        read_checkpoint(tmp_path / "random.pth")
    torch.save({"args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    with pytest.raises(ConversionError, match=r"Python objects \(argparse.Namespace\).*weights-only"):
        read_checkpoint(tmp_path / "pickled.pth")
    with pytest.raises(ConversionError, match="no such file"):
        read_checkpoint(tmp_path / "missing.pth")


def test_strict_load_names_missing_unexpected_and_misshaped_keys() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.pop("1.bias")
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(4, 3, 5, 5)
    with pytest.raises(ConversionError) as err:
        load_strict(model, state, "the test file")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("the test file does not map")
    assert "1 missing keys (1.bias)" in msg and "1 unexpected keys (extra.weight)" in msg
    assert "0.weight (4, 3, 5, 5) vs (4, 3, 3, 3)" in msg


def test_convert_writes_a_folder_that_loads_the_same_weights(fake: VQGAN, tmp_path: Path) -> None:
    torch.save({"params_ema": _authors_layout(fake)}, tmp_path / "release.pth")
    out = tmp_path / "converted"
    assert main(["convert", str(tmp_path / "release.pth"), "-o", str(out)]) == 0
    loaded = VQGAN.from_pretrained(out)
    for k, v in fake.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    card = (out / "README.md").read_text()
    assert "A fake family (tests)" in card and "**MIT**" in card and "release.pth" in card
    # never overwrite a model: a second conversion into the same folder is refused, files intact
    before = (out / "model.safetensors").read_bytes()
    assert main(["convert", str(tmp_path / "release.pth"), "-o", str(out)]) == 1
    assert (out / "model.safetensors").read_bytes() == before


def test_unknown_layouts_and_families_get_one_clear_line(
    fake: VQGAN, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save({"encoder.conv.weight": torch.zeros(2, 3, 3, 3)}, tmp_path / "other.pth")
    assert main(["convert", str(tmp_path / "other.pth"), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a checkpoint tokensr knows (1 tensors: encoder.conv.weight)" in err
    assert "--from (fake)" in err and not (tmp_path / "o" / "config.json").exists()
    assert main(["convert", str(tmp_path / "other.pth"), "-o", str(tmp_path / "o"), "--from", "nope"]) == 1
    assert "unknown --from 'nope' (choose from fake)" in capsys.readouterr().err
    # --from the right family, but the keys do not fit: the strict report
    assert main(["convert", str(tmp_path / "other.pth"), "-o", str(tmp_path / "o"), "--from", "fake"]) == 1
    assert "the fake checkpoint does not map" in capsys.readouterr().err


def test_list_prints_each_family_with_its_licence(fake: VQGAN, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", "--list"]) == 0
    out = capsys.readouterr().out
    assert "fake: A fake family (tests)" in out and "MIT" in out and "https://example.org/fake" in out
