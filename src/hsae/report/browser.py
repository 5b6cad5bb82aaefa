"""The report opened in headless Chromium: a screenshot and what the page's check script saw.

The page counts, once loaded, its images, those that failed to load and those that carry no
visible label (no caption and no labelled card around them) into attributes of `<body>`;
`browser_check` dumps the DOM and reads them back with the names of the cards it rendered.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hsae.utils.io import atomic_write_bytes

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# --virtual-time-budget lets the page finish loading (and run the onload check) before the DOM is
# dumped; --no-sandbox because CI containers run as root.
# fmt: off
CHROMIUM_FLAGS = ("--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                  "--no-first-run", "--disable-extensions", "--disable-dev-shm-usage",
                  "--virtual-time-budget=10000")
# fmt: on


def find_chromium() -> str | None:
    """$HSAE_CHROMIUM, else the first Chromium/Chrome on PATH."""
    if os.environ.get("HSAE_CHROMIUM"):
        return os.environ["HSAE_CHROMIUM"]
    return next((p for n in CHROMIUM_NAMES if (p := shutil.which(n))), None)


def chromium_command(
    exe: str, url: str, profile: Path, shot: Path, window: tuple[int, int]
) -> list[str]:
    per_run = [f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}"]
    return [exe, *CHROMIUM_FLAGS, *per_run, f"--screenshot={shot}", "--dump-dom", url]


def run_chromium(cmd: list[str], timeout: float) -> str:
    """Run one headless Chromium in its own process group; return stdout (the DOM)."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        dom, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"chromium did not finish within {timeout:g} s") from None
    finally:
        # Helpers (crashpad) can outlive the browser; they are in the group we started.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    if proc.returncode != 0 or "<body" not in dom:
        tail = "\n".join(err.strip().splitlines()[-5:])
        raise RuntimeError(f"chromium failed (exit {proc.returncode}): {tail}")
    return dom


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def parse_dom(dom: str) -> dict[str, Any]:
    """What the page's check script recorded, the ids of its sections and the cards' names."""
    m = re.search(r"<body\b[^>]*>", dom)
    tag = m.group(0) if m else ""

    def attr(name: str) -> str | None:
        a = re.search(rf'\b{name}="([^"]*)"', tag)
        return a.group(1) if a else None

    cards = re.findall(r'<article\b[^>]*\bdata-card="([^"]*)"', dom)
    return {
        "loaded": attr("data-loaded") == "1",
        "images": _int(attr("data-images")),
        "broken_images": _int(attr("data-broken-images")),
        "unlabelled_images": _int(attr("data-unlabelled-images")),
        "sections": re.findall(r'<section\b[^>]*\bid="([^"]+)"', dom),
        "present": (attr("data-sections-present") or "").split(),
        "cards": [html.unescape(c) for c in cards],
        "headlines": [html.unescape(h) for h in re.findall(r'\bdata-headline="([^"]*)"', dom)],
    }


def browser_check(
    index: Path,
    screenshot: Path | None = None,
    window: tuple[int, int] = (1280, 2400),
    timeout: float = 180.0,
    exe: str | None = None,
) -> dict[str, Any]:
    """Open index.html in headless Chromium once: screenshot + DOM dump, parsed by parse_dom."""
    exe = exe or find_chromium()
    if exe is None:
        raise FileNotFoundError(
            "no Chromium found (tried $HSAE_CHROMIUM and " + ", ".join(CHROMIUM_NAMES) + "); "
            "install it with `make chromium` or `apt-get install chromium`"
        )
    with tempfile.TemporaryDirectory(prefix="hsae-chromium-", ignore_cleanup_errors=True) as tmp:
        shot = Path(tmp) / "shot.png"
        cmd = chromium_command(
            exe, Path(index).resolve().as_uri(), Path(tmp) / "profile", shot, window
        )
        result = parse_dom(run_chromium(cmd, timeout))
        result["screenshot"] = None
        if screenshot is not None and shot.is_file():
            atomic_write_bytes(screenshot, shot.read_bytes())
            result["screenshot"] = str(screenshot)
    return result
