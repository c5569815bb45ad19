"""The `tokensr web` page (Gradio): drop images, pick a method, compare, download.

Layout: on the left the upload box and the options (method, scale, and the steps / alpha /
confidence options of the chosen method, shown only for methods that take them); on the
right the messages, a before/after slider (with a picker when several images were upscaled),
the step figure of the iterative methods, and the full-quality files to download.

Requests go through Gradio's queue with one worker, so a second visitor waits in line (the
page shows the place) instead of starting a second CPU job; `tokensr.web.jobs.Upscaler` also
holds a lock. Everything the page loads is served by this server: analytics are off and the
theme uses the fonts bundled with Gradio, so it works with no internet.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr  # tokensr.web (imported first) has turned off its network calls

from tokensr.errors import OptionError
from tokensr.io import default_max_pixels
from tokensr.methods import METHODS, default_method
from tokensr.web import DEFAULT_HOST, DEFAULT_PORT
from tokensr.web.jobs import CONFIDENCES, METHOD_OPTIONS, JobOptions, JobResult, Upscaler

SCALES = (2, 3, 4)
DEFAULT = "default"  # the steps / alpha choice that leaves the method's own value
STEPS_CHOICES: list[tuple[str, str]] = [("the method's default", DEFAULT)]
STEPS_CHOICES += [(str(n), str(n)) for n in (1, 2, 3, 4, 6, 8, 12, 16)]
ALPHA_CHOICES: list[tuple[str, str]] = [("the model's default", DEFAULT)]
ALPHA_CHOICES += [(f"{a / 10:.1f}", f"{a / 10:.1f}") for a in range(1, 10)]
DEFAULT_SCALE = 4
PNG, SAME = "PNG", "same as input"
INTRO = (
    "# tokensr\n"
    "Drop one or several photos, pick a method and a scale, press **Upscale**. Everything runs on "
    "this machine, one job at a time (others wait in line). Largest accepted image: {max_pixels:,} pixels."
)


def method_choices(scale: int) -> list[tuple[str, str]]:
    """(label, name) for every method; the best bundled one for ``scale`` is marked."""
    best = default_method(scale)
    return [(f"{name} (best bundled at x{scale})" if name == best else name, name) for name in METHODS]


def page_number(name: str, value: str | float | None, kind: type[int] | type[float]) -> Any:
    """A steps / alpha choice: None for the default (or empty), else the number; OptionError if not one."""
    text = "" if value is None else str(value).strip()
    if text in ("", DEFAULT):
        return None
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise OptionError(f"{name} must be {what} or '{DEFAULT}', got '{text}'") from None


def option_updates(method: str) -> tuple[Any, Any, Any, Any]:
    """Show the steps, alpha, confidence and step-figure controls only where ``method`` takes them."""
    takes = METHOD_OPTIONS.get(method, ())
    return (
        gr.update(visible="steps" in takes),
        gr.update(visible="alpha" in takes),
        gr.update(visible="confidence" in takes),
        gr.update(visible="save_steps" in takes),
    )


def page_outputs(job: JobResult) -> tuple[Any, ...]:
    """messages, image picker, slider, step figure, downloads, and the shown images by name."""
    done = [r for r in job.images if r.ok]
    shown = {r.name: [str(r.before), str(r.after), str(r.steps_figure) if r.steps_figure else None] for r in done}
    summary = f"{len(done)} of {len(job.images)} image(s) upscaled" if job.images else ""
    text = "\n".join(([summary] if summary else []) + job.messages)
    first = shown[done[0].name] if done else [None, None, None]
    return (
        text,
        gr.update(choices=list(shown), value=done[0].name if done else None, visible=len(done) > 1),
        (first[0], first[1]) if done else None,
        gr.update(value=first[2], visible=first[2] is not None),
        [str(r.output) for r in done],
        shown,
    )


def pick_image(name: str | None, shown: dict[str, list[str | None]]) -> tuple[Any, Any]:
    """The slider pair and step figure of the image called ``name``."""
    if not name or name not in shown:
        return gr.update(), gr.update()
    before, after, figure = shown[name]
    return (before, after), gr.update(value=figure, visible=figure is not None)


def build_app(upscaler: Upscaler) -> gr.Blocks:
    """The page, wired to ``upscaler``; `serve` launches it."""

    def upscale(
        files: list[str] | None,
        method: str,
        scale: int,
        steps: str | None,
        alpha: str | None,
        confidence: str,
        save_steps: bool,
        out_format: str,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (how Gradio hands a progress bar to a handler)
    ) -> tuple[Any, ...]:
        try:
            options = JobOptions(
                method=method,
                scale=int(scale),
                steps=page_number("steps", steps, int),
                alpha=page_number("alpha", alpha, float),
                confidence=confidence,
                save_steps=bool(save_steps),
                keep_format=out_format == SAME,
            )
        except OptionError as e:
            return page_outputs(JobResult(error=f"error: {e}"))
        job = upscaler.run(files or [], options, lambda fraction, text: progress(fraction, desc=text))
        return page_outputs(job)

    def rescale(scale: int) -> Any:
        return gr.update(choices=method_choices(int(scale)), value=default_method(int(scale)))

    first = default_method(DEFAULT_SCALE)
    takes = METHOD_OPTIONS.get(first, ())
    with gr.Blocks(title="tokensr", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(INTRO.format(max_pixels=upscaler.max_pixels or default_max_pixels()))
        with gr.Row():
            with gr.Column(scale=2):
                files = gr.File(
                    label="Images (JPEG, PNG, WebP, TIFF, BMP, GIF)",
                    file_count="multiple",
                    type="filepath",
                    elem_id="uploads",
                )
                scale = gr.Dropdown([(f"x{s}", s) for s in SCALES], value=DEFAULT_SCALE, label="Scale", elem_id="scale")
                method = gr.Dropdown(
                    method_choices(DEFAULT_SCALE),
                    value=first,
                    label="Method",
                    info="default: the best method bundled for the scale",
                    elem_id="method",
                )
                steps = gr.Dropdown(
                    STEPS_CHOICES, value=DEFAULT, label="Steps", visible="steps" in takes, elem_id="steps"
                )
                alpha = gr.Dropdown(
                    ALPHA_CHOICES,
                    value=DEFAULT,
                    label="Alpha: confidence threshold",
                    info="pick or type a number in [0, 1]",
                    allow_custom_value=True,
                    visible="alpha" in takes,
                    elem_id="alpha",
                )
                confidence = gr.Radio(
                    list(CONFIDENCES),
                    value=CONFIDENCES[0],
                    label="Confidence from",
                    visible="confidence" in takes,
                    elem_id="confidence",
                )
                save_steps = gr.Checkbox(
                    False, label="Show each step's figure", visible="save_steps" in takes, elem_id="save-steps"
                )
                out_format = gr.Radio([PNG, SAME], value=PNG, label="Download format", elem_id="format")
                run = gr.Button("Upscale", variant="primary", elem_id="run")
            with gr.Column(scale=3):
                messages = gr.Textbox(label="Messages", lines=2, max_lines=20, interactive=False, elem_id="messages")
                picked = gr.Dropdown([], label="Compare", visible=False, elem_id="picked")
                slider = gr.ImageSlider(
                    label="Before / after (drag the bar)",
                    type="filepath",
                    format="png",
                    interactive=False,
                    elem_id="compare",
                )
                figure = gr.Image(
                    label="Each step (top: the image after it; bottom: its confidence, dark = high)",
                    type="filepath",
                    format="png",
                    interactive=False,
                    visible=False,
                    elem_id="steps-figure",
                )
                downloads = gr.File(
                    label="Download (full quality)", file_count="multiple", interactive=False, elem_id="downloads"
                )
        shown = gr.State({})
        method.change(option_updates, method, [steps, alpha, confidence, save_steps])
        scale.change(rescale, scale, method)
        run.click(
            upscale,
            [files, method, scale, steps, alpha, confidence, save_steps, out_format],
            [messages, picked, slider, figure, downloads, shown],
            concurrency_limit=1,
            concurrency_id="upscale",
        )
        picked.input(pick_image, [picked, shown], [slider, figure])
    app.queue(default_concurrency_limit=1)
    return app


def serve(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, device: str = "cpu", max_pixels: int | None = None
) -> None:
    """Start the page at http://HOST:PORT and serve until interrupted (Ctrl+C)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up check, one line each
    with tempfile.TemporaryDirectory(prefix="tokensr-web-") as workdir:
        app = build_app(Upscaler(Path(workdir), device=device, max_pixels=max_pixels))
        _, url, _ = app.launch(
            server_name=host,
            server_port=port,
            share=False,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            footer_links=["settings"],
            quiet=True,
            prevent_thread_lock=True,
        )
        print(f"tokensr web: open {url} (Ctrl+C stops the server)", flush=True)
        try:
            app.block_thread()
        finally:
            app.close(verbose=False)


__all__ = ["build_app", "method_choices", "option_updates", "page_number", "page_outputs", "pick_image", "serve"]
