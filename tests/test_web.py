"""`tokensr web`: the job runner without a browser, the command's options, and the real page in
headless Chromium (skipped unless the web extra, Selenium, chromium and chromedriver are installed;
.ci/run installs them)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import tokensr
from tokensr.cli import main
from tokensr.inference.progress import StepProgress
from tokensr.web.jobs import JobOptions, Upscaler, _tile_progress

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def corrupt_png(path: Path) -> Path:
    """A file with a PNG signature and garbage after it."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return path


# --- the job runner (no web library needed) ---------------------------------------------------
def test_job_writes_full_quality_result_and_same_size_previews(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    src = make_image("photo.png", "RGBA", (12, 8))
    seen: list[tuple[float, str]] = []
    job = Upscaler(tmp_path / "work").run([src], JobOptions("bicubic", scale=2), lambda f, text: seen.append((f, text)))
    assert job.error is None
    (one,) = job.images
    assert one.ok and one.output is not None and one.output.name == "photo_x2.png"
    with Image.open(one.output) as out:
        assert out.format == "PNG" and out.mode == "RGBA" and out.size == (24, 16)
    assert one.before is not None and one.after is not None
    with Image.open(one.before) as before, Image.open(one.after) as after:
        assert before.size == after.size == (24, 16)
    assert "12x8 -> 24x16" in one.message
    assert seen[0][0] == 0.0 and seen[-1] == (1.0, "done") and any("image 1/1: photo.png" in t for _, t in seen)


def test_progress_follows_the_tiles_of_a_large_image(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    src = make_image("wide.png", "RGB", (1100, 6))  # wider than one automatic tile (512 px)
    seen: list[tuple[float, str]] = []
    job = Upscaler(tmp_path / "work").run(
        [src, src], JobOptions("bicubic", scale=2), lambda f, text: seen.append((f, text))
    )
    assert [r.ok for r in job.images] == [True, True]
    tiles = [(f, t) for f, t in seen if "tile" in t]
    assert tiles[0][1] == "image 1/2: wide.png: tile 1/3" and tiles[-1] == (1.0, "image 2/2: wide.png: tile 3/3")
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and 0.0 < tiles[0][0] < 0.5


def test_progress_says_window_when_the_method_reports_its_own_steps() -> None:
    # RealSRT reports token windows through StepProgress; the web text must not call them tiles
    seen: list[tuple[float, str]] = []
    steps = StepProgress(_tile_progress(lambda f, text: seen.append((f, text)), 1, 2, "image 2/2: a.png"), tiles=2)
    steps.start(0, 1)
    steps.hook(3, 6)  # half of the first tile's six windows
    assert seen[-1] == (0.625, "image 2/2: a.png: window 3/12")
    steps.finished(2)
    assert seen[-1] == (1.0, "image 2/2: a.png: window 12/12")


def test_job_keeps_the_input_format_when_asked(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    src = make_image("scan.jpeg", "RGB", (10, 6))
    job = Upscaler(tmp_path / "work").run([src], JobOptions("bicubic", scale=3, keep_format=True))
    out = job.images[0].output
    assert out is not None and out.name == "scan_x3.jpg"
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.size == (30, 18)


def test_bad_uploads_get_one_line_each_and_the_rest_go_on(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    good = make_image("good.png", "L", (8, 8))
    big = make_image("big.png", "RGB", (40, 40))
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    bad = corrupt_png(tmp_path / "broken.png")
    job = Upscaler(tmp_path / "work", max_pixels=1000).run([bad, text, good, big], JobOptions("bicubic", scale=2))
    broken, notes, fine, large = job.images
    assert not broken.ok and broken.message.startswith("error: broken.png: corrupt")
    assert not notes.ok and "notes.png: not an image file" in notes.message
    assert fine.ok and fine.output is not None and Image.open(fine.output).size == (16, 16)
    assert not large.ok and "40x40 = 1,600 pixels is over the limit of 1,000" in large.message
    assert all("\n" not in m for m in job.messages)


def test_a_method_that_cannot_be_built_is_one_error(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    job = Upscaler(tmp_path / "work").run([make_image("a.png")], JobOptions("nosuchmethod", scale=2))
    assert job.images == [] and job.error is not None and "unknown method 'nosuchmethod'" in job.error
    assert Upscaler(tmp_path / "work").run([], JobOptions("bicubic")).error == (
        "no images: drop one or more image files first"
    )


def test_jobs_run_one_at_a_time(
    tmp_path: Path, make_image: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests at once: the second waits for the first (a lock, on top of Gradio's queue)."""
    import threading

    import torch

    running, most = [0], [0]

    class SlowBicubic:
        name, scale = "slow", 2

        def __call__(self, lr: torch.Tensor) -> torch.Tensor:
            running[0] += 1
            most[0] = max(most[0], running[0])
            time.sleep(0.3)
            running[0] -= 1
            return torch.nn.functional.interpolate(lr, scale_factor=2, mode="bicubic").clamp(0, 1)

    upscaler = Upscaler(tmp_path / "work")
    monkeypatch.setattr(upscaler, "method", lambda options: SlowBicubic())
    src = make_image("a.png", size=(6, 4))
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(upscaler.run([src], JobOptions("bicubic", 2)).images[0].ok))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True] and most[0] == 1


def test_only_the_options_a_method_takes_are_passed(tmp_path: Path) -> None:
    asked = JobOptions("iter", steps=3, alpha=0.4, confidence="critic", save_steps=True)
    assert asked.method_options(tmp_path) == {"steps": 3, "alpha": 0.4, "save_steps": str(tmp_path)}
    assert JobOptions("realsrt", steps=2, alpha=0.4, confidence="generator").method_options(tmp_path) == {
        "steps": 2,
        "confidence": "generator",
    }
    assert JobOptions("bicubic", steps=2, alpha=0.4).method_options(tmp_path) == {}


# --- the command -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "0"], "--port must be in 1..65535, got 0"),
        (["--max-pixels", "0"], "--max-pixels must be >= 1, got 0"),
        (["--device", "cuda:99"], "device 'cuda:99'"),
    ],
)
def test_web_command_refuses_bad_options(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["web", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokensr web: error:") and message in err and "\n" not in err


def test_web_command_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if Gradio were not installed
    monkeypatch.delitem(sys.modules, "tokensr.web.app", raising=False)
    assert main(["web"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tokensr web: error: tokensr web needs the package 'gradio': pip install 'tokensr[web]'"
    )


def test_web_command_binds_to_this_machine_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gradio")
    import tokensr.web.app

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(tokensr.web.app, "serve", lambda *a, **k: calls.append((a, k)))
    assert main(["web"]) == 0
    assert main(["web", "--host", "0.0.0.0", "--port", "8080", "--max-pixels", "99"]) == 0
    assert calls == [
        (("127.0.0.1", 7860), {"device": "cpu", "max_pixels": None}),
        (("0.0.0.0", 8080), {"device": "cpu", "max_pixels": 99}),
    ]


def test_web_command_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gradio")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["web", "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"tokensr web: error: cannot listen on 127.0.0.1:{port}: is another server using that port")


def test_page_number_parses_steps_and_alpha() -> None:
    pytest.importorskip("gradio")
    from tokensr.errors import OptionError
    from tokensr.web.app import page_number

    assert page_number("steps", "default", int) is None and page_number("steps", "8", int) == 8
    assert page_number("alpha", " 0.25 ", float) == 0.25 and page_number("alpha", None, float) is None
    with pytest.raises(OptionError, match="alpha must be a number or 'default', got 'half'"):
        page_number("alpha", "half", float)


def test_page_shows_the_first_result_and_offers_a_picker_for_several(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    pytest.importorskip("gradio")
    from tokensr.web.app import page_outputs, pick_image

    files = [make_image("a.png", size=(6, 4)), corrupt_png(tmp_path / "b.png"), make_image("c.png", size=(4, 6))]
    job = Upscaler(tmp_path / "work").run(files, JobOptions("bicubic", scale=2))
    text, picker, pair, figure, downloads, shown = page_outputs(job)
    assert text.splitlines()[0] == "2 of 3 image(s) upscaled" and "error: b.png: corrupt" in text
    assert picker["choices"] == ["a.png", "c.png"] and picker["value"] == "a.png" and picker["visible"]
    assert pair == tuple(shown["a.png"][:2]) and figure["visible"] is False
    assert [Path(d).name for d in downloads] == ["a_x2.png", "c_x2.png"]
    c_pair, _ = pick_image("c.png", shown)
    with Image.open(c_pair[0]) as before, Image.open(c_pair[1]) as after:
        assert before.size == after.size == (8, 12)


# --- the real page in headless Chromium --------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`tokensr web` in a subprocess, as a person starts it; yields its URL."""
    pytest.importorskip("gradio")
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tokensr", "web", "--port", str(port), "--max-pixels", "100000"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180  # importing Gradio takes a while on a busy 2-core machine
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tokensr web exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tokensr web did not answer at {url}:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
        assert proc.poll() is None, f"the server stopped:\n{log.read_text()}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian chromium through the system chromedriver; downloads go to ``browser.downloads``."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1200",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)  # no selenium-manager
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the page is still rendering: elements come and go
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def messages_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.CSS_SELECTOR, "#messages textarea").get_attribute("value") or "")


def upscale_on_page(driver: Any, files: list[Path]) -> str:
    """Clear the upload box, drop ``files`` in, press Upscale; returns the messages shown."""
    from selenium.webdriver.common.by import By

    before = messages_text(driver)
    for clear in driver.find_elements(By.CSS_SELECTOR, "#uploads button[aria-label='Clear']"):
        clear.click()
    upload = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#uploads input[type=file]"), "the upload box")
    upload.send_keys("\n".join(str(f) for f in files))
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#uploads tbody tr")) == len(files), "the upload")
    driver.find_element(By.CSS_SELECTOR, "#run").click()
    return str(wait_for(lambda: (text := messages_text(driver)) != before and text, "the messages"))


def pick_method(driver: Any, name: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, "#method input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(name)
    option = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, f"li[aria-label='{name}']"), f"option {name}")
    option.click()
    wait_for(lambda: box.get_attribute("value") == name, f"method {name} chosen")


def requested_urls(driver: Any) -> set[str]:
    urls: set[str] = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"])
    return urls


def test_page_upscales_a_dropped_image_and_reports_a_corrupt_one(
    server: str, browser: Any, tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(server)
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#run"), "the page")
    pick_method(browser, "bicubic")

    # A corrupt upload: one clear line on the page, and the server keeps serving.
    shown = upscale_on_page(browser, [corrupt_png(tmp_path / "broken.png")])
    assert "0 of 1 image(s) upscaled" in shown and "error: broken.png: corrupt" in shown, shown

    # A good one: the result, the before/after slider and a full-quality download.
    photo = make_image("photo.png", "RGB", (24, 16))
    shown = upscale_on_page(browser, [photo])
    assert "1 of 1 image(s) upscaled" in shown and "photo.png: 24x16 -> 96x64 with bicubic x4" in shown, shown
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#compare img")) == 2, "the before/after slider")
    link = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#downloads a[download]"), "the download link")
    assert link.get_attribute("download") == "photo_x4.png" and "KB" in link.text  # its size, shown by Gradio
    link.click()
    target = browser.downloads / "photo_x4.png"
    wait_for(
        lambda: target.is_file() and target.stat().st_size > 0 and not any(browser.downloads.glob("*.crdownload")),
        "the downloaded file",
    )
    assert target.stat().st_size > 1000  # a real 96x64 RGB PNG, not an error page
    with Image.open(target) as im:
        assert im.format == "PNG" and im.size == (96, 64)
        expected = tokensr.upscale(photo, method="bicubic", scale=4)
        assert np.array_equal(np.asarray(im), np.asarray(expected))  # the full result, not a preview

    # Nothing came from anywhere but this server.
    outside = {
        u
        for u in requested_urls(browser)
        if u.startswith(("http:", "https:", "ws:", "wss:")) and not u.startswith((server, server.replace("http", "ws")))
    }
    assert not outside, sorted(outside)
