"""The explorer's web app: FastAPI routes over a run folder, pages rendered from jinja2 templates.

Pages: `/` the feature list (search, sort), `/feature/J` a feature card, `/edit` the edit page.
API: `/api/upload` (the raw image bytes as the body), `/api/edit` (a JSON request; answers a job
id at once), `/api/jobs/ID` (its status, long-polled with `wait`), `/api/jobs/ID/NAME` (the
input, unedited, edited and diff PNGs and params.json). `/files?path=` serves the run's images;
every path is checked to lie inside the run folder. A bad request gets one message (JSON under
/api/, a page elsewhere) and changes nothing.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any
from urllib.parse import unquote

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from hsae.serve.catalog import SORTS, Feature
from hsae.serve.engine import PNG_NAMES
from hsae.serve.explorer import Explorer
from hsae.serve.run import FEATURES_JSON, InputError

STATIC = {"style.css": "text/css", "app.js": "text/javascript"}
CARD_SIZES = (0.5, 1.0)  # the card's two edits: first-step ‖h̃ − h‖ / ‖h‖ (editbench's axis)
PICKER_IMAGES = 200  # run images offered in the edit page's picker


def _env() -> Environment:
    env = Environment(loader=PackageLoader("hsae.serve", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))  # fmt: skip
    env.filters["num"] = _num
    return env


def _num(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def create_app(ex: Explorer, trusted_hosts: list[str] | None = None) -> FastAPI:
    """The app; `trusted_hosts` (set when bound to loopback) refuses other Host headers."""
    app = FastAPI(title="hsae explorer", docs_url=None, redoc_url=None, openapi_url=None)
    if trusted_hosts:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=trusted_hosts)
    env = _env()

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = env.get_template(name).render(summary=ex.summary(), **ctx)
        return HTMLResponse(html, status_code=status)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return page("error.html.j2", exc.status, message=str(exc))

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
        msg = f"bad parameter {where or '?'}: {first.get('msg', 'invalid')}"
        return await _input_error(request, InputError(msg))

    _pages(app, ex, page)
    _api(app, ex)
    return app


def _pages(app: FastAPI, ex: Explorer, page: Any) -> None:
    cat = ex.catalog

    @app.get("/", response_class=HTMLResponse)
    def feature_list(q: str = "", sort: str = "firing", attribute: str = "", limit: int = 200):
        hits = cat.query(q, sort, attribute or None)
        return page("list.html.j2", features=hits[: max(limit, 1)], n_hits=len(hits), q=q,
                    sort=sort, sorts=SORTS, attribute=attribute,
                    attributes=cat.attribute_names)  # fmt: skip

    @app.get("/feature/{latent}", response_class=HTMLResponse)
    def feature_card(latent: str):
        f = cat.get(_latent(latent))
        return page("card.html.j2", f=f, attributes=cat.attribute_names,
                    top=_top_images(ex, f.latent), edits=_card_edits(ex, f),
                    components=_components(ex, f.latent))  # fmt: skip

    @app.get("/edit", response_class=HTMLResponse)
    def edit_page(
        image: str = "",
        feature: str = "latent:0",
        strength: float = 2.0,
        rule: str = "add",
        window: str = "all",
        mode: str = "error_preserving",
    ):
        pca = [f"pca:{i}" for i in range(ex.engine.n_pca)]
        suggestions = [f"mean_diff:{a}" for a in cat.attribute_names] + pca
        form = {"image": image, "feature": feature, "strength": strength, "rule": rule,
                "window": window, "mode": mode}  # fmt: skip
        return page("edit.html.j2", form=form, images=_picker(ex), suggestions=suggestions,
                    n_window=ex.engine.n_window, max_strength=ex.engine.settings.max_strength,
                    max_upload=ex.engine.settings.max_upload_bytes)  # fmt: skip

    @app.get("/files")
    def files(path: str = ""):
        return FileResponse(ex.run.image_file(path))

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:
            raise InputError(f"no static file {name!r}", 404)
        text = (resources.files("hsae.serve") / "static" / name).read_text(encoding="utf-8")
        return Response(text, media_type=STATIC[name])


def _api(app: FastAPI, ex: Explorer) -> None:
    eng, jobs = ex.engine, ex.jobs

    @app.get("/api/features")
    def features(q: str = "", sort: str = "firing", attribute: str = ""):
        return [_feature_json(f) for f in ex.catalog.query(q, sort, attribute or None)]

    @app.get("/api/map/{latent}")
    def firing_map(latent: str):
        from hsae.report.firing import map_png

        m = ex.catalog.firing_map(ex.catalog.get(_latent(latent)).latent)
        if m is None:
            raise InputError(f"latent {latent} fires on none of the stats rows", 404)
        return Response(map_png(m), media_type="image/png")

    @app.post("/api/upload")
    async def upload(request: Request):
        limit = eng.settings.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            eng.check_upload_size(int(declared))
        body, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            eng.check_upload_size(n)
            body.append(chunk)
        name = unquote(request.headers.get("x-filename", "upload"))
        ref = await run_in_threadpool(eng.add_upload, b"".join(body), name)
        return {"image": ref, "name": eng.image_name(ref)}

    @app.post("/api/edit", status_code=202)
    async def edit(request: Request):
        try:
            raw = await request.json()
        except ValueError:
            raise InputError("the edit request must be JSON") from None
        return jobs.submit(eng.validate(raw))

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str, wait: float = 0.0, seen: str = ""):
        return jobs.wait(job_id, seen or None, wait) if wait > 0 else jobs.status(job_id)

    @app.get("/api/jobs/{job_id}/{name}")
    def job_file(job_id: str, name: str, download: bool = False):
        job = jobs.job(job_id)
        if job.state != "done":
            raise InputError(f"edit {job_id} is {job.state}, not done", 409)
        out = job.result
        stem = f"edit-{job_id}-{out.request.feature.replace(':', '-')}"
        if name == "params.json":
            head = {"Content-Disposition": f'attachment; filename="{stem}.json"'}
            return JSONResponse(out.params, headers=head if download else None)
        key = name.removesuffix(".png")
        if key not in PNG_NAMES or not name.endswith(".png"):
            raise InputError(f"no file {name!r}: expected {', '.join(PNG_NAMES)}.png or "
                             "params.json", 404)  # fmt: skip
        head = {"Content-Disposition": f'attachment; filename="{stem}-{key}.png"'}
        return Response(out.pngs[key], media_type="image/png", headers=head if download else None)


def _latent(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"unknown feature {text!r}: features are latent numbers", 404) from None


def _feature_json(f: Feature) -> dict[str, Any]:
    best = f.best_attribute
    return {"latent": f.latent, "firing": f.firing, "images": f.images, "mean": f.mean,
            "abar": f.abar, "auroc": f.auroc, "best_attribute": best[0] if best else None,
            "effect": f.effect, "effects": [vars(e) for e in f.effects]}  # fmt: skip


def _top_images(ex: Explorer, latent: int) -> list[dict[str, Any]]:
    st = ex.setup.store
    return [
        {"row": row, "id": st.ids[row], "path": ex.run.image_of_id(st.ids[row]), "score": score}
        for row, score in ex.catalog.top_rows(latent)
    ]


def _card_edits(ex: Explorer, f: Feature) -> list[dict[str, Any]]:
    """The card's two edits: its top image at the strengths giving CARD_SIZES at the first step."""
    from hsae.editing.selection import store_h

    top = next((t for t in _top_images(ex, f.latent) if t["path"]), None)
    if top is None:
        return []
    h = store_h(ex.setup.store, np.array([top["row"]]))
    feat = ex.engine.editor.make_feature(f.latent, h, "add")
    unit = float(feat.delta(h).norm() / h.norm().clamp_min(1e-12))
    top_s = ex.engine.settings.max_strength
    out = []
    for size in CARD_SIZES:
        s = max(-top_s, min(top_s, round(size / unit, 3) if unit > 1e-12 else 0.0))
        req = {"image": f"run:{top['path']}", "feature": f"latent:{f.latent}", "strength": s,
               "rule": "add", "window": "all", "mode": "error_preserving"}  # fmt: skip
        out.append({"size": size, "request": req, "image": top["id"]})
    return out


def _components(ex: Explorer, latent: int) -> list[dict[str, Any]]:
    """features.json's components of this latent (top components, best per attribute)."""
    doc = ex.run.read_doc(FEATURES_JSON) or {}
    out = [dict(c, why=f"top component, rank {c.get('rank')}")
           for c in doc.get("top_components") or [] if c.get("latent") == latent]  # fmt: skip
    for name, res in (doc.get("attributes") or {}).items():
        best = (res or {}).get("best") or {}
        if best.get("latent") == latent:
            out.append(dict(best, why=f"best component for {name}"))
    return out


def _picker(ex: Explorer) -> list[dict[str, str]]:
    """Run images for the picker: test split first, then val, then train."""
    st = ex.setup.store
    if st is None or ex.run.data_dir is None:
        return []
    splits = st.splits or [None] * len(st)
    order = sorted(range(len(st)), key=lambda i: ({2: 0, 1: 1}.get(splits[i] or 0, 2), i))
    out = []
    for i in order:
        rel = ex.run.image_of_id(st.ids[i])
        if rel is not None:
            split = {0: "train", 1: "val", 2: "test"}.get(splits[i] or 0, "")
            out.append({"ref": f"run:{rel}", "label": st.ids[i], "split": split})
        if len(out) >= PICKER_IMAGES:
            break
    return out
