"""The method docs state the code's defaults, so that a change on either side fails here.

What is checked (docs/realsrt.md, docs/iter.md, docs/ugtsr.md, docs/femasr.md):

- **Inference options**: the ``| option | default | meaning |`` table of each method lists
  exactly the options its ``build()`` accepts, and each stated default is what ``build()``
  resolves with no options. ``build()`` runs on a tiny random model that carries the bundled
  model's inference settings (its ``config.json``: RealSRT's ``lr_patch`` / ``stride`` /
  ``defaults``, ITER's ``steps`` / ``alpha``, UGTSR's ``top_k``), so "the model's (bundled: X)"
  is checked against both the bundled file and the resolution rule. Per-scale defaults
  ("2 at x4, else 5") are checked at x4 and x2.
- **Loss defaults**: the ``| loss key | default | meaning |`` table equals the training
  module's dict (``CCM_LOSS_DEFAULTS``, ``LOSS_DEFAULTS``): same keys, same values.
- **Presets**: the preset tables' sizes equal the ``PRESETS`` dicts.
- **Claims about configs**: every ```key: value` in `configs/X.yaml``` (or a bundled
  ``config.json``) and every ```RealESRGANConfig.field: value``` / ``BSRGANConfig`` /
  ``ITERConfig`` in the docs holds.
- **Differences from the paper**: each method doc has that section with a colour-fix bullet
  naming the default fix and its x4 wavelet depth, plus GAN, degradation and perceptual-loss
  notes; RealSRT's architecture no longer presents AdaIN as its colour fix.

Nothing here reads ../shared; tiny models keep it to a few seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_models import tiny_tokenizer

from tokensr.data.bsrgan import BSRGANConfig
from tokensr.data.realesrgan import RealESRGANConfig
from tokensr.errors import OptionError
from tokensr.inference.colorfix import DEFAULT_WAVELET_LEVELS
from tokensr.methods.iter import method as iter_method
from tokensr.methods.iter import train as iter_train
from tokensr.methods.iter.model import ITER, ITERConfig
from tokensr.methods.iter.model import PRESETS as ITER_PRESETS
from tokensr.methods.realsrt import method as realsrt_method
from tokensr.methods.realsrt import train as realsrt_train
from tokensr.methods.realsrt.model import PRESETS as REALSRT_PRESETS
from tokensr.methods.realsrt.model import RealSRT
from tokensr.methods.ugtsr import method as ugtsr_method
from tokensr.methods.ugtsr import train as ugtsr_train
from tokensr.methods.ugtsr.model import PRESETS as UGTSR_PRESETS
from tokensr.methods.ugtsr.model import UGTSR, UGTSRConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
WEIGHTS = ROOT / "tokensr" / "weights"
METHOD_DOCS = ("realsrt", "iter", "ugtsr")
UGTSR_CONFIG_DEFAULT_FUSION: str = UGTSRConfig.fusion_mode  # the dataclass default


# --- reading the markdown ------------------------------------------------------------------------
def doc(name: str) -> str:
    return (DOCS / f"{name}.md").read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The ``## heading...`` section (up to the next ``## ``); fails when it is missing."""
    match = re.search(rf"^## {re.escape(heading)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def phrase(pattern: str) -> str:
    """``pattern`` with each space matching any run of whitespace (docs wrap their lines)."""
    return pattern.replace(" ", r"\s+")


def tables(text: str) -> Iterator[list[list[str]]]:
    """Every markdown table as rows of cells (the header first, the ``|---|`` row dropped);
    lines starting with ``|`` without such a separator row (ASCII diagrams) are not tables."""
    block: list[list[str]] = []
    separated = False
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if all(re.fullmatch(r":?-+:?", c) for c in cells):
                separated = True
            else:
                block.append(cells)
            continue
        if block and separated:
            yield block
        block, separated = [], False


def table(text: str, first_header: str) -> list[dict[str, str]]:
    """The one table whose first header cell is ``first_header``, as dicts header -> cell."""
    found = [t for t in tables(text) if t[0][0] == first_header]
    assert len(found) == 1, f"expected one table starting with '{first_header}', found {len(found)}"
    header, *rows = found[0]
    return [dict(zip(header, row, strict=True)) for row in rows]


def option_names(cell: str) -> list[str]:
    """``"`tile`, `tile_overlap`"`` -> both; parenthesised CLI spellings are ignored."""
    return re.findall(r"`(\w+)`", re.sub(r"\(.*?\)", "", cell))


def stated(cell: str, scale: int = 4) -> str:
    """The default a cell states: ``A at x4, else B`` per scale, else the value after
    ``bundled:``, else the first literal (a backticked word or a number/true/false/off/auto)."""
    per_scale = re.search(r"`?([\w.]+)`? at x(\d+), else `?([\w.]+)`?", cell)
    if per_scale:
        return per_scale.group(1) if int(per_scale.group(2)) == scale else per_scale.group(3)
    bundled = re.search(r"bundled[^:|]*:\s*`?([\w.]+)`?", cell)
    if bundled:
        return bundled.group(1)
    literal = re.search(r"`([^`]+)`|\b(-?\d+(?:\.\d+)?|true|false|off|auto)\b", cell)
    assert literal, f"no default stated in '{cell}'"
    return literal.group(1) or literal.group(2)


def same(text: str, value: Any) -> bool:
    """Whether the doc's ``text`` (YAML-ish) states ``value``."""
    if value is None:
        return text in ("off", "null", "none", "None", "auto")
    parsed = yaml.safe_load(text)
    if isinstance(value, bool) or isinstance(parsed, bool):
        return parsed is value
    if isinstance(value, (int, float)):
        return isinstance(parsed, (int, float)) and float(parsed) == pytest.approx(float(value))
    if isinstance(value, dict):
        return (
            isinstance(parsed, dict)
            and parsed.keys() == value.keys()
            and all(same(str(parsed[k]), v) for k, v in value.items())
        )
    if isinstance(value, (list, tuple)):
        return isinstance(parsed, list) and [str(x) for x in parsed] == [str(x) for x in value]
    return str(parsed) == str(value)


def bundled_config(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WEIGHTS / name / "config.json").read_text())
    return data


# --- building each method on a tiny model with the bundled inference settings --------------------
Builder = Callable[..., Any]


def accepted_options(build: Builder) -> set[str]:
    """The options ``build`` accepts, read from its error message for an unknown one."""
    with pytest.raises(OptionError) as err:
        build(scale=4, not_an_option=1)
    match = re.search(r"it takes ([\w, ]+)\)", str(err.value))
    assert match, str(err.value)
    return {name.strip() for name in match.group(1).split(",")}


def realsrt_builder(monkeypatch: pytest.MonkeyPatch) -> Builder:
    bundled = bundled_config("realsrt-small-x4")

    def load(weights: str | None, scale: int, device: Any = "cpu") -> RealSRT:
        model = RealSRT.from_preset("tiny", tiny_tokenizer(0, (1, 2), warm=False), scale=scale)
        model.config.lr_patch = bundled["lr_patch"]
        model.config.stride = bundled["stride"]
        model.config.defaults = dict(bundled.get("defaults") or {})
        return model

    monkeypatch.setattr(realsrt_method, "load_model", load)
    return realsrt_method.build


def iter_builder(monkeypatch: pytest.MonkeyPatch) -> Builder:
    bundled = bundled_config("iter-small-x4")

    def load(weights: str | None, scale: int, device: Any = "cpu") -> ITER:
        model = ITER.from_preset("tiny", tiny_tokenizer(0, (1, 2, 4), warm=False), scale=scale)
        model.config.steps = bundled["steps"]
        model.config.alpha = bundled["alpha"]
        return model

    monkeypatch.setattr(iter_method, "load_model", load)
    return iter_method.build


def ugtsr_builder(monkeypatch: pytest.MonkeyPatch) -> Builder:
    bundled = bundled_config("ugtsr-small-x4")

    def load(weights: str | None, scale: int, device: Any = "cpu") -> UGTSR:
        tok = tiny_tokenizer(0, (1, 2, 4), warm=False)
        return UGTSR.create(tok, scale=scale, preset="tiny", top_k=bundled["top_k"], align_attention=True)

    monkeypatch.setattr(ugtsr_method, "load_model", load)
    return ugtsr_method.build


# option -> attribute of the built method; doc words that mean a value other than themselves
ATTRIBUTES: dict[str, dict[str, str]] = {
    "realsrt": {"ccm": "use_ccm", "color_fix": "color"},
    "iter": {"color_fix": "color"},
    "ugtsr": {"color_fix": "color"},
}
WORDS: dict[str, dict[str, dict[str, Any]]] = {
    "ugtsr": {"tile": {"auto": ugtsr_method.AUTO_TILE}},
}
BUILDERS: dict[str, Callable[[pytest.MonkeyPatch], Builder]] = {
    "realsrt": realsrt_builder,
    "iter": iter_builder,
    "ugtsr": ugtsr_builder,
}


@pytest.mark.parametrize("name", METHOD_DOCS)
def test_option_table_matches_build_defaults(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    build = BUILDERS[name](monkeypatch)
    rows = table(doc(name), "option")
    documented = {opt: row["default"] for row in rows for opt in option_names(row["option"])}
    assert set(documented) == accepted_options(build)
    methods = {scale: build(scale=scale) for scale in (4, 2)}
    for option, cell in documented.items():
        attr = ATTRIBUTES[name].get(option, option)
        words = WORDS.get(name, {}).get(option, {})
        for scale, method in methods.items():
            text, actual = stated(cell, scale), getattr(method, attr)
            ok = actual == words[text] if text in words else same(text, actual)
            assert ok, f"docs/{name}.md says {option} defaults to '{text}' (x{scale}); the code gives {actual!r}"


def test_realsrt_pixel_stride_and_decode_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    text = doc("realsrt")
    cell = next(r["default"] for r in table(text, "option") if option_names(r["option"]) == ["stride"])
    pixels = re.search(r"`pixels`:[^;|]*?bundled:\s*(\d+)", cell)
    assert pixels, cell
    method = realsrt_builder(monkeypatch)(scale=4, aggregate="pixels")
    assert method.stride == int(pixels.group(1))
    tiles = re.search(phrase(r"tiles of (\d+) tokens with an (\d+)-token margin"), text)
    assert tiles and (int(tiles.group(1)), int(tiles.group(2))) == (
        realsrt_method.CONV_TILE,
        realsrt_method.CONV_MARGIN,
    )


def test_ugtsr_auto_tile_size_is_stated() -> None:
    cell = next(r["default"] for r in table(doc("ugtsr"), "option") if option_names(r["option"]) == ["tile"])
    assert f"{ugtsr_method.AUTO_TILE}-px tiles" in cell and f"longer than {ugtsr_method.AUTO_TILE} px" in cell


def test_iter_tiling_rule() -> None:
    text = doc("iter")
    whole = re.search(phrase(r"whole-image inference up to (\d+)x(\d+) tokens"), text)
    tiles = re.search(phrase(r"tiles of (\d+) tokens a side overlapping by (\d+) tokens"), text)
    assert whole and tiles
    assert int(whole.group(1)) * int(whole.group(2)) == iter_method.MAX_TOKENS
    assert (int(tiles.group(1)), int(tiles.group(2))) == (iter_method.TILE_TOKENS, iter_method.OVERLAP_TOKENS)


# --- loss defaults ---------------------------------------------------------------------------------
LOSS_DICTS: dict[str, dict[str, Any]] = {
    "realsrt": realsrt_train.CCM_LOSS_DEFAULTS,
    "iter": iter_train.LOSS_DEFAULTS,
    "ugtsr": ugtsr_train.LOSS_DEFAULTS,
}


@pytest.mark.parametrize("name", METHOD_DOCS)
def test_loss_table_matches_loss_defaults(name: str) -> None:
    rows = table(doc(name), "loss key")
    documented = {option_names(r["loss key"])[0]: r["default"] for r in rows}
    defaults = LOSS_DICTS[name]
    assert set(documented) == set(defaults), f"docs/{name}.md loss table keys differ from the code"
    wrong = {k: (documented[k], defaults[k]) for k in defaults if not same(documented[k], defaults[k])}
    assert not wrong, f"docs/{name}.md loss defaults (doc, code): {wrong}"


# --- presets ----------------------------------------------------------------------------------------
def numbers(cell: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", cell)]


def test_realsrt_preset_table() -> None:
    rows = table(doc("realsrt"), "")
    columns = {h: re.findall(r"`(\w+)`", h)[0] for h in rows[0] if h}
    assert sorted(columns.values()) == sorted(REALSRT_PRESETS)
    by_label = {r[""]: r for r in rows}

    def row(prefix: str) -> dict[str, str]:
        hits = [r for label, r in by_label.items() if label.startswith(prefix)]
        assert len(hits) == 1, prefix
        return hits[0]

    for column, preset_name in columns.items():
        p = REALSRT_PRESETS[preset_name]
        gen, crit = p.generator, p.critic
        lr, hr = numbers(row("LR patch")[column])[:2]
        assert (lr, hr) == (p.lr_patch, p.lr_patch * 4), preset_name
        assert numbers(row("width")[column]) == [gen["dim"], gen["heads"], gen["dim_head"]], preset_name
        assert numbers(row("generator blocks")[column]) == [gen["lr_depth"], gen["hr_depth"]], preset_name
        assert numbers(row("critic blocks")[column]) == [crit["lr_depth"], crit["hr_depth"]], preset_name
        assert float(row("GEGLU")[column]) == gen["ff_mult"] == crit["ff_mult"], preset_name
        assert numbers(row("saved inference stride")[column])[0] == (p.stride or p.lr_patch // 2), preset_name


def fields(cell: str, patterns: dict[str, str]) -> Iterator[tuple[str, float]]:
    """``(field, number)`` for every pattern found in ``cell``."""
    for key, pattern in patterns.items():
        for match in re.finditer(pattern, cell):
            yield key, float(match.group(1))


ITER_NET_PATTERNS = {
    "ch": r"(\d+) ch\b",
    "dim": r"\bdim (\d+)",
    "heads": r"(\d+) heads",
    "window": r"window (\d+)",
    "groups": r"(\d+) groups? x",
    "depth": r"groups? x (\d+)",
    "res_blocks": r"(\d+) (?:LeakyReLU ResNet )?blocks?\b",
}


def test_iter_preset_table() -> None:
    checked = 0
    for row in table(doc("iter"), "preset"):
        p = ITER_PRESETS[option_names(row["preset"])[0]]
        for column, net in (("`E_l`", p.lq_encoder), ("`phi_r`", p.refine), ("`phi_e`", p.evaluator)):
            for key, value in fields(row[column], ITER_NET_PATTERNS):
                assert net[key] == value, f"{row['preset']} {column} {key}: doc {value}, code {net[key]}"
                checked += 1
        crop = re.search(r"(\d+) px", row["tokenizer, HR crop"])
        assert crop and int(crop.group(1)) == p.crop_size, row["preset"]
    assert checked >= 20  # the patterns still find the sizes


UGTSR_COLUMNS: dict[str, dict[str, str]] = {
    "LQ encoder": {
        "enc_ch": r"(\d+) ch\b",
        "enc_ch_max": r"\((\d+) after a downsampling\)",
        "enc_res_blocks": r"(\d+) blocks per level",
    },
    "Swin": {
        "swin_groups": r"(\d+) groups? x depth",
        "swin_depth": r"x depth (\d+)",
        "swin_dim": r"\bdim (\d+)",
        "swin_heads": r"(\d+) heads",
        "swin_window": r"window (\d+)",
        "swin_mlp_ratio": r"MLP ratio (\d+(?:\.\d+)?)",
    },
    "fusion / align": {
        "fusion_dim": r"\bdim (\d+)",
        "align_dim": r"\bdim (\d+)",
        "fusion_heads": r"(\d+) heads",
        "align_heads": r"(\d+) heads",
    },
}


def test_ugtsr_preset_table() -> None:
    checked = 0
    for row in table(doc("ugtsr"), "preset"):
        preset = UGTSR_PRESETS[option_names(row["preset"])[0]]
        for column, patterns in UGTSR_COLUMNS.items():
            for key, value in fields(row[column], patterns):
                assert preset[key] == value, f"{row['preset']} {column} {key}: doc {value}, code {preset[key]}"
                checked += 1
    assert checked >= 20


# --- claims about config files and dataclass defaults ----------------------------------------------
CONFIG_CLAIM = re.compile(r"`([A-Za-z_][\w.]*): ([^`]+)` in\s+`((?:configs|tokensr/weights)/[\w./-]+\.(?:yaml|json))`")
DATACLASS_CLAIM = re.compile(r"`(RealESRGANConfig|BSRGANConfig|ITERConfig)\.(\w+): ([^`]+)`")
DATACLASSES: dict[str, Any] = {
    "RealESRGANConfig": RealESRGANConfig(),
    "BSRGANConfig": BSRGANConfig(),
    "ITERConfig": ITERConfig(),
}
MIN_CLAIMS = {"realsrt": 5, "iter": 8, "ugtsr": 7, "femasr": 0}


def lookup(data: dict[str, Any], dotted: str) -> Any:
    """``a.b`` in the task config (``task_config``) or else at the top level."""
    for root in (data.get("task_config"), data):
        node: Any = root
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return node
    raise AssertionError(f"no '{dotted}'")


@pytest.mark.parametrize("name", [*METHOD_DOCS, "femasr"])
def test_stated_config_values_hold(name: str) -> None:
    text = doc(name)
    claims = 0
    for key, value, path in CONFIG_CLAIM.findall(text):
        data = yaml.safe_load((ROOT / path).read_text())
        actual = lookup(data, key)
        assert same(value, actual), f"docs/{name}.md: `{key}: {value}` in {path}, but it is {actual!r}"
        claims += 1
    for cls, field, value in DATACLASS_CLAIM.findall(text):
        actual = getattr(DATACLASSES[cls], field)
        assert same(value, actual), f"docs/{name}.md: {cls}.{field} is {actual!r}, not {value}"
        claims += 1
    assert claims >= MIN_CLAIMS[name], f"docs/{name}.md: only {claims} checkable claims found"


# --- the "Differences from the paper" sections -----------------------------------------------------
COLOR_DEFAULTS = {
    "realsrt": (realsrt_method.DEFAULT_COLOR_FIX, realsrt_method.COLOR_LEVELS),
    "iter": (iter_method.DEFAULT_COLOR_FIX, iter_method.COLOR_LEVELS),
    "ugtsr": (ugtsr_method.DEFAULT_COLOR_FIX, ugtsr_method.COLOR_LEVELS),
}


def bullets(text: str) -> dict[str, str]:
    """Top-level ``- **Title**...`` bullets of a section by title."""
    parts = re.split(r"^- ", text, flags=re.M)[1:]
    return {m.group(1): part for part in parts if (m := re.match(r"\*\*(.+?)\*\*", part))}


@pytest.mark.parametrize("name", METHOD_DOCS)
def test_differences_section_has_the_colour_fix_and_the_rest(name: str) -> None:
    diff = bullets(section(doc(name), "Differences from the paper"))
    colour = diff.get("Colour fix")
    assert colour, f"docs/{name}.md: no '- **Colour fix**' bullet in 'Differences from the paper'"
    fix, per_scale = COLOR_DEFAULTS[name]
    levels = per_scale.get(4, DEFAULT_WAVELET_LEVELS)
    assert f"`color_fix={fix}`" in colour
    depth = rf"{levels} levels at x4" if 4 in per_scale else rf"`color_levels` {levels} at every scale"
    assert re.search(phrase(depth), colour), f"docs/{name}.md: the colour-fix bullet does not say '{depth}'"
    assert "adain" in colour.lower()
    titles = " / ".join(diff)
    for topic in ("GAN", "Degradations", "Perceptual" if name != "iter" else "Losses"):
        assert topic in titles, f"docs/{name}.md: no '{topic}' bullet in 'Differences from the paper' ({titles})"


def test_ugtsr_codebook_on_fused_is_described_as_the_code_does() -> None:
    """The bullet on the codebook loss says where the default puts it for the default fusion."""
    text = bullets(section(doc("ugtsr"), "Differences from the paper"))["Codebook loss on the fused feature"]
    fusion = UGTSR_CONFIG_DEFAULT_FUSION
    targets = ugtsr_train.codebook_targets(ugtsr_train.LOSS_DEFAULTS["codebook_on"], fusion)
    on = [t for t in ("lq", "fused") if t in targets]
    assert f"default `{fusion}` fusion" in text
    assert f"`[{', '.join(on)}]`" in text
    assert ("fused" in on) == ("also applied to the fused" in text)


def test_realsrt_architecture_does_not_call_adain_its_colour_fix() -> None:
    arch = section(doc("realsrt"), "Architecture")
    fences = re.findall(r"```(.*?)```", arch, re.S)
    assert fences and not any("adain" in f.lower() for f in fences)
    for paragraph in re.split(r"\n\s*\n|\n- ", arch):
        if "adain" in paragraph.lower():
            assert "color_fix" in paragraph, paragraph


def test_helpers_catch_a_wrong_default() -> None:
    """The parsing is not a tautology: a changed value is noticed."""
    assert stated("2 at x4, else 5", 4) == "2" and stated("2 at x4, else 5", 2) == "5"
    assert stated("the model's (bundled: 0.3)") == "0.3"
    assert same("0.3", 0.3) and not same("0.3", 0.5)
    assert same("[lq, fused]", ["lq", "fused"]) and not same("[lq]", ["lq", "fused"])
    assert same("{l1: 1.0, ms_ssim: 1.0}", {"l1": 1.0, "ms_ssim": 1.0})
    assert not same("true", False) and same("off", None) and not same("4", 5)
