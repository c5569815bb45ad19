"""benchmarks/swap_decoder.py: a fine-tuned decoder goes into a saved method folder, and only
when the method's tokens keep their meaning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bench_scripts import load_script
from tiny_models import tiny_tokenizer

from tokensr.methods.realsrt.model import RealSRT
from tokensr.nn.vqgan import VQGAN

swap = load_script("swap_decoder")


def test_decoder_is_swapped_and_the_rest_kept(tmp_path: Path) -> None:
    tok = tiny_tokenizer(0, (1, 2))
    method = RealSRT.from_preset("tiny", tok)
    method.save_pretrained(tmp_path / "method")
    tuned = VQGAN(tok.config)
    tuned.load_state_dict(tok.state_dict())
    with torch.no_grad():
        for p in tuned.decoder.parameters():
            p.add_(0.1)
    tuned.save_pretrained(tmp_path / "tuned")

    n = swap.swap_decoder(tmp_path / "method", tmp_path / "tuned", tmp_path / "out", fp16=False)
    assert n == len([k for k in tuned.state_dict() if k.startswith(("decoder.", "post_quant_conv."))])
    out = RealSRT.from_pretrained(str(tmp_path / "out"))
    for k, v in tuned.decoder.state_dict().items():
        assert torch.equal(out.tokenizer.decoder.state_dict()[k], v), k
    for k, v in method.state_dict().items():
        if not k.startswith(("tokenizer.decoder.", "tokenizer.post_quant_conv.")):
            assert torch.equal(out.state_dict()[k], v), k
    assert (tmp_path / "out" / "config.json").is_file()


def test_a_tokenizer_with_another_encoder_is_refused(tmp_path: Path) -> None:
    RealSRT.from_preset("tiny", tiny_tokenizer(0, (1, 2))).save_pretrained(tmp_path / "method")
    tiny_tokenizer(1, (1, 2)).save_pretrained(tmp_path / "other")
    with pytest.raises(SystemExit, match="differs"):
        swap.swap_decoder(tmp_path / "method", tmp_path / "other", tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
