"""The explorer over HTTP: the feature list and card, edits that match `hsae edit` bit for bit,
one edit at a time with queued requests told they wait, and one clear message for each bad input
with nothing changed on disk."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hsae.cli import main

LATENTS, EFFECT_LATENT = 24, 3  # as tests/serve/conftest.py builds the run


def request(url: str, data: bytes | None = None, headers: dict | None = None,
            method: str | None = None) -> tuple[int, bytes, Any]:  # fmt: skip
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def post_json(url: str, doc: Any) -> tuple[int, Any]:
    status, body, _ = request(url, json.dumps(doc).encode(), {"Content-Type": "application/json"})
    return status, json.loads(body)


def edit(server, **req: Any) -> dict[str, Any]:
    """Submit an edit and long-poll it to the end; returns its final status."""
    status, st = post_json(server.url + "api/edit", req)
    assert status == 202, st
    while st["state"] in ("queued", "running"):
        _, body, _ = request(f"{server.url}api/jobs/{st['job']}?wait=20&seen={st['key']}")
        st = json.loads(body)
    assert st["state"] == "done", st
    return st


def pixels(data: bytes | Path) -> np.ndarray:
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(src) as im:
        return np.asarray(im.convert("RGB"))


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def firing_token(explorer, image_id: str, latent: int) -> int:
    from hsae.editing.intervene import encode_tokens
    from hsae.editing.selection import store_h

    store = explorer.setup.store
    h = store_h(store, np.array([store.ids.index(image_id)]))
    return int(encode_tokens(explorer.setup.sae, h)[0, :, latent].argmax())


def first_image(run: Path) -> Path:
    return sorted((run / "data" / "img_align_celeba").glob("*.png"))[0]


# ----- the list and the card ----------------------------------------------------------------------
def test_rank_auroc_matches_sklearn() -> None:
    from sklearn.metrics import roc_auc_score

    from hsae.serve.catalog import rank_auroc

    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=(50, 3)).astype(float)  # ties on purpose
    y = rng.random(50) > 0.4
    want = [roc_auc_score(y, s[:, j]) for j in range(3)]
    np.testing.assert_allclose(rank_auroc(s, y), want)
    assert np.isnan(rank_auroc(s, np.ones(50, bool))).all()


def test_feature_list_search_and_sort(server, explorer) -> None:
    from hsae.editing.selection import code_stats

    _, body, _ = request(server.url + "api/features?sort=firing")
    rows = json.loads(body)
    assert len(rows) == LATENTS
    firing = [r["firing"] for r in rows]
    assert firing == sorted(firing, reverse=True)
    st = code_stats(explorer.setup.sae, explorer.setup.store, explorer.catalog.rows)
    by_latent = {r["latent"]: r for r in rows}
    np.testing.assert_allclose([by_latent[j]["firing"] for j in range(LATENTS)],
                               st.freq.mean(0).numpy(), rtol=1e-6)  # fmt: skip
    _, body, _ = request(server.url + "api/features?sort=effect")
    top = json.loads(body)[0]
    assert top["latent"] == EFFECT_LATENT and top["effect"] == 0.75
    assert top["effects"][0]["attribute"] == "Eyeglasses" and top["effects"][0]["remove"] == 0.25
    _, body, _ = request(server.url + "api/features?q=eyeglasses")
    assert EFFECT_LATENT in [r["latent"] for r in json.loads(body)]
    status, body, _ = request(server.url + "?sort=auroc&attribute=Smiling&q=")
    page = body.decode()
    assert status == 200 and page.count('class="feature-link"') == LATENTS
    assert "AUROC (Smiling)" in page


def test_feature_card(server, tiny_run) -> None:
    status, body, _ = request(f"{server.url}feature/{EFFECT_LATENT}")
    page = body.decode()
    assert status == 200 and f"latent {EFFECT_LATENT}" in page
    assert page.count('class="thumb"') >= 1 and 'id="effects"' in page
    assert f"5:{EFFECT_LATENT}" in page  # its component in features.json
    assert page.count('class="card-edit"') == 2  # two sizes
    status, png, headers = request(f"{server.url}api/map/{EFFECT_LATENT}")
    assert status == 200 and headers["content-type"] == "image/png" and pixels(png).size


# ----- edits -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("feature", "rule", "strength", "upload"),
    [("latent:3", "add", 2.5, False), ("component", "scale", 3.0, False),
     ("latent:7", "add", -1.5, True)],
)  # fmt: skip
def test_edit_matches_hsae_edit_bit_for_bit(
    server, explorer, tiny_run: Path, tmp_path: Path, feature: str, rule: str, strength: float,
    upload: bool,
) -> None:  # fmt: skip
    path = first_image(tiny_run)
    if feature == "component":  # the scale rule needs a component that fires on the image
        feature = f"component:{firing_token(explorer, path.name, 3)}:3"
    if upload:
        copy = tmp_path / "mine.png"
        copy.write_bytes(path.read_bytes())
        status, body, _ = request(server.url + "api/upload", copy.read_bytes(),
                                  {"X-Filename": "mine.png"})  # fmt: skip
        assert status == 200, body
        image, path = json.loads(body)["image"], copy
    else:
        image = "run:" + path.relative_to(tiny_run).as_posix()
    st = edit(server, image=image, feature=feature, strength=strength, rule=rule, window="all",
              mode="error_preserving")  # fmt: skip
    base = f"{server.url}api/jobs/{st['job']}/"
    _, body, headers = request(base + "params.json?download=1")
    assert "attachment" in headers["content-disposition"]
    params = json.loads(body)
    argv = params["hsae_edit"]["argv"]
    if upload:  # the JSON names the uploaded file; the user runs it where the file is
        argv[argv.index("--image") + 1] = str(path)
    out = tmp_path / "cli"
    assert main([*argv[:-1], str(out)]) == 0
    edited = pixels(request(base + "edited.png")[1])
    assert np.array_equal(edited, pixels(out / params["hsae_edit"]["edited_png"]))
    unedited = pixels(request(base + "unedited.png")[1])
    assert np.array_equal(unedited, pixels(out / f"{path.stem}_unedited.png"))
    assert not np.array_equal(edited, unedited)
    assert params["strength"] == strength and params["window"] == "all"


def test_inversions_are_kept_per_image(server, explorer, tiny_run: Path, monkeypatch) -> None:
    calls: list[int] = []
    invert = explorer.setup.invert

    def counted(x):
        calls.append(len(x))
        return invert(x)

    monkeypatch.setattr(explorer.setup, "invert", counted)
    store = explorer.setup.store
    used = {first_image(tiny_run).name, store.ids[explorer.catalog.top_rows(EFFECT_LATENT)[0][0]]}
    name = next(i for i in sorted(store.ids) if i not in used)  # an image no other test edits
    image = f"run:data/img_align_celeba/{name}"
    for s in (1.0, 2.0):
        edit(server, image=image, feature="latent:2", strength=s)
    assert calls == [1]  # the second edit reused the first one's inversion


@pytest.mark.parametrize("feature", ["mean_diff:Eyeglasses", "pca:0"])
def test_direction_edits(server, tiny_run: Path, feature: str) -> None:
    image = "run:" + first_image(tiny_run).relative_to(tiny_run).as_posix()
    st = edit(server, image=image, feature=feature, strength=0.5, window=2)
    base = f"{server.url}api/jobs/{st['job']}/"
    params = json.loads(request(base + "params.json")[1])
    assert params["feature"]["unit"] == "direction" and params["hsae_edit"]["argv"] is None
    assert abs(params["size_first_step"] - 0.5) < 0.25  # s is about ‖h̃ − h‖ / ‖h‖
    assert not np.array_equal(pixels(request(base + "edited.png")[1]),
                              pixels(request(base + "unedited.png")[1]))  # fmt: skip


def test_queued_jobs_say_they_wait() -> None:
    from hsae.serve.jobs import JobQueue

    gate = threading.Event()
    q = JobQueue(lambda p: gate.wait(10) and p)
    try:
        a, b = q.submit("a"), q.submit("b")
        assert q.wait(a["job"], seen=a["key"], timeout=5)["state"] == "running"
        st = q.status(b["job"])
        assert st["state"] == "queued" and st["ahead"] == 1
        assert st["message"].startswith("waiting: 1 edit ahead of yours")
        t0 = time.monotonic()
        assert q.wait(b["job"], seen=st["key"], timeout=0.3)["key"] == st["key"]  # no change
        assert time.monotonic() - t0 >= 0.25
        gate.set()
        assert q.wait(b["job"], seen=st["key"], timeout=5)["state"] in ("running", "done")
        assert q.wait(b["job"], seen="running:0", timeout=5)["state"] == "done"
        assert q.job(b["job"]).result == "b"
    finally:
        gate.set()
        q.close()


# ----- bad input: one message each, nothing changed on disk ---------------------------------------
def _good(tiny_run: Path) -> dict[str, Any]:
    image = "run:" + first_image(tiny_run).relative_to(tiny_run).as_posix()
    return {"image": image, "feature": "latent:1", "strength": 1.0, "window": "all"}


BAD_EDITS = {
    "unknown feature": ({"feature": "latent:999"}, 404, "unknown feature: latent 999"),
    "unknown kind": ({"feature": "neuron:3"}, 400, "unknown feature 'neuron:3'"),
    "strength out of range": ({"strength": 1e6}, 400, "out of range"),
    "strength not a number": ({"strength": "lots"}, 400, "strength must be a number"),
    "path outside the run": ({"image": "run:../outside.png"}, 403, "outside the run folder"),
    "absolute path": ({"image": "run:/etc/hostname.png"}, 403, "outside the run folder"),
    "window out of range": ({"window": 99}, 400, "window 99 is out of range"),
}


@pytest.mark.parametrize("case", list(BAD_EDITS))
def test_bad_edit_requests(server, tiny_run: Path, cache_dir: Path, case: str) -> None:
    change, code, words = BAD_EDITS[case]
    before = snapshot(tiny_run, cache_dir)
    status, body = post_json(server.url + "api/edit", {**_good(tiny_run), **change})
    assert status == code and words in body["error"], body
    assert snapshot(tiny_run, cache_dir) == before


def test_bad_uploads(server, tiny_run: Path, cache_dir: Path, explorer) -> None:
    before = snapshot(tiny_run, cache_dir)
    n_uploads = len(explorer.engine.uploads)
    status, body, _ = request(server.url + "api/upload", b"%PDF-1.4 not an image",
                              {"X-Filename": "notes.pdf"})  # fmt: skip
    err = json.loads(body)["error"]
    assert status == 400 and "'notes.pdf' is not an image" in err
    big = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(big, format="PNG")  # ~200 KB, over the test limit of 64 KiB
    status, body, _ = request(server.url + "api/upload", big.getvalue())
    assert status == 413 and "over the limit of 65,536" in json.loads(body)["error"]
    status, body, _ = request(server.url + "api/upload", b"")
    assert status == 400 and "empty" in json.loads(body)["error"]
    assert len(explorer.engine.uploads) == n_uploads
    assert snapshot(tiny_run, cache_dir) == before


def test_bad_pages_and_files(server, tiny_run: Path) -> None:
    (tiny_run.parent / "secret.png").write_bytes(first_image(tiny_run).read_bytes())
    before = snapshot(tiny_run)
    status, body, _ = request(server.url + "files?path=../secret.png")
    assert status == 403 and "outside the run folder" in body.decode()
    status, body, _ = request(server.url + "files?path=sae/cfg.json")
    assert status == 400 and "not an image file" in body.decode()
    status, body, _ = request(server.url + "feature/999")
    assert status == 404 and "unknown feature: latent 999" in body.decode()
    status, body, _ = request(server.url + "feature/abc")
    assert status == 404 and 'id="error"' in body.decode()
    status, body, _ = request(server.url + "api/jobs/nope")
    assert status == 404 and "unknown edit job" in json.loads(body)["error"]
    status, body, _ = request(server.url + "?sort=colour")
    assert status == 400 and "unknown sort" in body.decode()
    status, body, _ = request(server.url + "edit?strength=lots")
    assert status == 400 and "bad parameter strength" in body.decode()
    assert snapshot(tiny_run) == before


def test_other_host_headers_are_refused(server) -> None:
    status, _, _ = request(server.url, headers={"Host": "attacker.example"})
    assert status == 400


# ----- the command -------------------------------------------------------------------------------
@pytest.mark.parametrize("host", [None, "0.0.0.0"])
def test_cli_listens_on_loopback_and_warns_for_other_hosts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], explorer, tiny_run,
    host: str | None,
) -> None:  # fmt: skip
    """Nothing is bound for real but loopback: bind and the serving loop are stubbed."""
    import hsae.serve.explorer as E
    import hsae.serve.server as S

    bound: list[str] = []
    real_bind = S.bind

    def fake_bind(h: str, port: int):
        bound.append(h)
        return real_bind("127.0.0.1", 0)

    class Shared:  # the fixture's explorer, not closed by this command
        def __getattr__(self, name: str) -> Any:
            return getattr(explorer, name)

        def close(self) -> None:
            pass

    monkeypatch.setattr(E, "open_explorer", lambda opts: Shared())
    monkeypatch.setattr(S, "bind", fake_bind)
    monkeypatch.setattr(S, "serve_forever", lambda app, sock: None)
    argv = ["serve", str(tiny_run), "--port", "0"] + (["--host", host] if host else [])
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert bound == [host or "127.0.0.1"] and "hsae explorer of" in out
    assert ("warning: listening on 0.0.0.0" in err) == (host is not None)
