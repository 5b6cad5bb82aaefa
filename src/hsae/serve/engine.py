"""Edits for the explorer, made by the code path of `hsae edit`, so they match it bit for bit.

The model, SAE, store and inversion cache come from `editing.setup.load_setup` (what `hsae edit`
loads from the same flags); an image is read by `data.images.load_image`, inverted by
`EditSetup.invert` (the on-disk inversion cache) and kept in memory per image; the feature is made
by `HSpaceEditor.make_feature` and the edit run by `editor.feature_batch` with one strength, as
`hsae edit --latent J --strength S` (or `--component C:J`, `--kappa K`) does. Every edit's
parameters JSON carries that `hsae edit` command line. Mean-difference and PCA directions of raw
h (the benchmark's baselines) go through the same `feature_batch`.

`validate` turns a request into an `EditRequest` or one `InputError` message before anything
runs; uploads are checked (size, decodable image) and kept in memory, never written to the run.
"""

from __future__ import annotations

import io
import math
import re
import shlex
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hsae.data.images import BadImageError, load_image
from hsae.diffusion.invert import Inversion, capture_h, ddim_grid
from hsae.editing.edit import heatmaps, kappa_label
from hsae.editing.editor import HSpaceEditor, feature_batch
from hsae.editing.intervene import parse_component
from hsae.editing.selection import pca_basis, store_h
from hsae.editing.units import EDIT_MODES, RULES, EditFeature
from hsae.serve.catalog import Catalog
from hsae.serve.run import InputError, RunFolder, shown
from hsae.utils.jsonable import jsonable
from hsae.utils.metrics import pixel_metrics
from hsae.utils.viz import to_uint8

KINDS = ("latent", "component", "mean_diff", "pca")
PNG_NAMES = ("input", "unedited", "edited", "diff")
MEMO = 64  # images (and their inversions) kept in memory


@dataclass
class EngineSettings:
    max_upload_bytes: int = 8 << 20
    max_strength: float = 20.0
    pca_components: int = 16
    setup_argv: list[str] = field(default_factory=list)  # flags that rebuild the setup


@dataclass(frozen=True)
class EditRequest:
    image: str  # "run:<path inside the run folder>" or "upload:<sha256>"
    feature: str  # latent:J, component:C:J, mean_diff:ATTR or pca:I
    strength: float
    rule: str
    window: int | str
    mode: str

    @property
    def kind(self) -> str:
        return self.feature.split(":", 1)[0]


@dataclass
class EditOutcome:
    request: EditRequest
    pngs: dict[str, bytes]
    params: dict[str, Any]


def png_bytes(image: Tensor) -> bytes:
    """(3, H, W) in [-1, 1] as PNG bytes, quantised exactly as `hsae edit`'s PNGs."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image[None].float())[0]).save(buf, format="PNG")
    return buf.getvalue()


class EditEngine:
    def __init__(
        self, run: RunFolder, setup: Any, catalog: Catalog, settings: EngineSettings
    ) -> None:
        self.run, self.setup, self.catalog, self.settings = run, setup, catalog, settings
        bb = setup.backbone
        self.n_window = ddim_grid(bb, setup.steps).index_for(setup.t) + 1
        # Raw codes, as `hsae edit` without --threshold-codes; ā from the store, computed once.
        self.editor = HSpaceEditor(bb, setup.sae, setup.t, setup.steps, setup.prompt,
                                   setup.store, None)  # fmt: skip
        self.uploads: OrderedDict[str, tuple[str, Tensor]] = OrderedDict()
        self._inversions: OrderedDict[str, Inversion] = OrderedDict()
        self._images: OrderedDict[str, Tensor] = OrderedDict()
        self._directions: dict[str, Tensor] = {}
        self._pca: Any = None
        self._lock = threading.RLock()  # uploads arrive on request threads, edits on the worker

    def warm(self) -> None:
        """Compute ā (the add rule's step, from the store) now rather than in the first edit."""
        if self.setup.store is not None:
            self.editor.abar(torch.zeros(1, *self.setup.backbone.hspace_shape()))

    # ----- requests -----------------------------------------------------------------------------
    def validate(self, raw: Any) -> EditRequest:
        if not isinstance(raw, dict):
            raise InputError("the edit request must be a JSON object")
        image = raw.get("image")
        if not isinstance(image, str):
            raise InputError("pick an image: 'image' must be run:<path> or upload:<id>")
        self.image_path(image)  # refuses paths outside the run folder and unknown uploads
        rule = str(raw.get("rule", "add"))
        if rule not in RULES:
            raise InputError(f"unknown rule {rule!r}; expected one of {', '.join(RULES)}")
        mode = str(raw.get("mode", "error_preserving"))
        if mode not in EDIT_MODES:
            raise InputError(f"unknown mode {mode!r}; expected one of {', '.join(EDIT_MODES)}")
        feature = self.check_feature(str(raw.get("feature", "")))
        return EditRequest(image, feature, self._strength(raw.get("strength")), rule,
                           self._window(raw.get("window", "all")), mode)  # fmt: skip

    def _strength(self, value: Any) -> float:
        try:
            s = float(value)
        except (TypeError, ValueError):
            raise InputError(f"strength must be a number, got {value!r}") from None
        top = self.settings.max_strength
        if not math.isfinite(s) or abs(s) > top:
            raise InputError(f"strength {value!r} is out of range: it must lie in "
                             f"[-{top:g}, {top:g}] (serve --max-strength)")  # fmt: skip
        return s

    def _window(self, value: Any) -> int | str:
        n = self.n_window
        if str(value).lower() == "all":
            return "all"
        try:
            w = int(str(value))
        except ValueError:
            raise InputError(f"window must be 'all' or a step count, got {value!r}") from None
        if not 1 <= w <= n:
            raise InputError(f"window {w} is out of range: 1..{n} resumed steps, or 'all'")
        return w

    def check_feature(self, spec: str) -> str:
        """The canonical spec of a feature, or InputError naming what exists."""
        kind, _, rest = spec.partition(":")
        try:
            if kind == "latent":
                return f"latent:{self.catalog.get(int(rest)).latent}"
            if kind == "component":
                c = parse_component(rest, self.setup.sae)
                return f"component:{c.token}:{c.latent}"
            if kind == "mean_diff" and rest in self.catalog.attribute_names:
                return spec
            if kind == "pca" and 0 <= int(rest) < self.n_pca:
                return f"pca:{int(rest)}"
        except ValueError as e:
            if isinstance(e, InputError):
                raise
            if kind == "component":
                raise InputError(f"unknown feature {spec!r}: {e}") from None
        attrs = ", ".join(self.catalog.attribute_names) or "none (the store has no labels)"
        raise InputError(
            f"unknown feature {spec!r}: expected latent:J (0..{self.catalog.n_latents - 1}), "
            f"component:C:J, mean_diff:ATTRIBUTE ({attrs}) or pca:I (0..{self.n_pca - 1})"
        )

    @property
    def n_pca(self) -> int:
        return min(self.settings.pca_components, max(len(self.catalog.rows) - 1, 0))

    # ----- images -------------------------------------------------------------------------------
    def image_path(self, ref: str) -> Path | None:
        """The file of a run image (checked to lie inside the run), None for a known upload."""
        kind, _, rest = ref.partition(":")
        if kind == "run":
            return self.run.image_file(rest)
        if kind == "upload":
            with self._lock:
                if rest in self.uploads:
                    return None
            raise InputError(f"unknown upload {rest!r} (the server keeps the last {MEMO}); "
                             "upload the image again", 404)  # fmt: skip
        raise InputError(f"image {ref!r}: expected run:<path inside the run folder> or upload:<id>")

    def check_upload_size(self, n: int) -> None:
        limit = self.settings.max_upload_bytes
        if n > limit:
            raise InputError(f"the upload is {n:,} bytes or more, over the limit of {limit:,} "
                             "(serve --max-upload-mb); nothing was kept", 413)  # fmt: skip

    def add_upload(self, data: bytes, filename: str = "upload") -> str:
        """Check and keep an uploaded image in memory; returns its ref, upload:<sha256>."""
        import hashlib

        self.check_upload_size(len(data))
        if not data:
            raise InputError("the upload is empty: choose an image file")
        size = self.setup.backbone.image_size
        # `hsae edit --image FILE` reads a file: the bytes go through the same load_image, from a
        # private temporary file that is removed at once (nothing is written into the run).
        with tempfile.TemporaryDirectory(prefix="hsae-upload-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            try:
                x = load_image(path, size)
            except BadImageError as e:
                why = str(e).replace(str(path), "the upload")
                raise InputError(f"the upload {filename!r} is not an image the model can read: "
                                 f"{why}") from None  # fmt: skip
        key = hashlib.sha256(data).hexdigest()
        with self._lock:
            self.uploads[key] = (Path(filename).name or "upload", x)
            _trim(self.uploads)
        return f"upload:{key}"

    def image_name(self, ref: str) -> str:
        kind, _, rest = ref.partition(":")
        if kind == "upload":
            with self._lock:
                return self.uploads[rest][0]
        return Path(rest).name

    def _tensor(self, ref: str) -> Tensor:
        """(1, 3, S, S) in [-1, 1], as `hsae edit`'s load_images reads the file."""
        kind, _, rest = ref.partition(":")
        if kind == "upload":
            with self._lock:
                return self.uploads[rest][1][None]
        if ref not in self._images:
            path = self.image_path(ref)
            assert path is not None
            self._images[ref] = load_image(path, self.setup.backbone.image_size)[None]
            _trim(self._images)
        return self._images[ref]

    def _invert(self, ref: str, x: Tensor) -> Inversion:
        if ref not in self._inversions:
            self._inversions[ref] = self.setup.invert(x)
            _trim(self._inversions)
        self._inversions.move_to_end(ref)
        return self._inversions[ref]

    # ----- the edit (runs in the explorer's one worker thread) -----------------------------------
    @torch.no_grad()
    def run_edit(self, req: EditRequest) -> EditOutcome:
        t0 = time.perf_counter()
        setup, bb = self.setup, self.setup.backbone
        x = self._tensor(req.image)
        inv = self._invert(req.image, x)
        k = setup.threshold_k(inv)
        h = capture_h(bb, inv, setup.prompt).float()
        feat = self.make_feature(req, h)
        res, below = feature_batch(bb, inv, feat, [req.strength], req.mode, req.window,
                                   setup.prompt, k)  # fmt: skip
        assert res.reference is not None  # feature_batch resumes the unedited row too
        edited, ref = res.images[0, 0].float(), res.reference[0].float()
        diff = heatmaps((edited - ref)[None])[0]
        pngs = {n: png_bytes(v) for n, v in zip(PNG_NAMES, (x[0], ref, edited, diff), strict=True)}
        params = {
            "format": "hsae-serve-edit-v1",
            "image": req.image,
            "image_name": self.image_name(req.image),
            "feature_spec": req.feature,
            "feature": feat.describe(),
            "strength": req.strength,
            "strength_means": _meaning(feat),
            "rule": feat.rule,
            "window": req.window,
            "mode": req.mode,
            "codes": "raw",
            **setup.settings(),
            "timestep": inv.timestep,
            "delta_neurons": int(res.delta[0, 0]),
            "n_neurons": res.n_neurons,
            "size_first_step": float(res.size[0, 0]),
            "size_sum_window": float(res.size_sum[0, 0]),
            "below_tau": bool(below[0]),
            "pixel_vs_unedited": pixel_metrics(edited, ref),
            "hsae_edit": self.cli_equivalent(req),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return EditOutcome(req, pngs, jsonable(params))

    def make_feature(self, req: EditRequest, h: Tensor) -> EditFeature:
        kind, _, rest = req.feature.partition(":")
        if kind == "latent":
            return self.editor.make_feature(int(rest), h, req.rule, None)
        if kind == "component":
            return self.editor.make_feature(rest, h, req.rule)
        from hsae.editing.units import direction_feature

        d = self.direction(req.feature)
        return direction_feature(d, req.feature, 1, {"scaled_to": "mean ‖h‖ of the stats rows"})

    def direction(self, spec: str) -> Tensor:
        """A unit direction of raw h scaled to the mean ‖h‖ of the catalog's train rows, so a
        strength s moves h by about s·‖h‖ (the benchmark's size axis)."""
        if spec not in self._directions:
            kind, _, rest = spec.partition(":")
            store, rows = self.setup.store, self.catalog.rows
            if kind == "pca":
                if self._pca is None:
                    self._pca = pca_basis(store, rows, self.n_pca)
                d = self._pca.components[int(rest)]
            else:
                d = _mean_difference(store, rows, rest)
            h_norm = float(store_h(store, rows).flatten(1).norm(dim=1).mean())
            self._directions[spec] = (d / d.norm().clamp_min(1e-12) * h_norm).float()
        return self._directions[spec]

    def cli_equivalent(self, req: EditRequest) -> dict[str, Any]:
        """The `hsae edit` argv that makes this edit (None for directions: it has no flag)."""
        kind, _, rest = req.feature.partition(":")
        if kind not in ("latent", "component"):
            return {"argv": None, "note": "hsae edit has no direction flag; in Python: "
                    "HSpaceEditor(...).edit(image, direction_tensor, strength)"}  # fmt: skip
        path = self.image_path(req.image)
        image = shown(path) if path is not None else self.image_name(req.image)
        unit = ["--latent", rest] if kind == "latent" else ["--component", rest]
        flag = "--kappa" if req.rule == "scale" else "--strength"
        argv = ["edit", "--image", image, *self.settings.setup_argv, *unit,
                flag, repr(req.strength), "--rule", req.rule, "--window", str(req.window),
                "--mode", req.mode, "--out", "serve-edit"]  # fmt: skip
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(image).stem) or "image"  # as load_images
        png = f"{stem}_kappa{kappa_label(req.strength)}.png"
        return {"argv": argv, "command": "hsae " + shlex.join(argv), "edited_png": png}


def _mean_difference(store: Any, rows: np.ndarray, attribute: str) -> Tensor:
    names = list(store.attribute_names)
    y = np.asarray(store.attributes)[rows, names.index(attribute)] > 0
    if y.all() or not y.any():
        raise InputError(f"mean_diff:{attribute}: the stats rows hold one class only")
    h = store_h(store, rows).double()
    return (h[torch.as_tensor(y)].mean(0) - h[torch.as_tensor(~y)].mean(0)).float()


def _meaning(feat: EditFeature) -> str:
    if feat.unit == "direction":
        return "s: h + s·d, d scaled to the mean ‖h‖ (s ≈ ‖h̃ − h‖ / ‖h‖)"
    return "κ: α → κ·α (scale rule)" if feat.rule == "scale" else "s: α → α + s·ā (add rule)"


def _trim(d: OrderedDict) -> None:
    while len(d) > MEMO:
        d.popitem(last=False)
