"""The explorer as a user drives it, in headless Chromium: the feature list and its search, a
feature card (its images, map and two edits), the edit page (an upload, then one edit); the
edited image must arrive and differ from the unedited one.

HSAE_SERVE_SCREENSHOT=path keeps a screenshot of the edit page there; HSAE_SERVE_RUN=runs/demo
serves that run instead of the tiny one (with the model its store names), which is how the
README's screenshot is made:

    HSAE_SERVE_RUN=runs/demo HSAE_SERVE_SCREENSHOT=docs/img/serve-edit.png \\
      pytest -q tests/serve/test_browser.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hsae.report.browser import find_chromium

LOADED = "document.readyState === 'complete'"
# Pixels of the edited image that differ from the unedited one, read back from the page.
DIFFERING = """(() => {
  const px = (id) => { const im = document.getElementById(id);
    const c = document.createElement('canvas'); c.width = im.naturalWidth; c.height = im.naturalHeight;
    const g = c.getContext('2d'); g.drawImage(im, 0, 0); return g.getImageData(0, 0, c.width, c.height).data; };
  const a = px('img-edited'), b = px('img-unedited');
  let n = 0; for (let i = 0; i < a.length; i += 4) if (a[i] !== b[i] || a[i+1] !== b[i+1] || a[i+2] !== b[i+2]) n++;
  return {n, width: document.getElementById('img-edited').naturalWidth};
})()"""  # noqa: E501


@pytest.fixture(scope="module")
def live(request: pytest.FixtureRequest):
    """The URL of the explorer under test: conftest's tiny run, or $HSAE_SERVE_RUN."""
    run = os.environ.get("HSAE_SERVE_RUN")
    if not run:
        yield request.getfixturevalue("server").url
        return
    from hsae.serve.app import create_app
    from hsae.serve.explorer import ServeOptions, open_explorer
    from hsae.serve.server import LOOPBACK_NAMES, start_in_thread

    ex = open_explorer(ServeOptions(run=Path(run)))
    running = start_in_thread(create_app(ex, list(LOOPBACK_NAMES)), "127.0.0.1", 0)
    yield running.url
    running.stop()
    ex.close()


@pytest.mark.slow
def test_list_card_and_edit_in_headless_chromium(live: str, tmp_path: Path) -> None:
    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed (`make chromium` installs Debian's package)")
    from hsae.serve.browser import Browser

    with Browser(exe, window=(1200, 950), timeout=120) as b:
        # the list: every feature, then a search, then sorted by measured effect
        b.goto(live)
        n_all = b.wait_for(f"{LOADED} && document.body.dataset.page === 'list' && "
                           "document.querySelectorAll('a.feature-link').length")  # fmt: skip
        b.js("document.querySelector('select[name=sort]').value = 'effect'")
        b.js("document.querySelector('.controls button[type=submit]').click()")
        b.wait_for(f"{LOADED} && location.search.includes('sort=effect')")
        latent = b.wait_for("document.querySelector('a.feature-link').textContent")
        assert int(latent) >= 0 and n_all >= 1
        # the card: its images and map load, its two edits arrive
        b.js("document.querySelector('a.feature-link').click()")
        b.wait_for(f"{LOADED} && document.body.dataset.page === 'card' && "
                   f"document.getElementById('card').dataset.latent === '{latent}'")  # fmt: skip
        assert b.wait_for("[...document.images].every(i => i.complete) && "
                          "document.querySelector('img.map').naturalWidth > 0")  # fmt: skip
        assert b.wait_for("document.body.dataset.cardEdits") == "2/2"
        # the edit page: upload a file (it joins the picker), then edit the card's image
        b.js("document.getElementById('edit-this').click()")
        b.wait_for(f"{LOADED} && document.body.dataset.page === 'edit'")  # listeners set
        face = tmp_path / "face.png"
        Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(face)
        b.set_files("#upload", [face])
        assert b.wait_for("document.body.dataset.upload") == "done"
        b.js("document.getElementById('image').selectedIndex = 1")  # back to the card's image
        b.js("const s = document.getElementById('strength'); s.value = '3'; "
             "s.dispatchEvent(new Event('input'))")  # fmt: skip
        b.js("document.getElementById('run-edit').click()")
        job = b.wait_for("document.body.dataset.resultJob")
        status = b.js("document.getElementById('status').textContent")
        assert job and status.startswith("done"), status
        seen = b.js(DIFFERING)
        assert seen["width"] > 0 and seen["n"] > 0, seen
        assert "hsae edit" in b.js("document.getElementById('command').textContent")
        shot = Path(os.environ.get("HSAE_SERVE_SCREENSHOT") or tmp_path / "edit.png")
        b.screenshot(shot)
    with Image.open(shot) as im:
        assert im.format == "PNG" and len(np.unique(np.asarray(im.convert("L")))) > 10
