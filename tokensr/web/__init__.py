"""`tokensr web`: a local web page for upscaling (the ``web`` extra: ``pip install 'tokensr[web]'``).

`tokensr.web.jobs` does the work and needs no web library; `tokensr.web.app` is the Gradio
page. Importing this package turns off Gradio's and Hugging Face Hub's calls home (usage
statistics, version checks) before Gradio loads, so the server needs no internet.
"""

from __future__ import annotations

import os

DEFAULT_HOST = "127.0.0.1"  # this machine only
DEFAULT_PORT = 7860  # Gradio's usual port

OFFLINE_ENV: dict[str, str] = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "OFFLINE_ENV"]
