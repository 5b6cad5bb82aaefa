"""`hsae edit`: edit images through H-space with an SAE feature, under a rule and a window.

    hsae edit --image face.png --sae runs/x/sae --latent 233 --strength 0 2 4
    hsae edit --image face.png --sae runs/x/sae --component 17:3 --kappa 0 750 --paper

Units: `--latent J` (latent J at all its tokens, or `--tokens top:N` / `--tokens 3,17,40`) or
`--component C:J` (one (token, latent); several are scaled together under the scale rule).
Rules: `add` (α + s·ā, ā its mean activation where it fires: a silent feature can be switched on;
strengths `--strength`) or `scale` (the paper's α·κ, eq. 10; strengths `--kappa`, implied by it).
Defaults are what `hsae editbench` measured to edit (docs/editing.md): add, every resumed step
(`--window all`), error-preserving (the SAE's reconstruction error kept, so strength 0 / κ = 1 is
the unedited image bit for bit). `--paper` is the exact Algorithm 2: one component, scale, one
step, h replaced by the SAE's reconstruction. Codes are raw unless `--threshold-codes`; a note
says when an edited component is below the image's τ (eq. 9) at any step of the window.

Outputs in --out: one PNG per image and strength, grid.png, diff.png, edit.json and table.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hsae.cli.options import add_setup_arguments
from hsae.diffusion.inversion_cache import InversionCache
from hsae.editing.edit import (
    edit_batch,
    format_edit_table,
    parse_mask,
    warn_inactive,
    write_edit_outputs,
)
from hsae.editing.editor import DEFAULT_RULE, PAPER, feature_batch
from hsae.editing.intervene import parse_component
from hsae.editing.setup import load_images, load_setup, warn_timestep
from hsae.editing.units import RULES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edit",
        help="edit images with an SAE latent or component (add / scale rule, step window)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--image", type=Path, action="extend", nargs="+", required=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--latent", type=int, help="latent J at --tokens (default: all tokens)")
    what.add_argument(
        "--component",
        action="extend",
        nargs="+",
        metavar="C:J|k",
        help="token:latent, or the paper's flat index k = C·L + J",
    )
    p.add_argument("--tokens", default="all", help="latent unit: all, top:N (train), or i,j,…")
    p.add_argument("--rule", choices=RULES, default=None, help="add (default) or scale")
    p.add_argument("--strength", type=float, action="extend", nargs="+", help="add rule: s")
    p.add_argument("--kappa", type=float, action="extend", nargs="+", help="scale rule: κ")
    p.add_argument("--paper", action="store_true", help="Algorithm 2 exactly (see above)")
    add_setup_arguments(p)
    p.add_argument("--out", type=Path, default=Path("runs/edit"), help="output folder")
    p.set_defaults(func=run, window=None, mode=None)


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Rule, strengths, window and mode from the flags; --paper fixes the Algorithm 2 ones."""
    rule = args.rule or ("scale" if args.kappa else DEFAULT_RULE)
    if args.paper:
        if args.latent is not None:
            raise ValueError(
                "--paper edits components (Algorithm 2): use --component, not --latent"
            )
        if args.rule == "add":
            raise ValueError("--paper uses the scale rule; drop --rule add")
        rule = "scale"
    strengths = args.kappa if rule == "scale" else args.strength
    if not strengths:
        flag = "--kappa" if rule == "scale" else "--strength"
        raise ValueError(f"the {rule} rule needs {flag} values")
    if (rule == "scale" and args.strength) or (rule == "add" and args.kappa):
        raise ValueError("--strength goes with the add rule, --kappa with the scale rule")
    window = args.window if args.window is not None else (PAPER["window"] if args.paper else "all")
    mode = args.mode or (PAPER["mode"] if args.paper else "error_preserving")
    return {
        "rule": rule,
        "strengths": [float(s) for s in strengths],
        "window": window,
        "mode": mode,
    }


def parse_tokens(spec: str, stats: Any, latent: int, m: int) -> list[int] | None:
    if spec == "all":
        return None
    if spec.startswith("top:"):
        n = int(spec[4:])
        if stats is None:
            raise ValueError(
                "--tokens top:N ranks tokens on the SAE's training store: pass --store"
            )
        return stats.top_tokens(latent, n)
    try:
        toks = [int(t) for t in spec.split(",")]
    except ValueError:
        raise ValueError(f"--tokens {spec!r}: expected all, top:N or i,j,…") from None
    bad = [t for t in toks if not 0 <= t < m]
    if bad:
        raise ValueError(f"--tokens {spec!r}: token {bad[0]} outside 0..{m - 1}")
    return toks


def run(args: argparse.Namespace) -> int:
    opts = resolve_options(args)
    setup = load_setup(args)
    images, names = load_images(args.image, setup.backbone.image_size)
    mask = parse_mask(args.mask, setup.sae.cfg.spatial)
    inv = setup.invert(images)
    warn_timestep(setup, inv)
    k = setup.threshold_k(inv)
    k_edit = k if args.threshold_codes else None
    info: dict[str, Any] = {
        **setup.settings(),
        "sae": str(args.sae),
        "images": [str(p) for p in args.image],
        "rule": opts["rule"],
        "mode": opts["mode"],
        "window": opts["window"],
        "mask": args.mask,
        "codes": "thresholded (eq. 9)" if args.threshold_codes else "raw",
        "timestep": inv.timestep,
        "cache": _cache_info(setup.cache),
    }
    if args.component and opts["rule"] == "scale" and (len(args.component) > 1 or mask is not None):
        res = _components_scale(args, setup, inv, opts, k_edit, mask, info)
        warn_inactive(
            res, [parse_component(c, setup.sae) for c in args.component], setup.sae, k, names
        )
    else:
        if mask is not None:
            raise ValueError("--mask goes with --component and the scale rule")
        res = _feature(args, setup, inv, opts, k, k_edit, names, info)
    doc = write_edit_outputs(args.out, res, images, names, info)
    print(format_edit_table(doc), end="")
    print(f"wrote {args.out / 'edit.json'}, {args.out / 'table.md'}, grid.png, diff.png")
    return 0


def _components_scale(args, setup, inv, opts, k_edit, mask, info) -> Any:
    components = [parse_component(c, setup.sae) for c in dict.fromkeys(args.component)]
    info["components"] = [str(c) for c in components]
    info["flat_indices"] = [c.flat_index(setup.sae.cfg.n_latents) for c in components]
    return edit_batch(
        setup.backbone, setup.sae, inv, components, opts["strengths"], opts["mode"], k_edit,
        mask, opts["window"], setup.prompt, progress=setup.progress,
    )  # fmt: skip


def _feature(args, setup, inv, opts, k, k_edit, names, info) -> Any:
    from hsae.diffusion.invert import capture_h
    from hsae.editing.editor import HSpaceEditor
    from hsae.editing.intervene import n_tokens

    editor = HSpaceEditor(setup.backbone, setup.sae, setup.t, setup.steps, setup.prompt,
                          setup.store, k_edit)  # fmt: skip
    h = capture_h(setup.backbone, inv, setup.prompt).float()
    if args.component:
        comp = parse_component(args.component[0], setup.sae)
        feat = editor.make_feature(f"{comp.token}:{comp.latent}", h, opts["rule"])
        info["components"] = [str(comp)]
        info["flat_indices"] = [comp.flat_index(setup.sae.cfg.n_latents)]
    else:
        stats = _stats(setup) if args.tokens.startswith("top:") else None
        toks = parse_tokens(args.tokens, stats, args.latent, n_tokens(setup.sae))
        feat = editor.make_feature(args.latent, h, opts["rule"], toks)
        info["components"] = [feat.name]
        info["latent"], info["tokens"] = args.latent, args.tokens
    res, below = feature_batch(setup.backbone, inv, feat, opts["strengths"], opts["mode"],
                               opts["window"], setup.prompt, k, setup.progress)  # fmt: skip
    info["feature"] = feat.describe()
    info["size_first_step"] = res.size.tolist()
    info["size_sum_window"] = res.size_sum.tolist()
    for b, name in enumerate(names):
        if bool(below[b]):
            print(f"note: {name}: {feat.name} is below the image's τ (k={k}) at a step of the "
                  f"window{'; edited anyway (raw codes)' if k_edit is None else ''}",
                  file=sys.stderr)  # fmt: skip
    return res


def _stats(setup: Any) -> Any:
    import numpy as np

    from hsae.editing.selection import code_stats

    if setup.store is None:
        raise ValueError("--tokens top:N ranks tokens on the SAE's training store: pass --store")
    rows = np.asarray(setup.store.indices_for_split("train"))[:512]
    return code_stats(setup.sae, setup.store, rows)


def _cache_info(cache: InversionCache | None) -> dict[str, Any] | None:
    if cache is None:
        return None
    return {"dir": str(cache.root), "hits": cache.hits, "misses": cache.misses}
