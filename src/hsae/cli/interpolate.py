"""`hsae interpolate`: interpolation between two images in SAE code space."""

from __future__ import annotations

import argparse
from pathlib import Path

from hsae.cli.options import add_setup_arguments
from hsae.editing import interpolate as interpolate_stage
from hsae.editing.interpolate import Z_INTERP, format_table, interpolate_pair, write_outputs
from hsae.editing.setup import load_images, load_setup, warn_timestep


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interpolate",
        help="interpolate two images in SAE space (α_s = (1−s)α_a + sα_b) and resume",
        description=interpolate_stage.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--a", type=Path, required=True, help="first image")
    p.add_argument("--b", type=Path, required=True, help="second image")
    p.add_argument("--frames", type=int, default=8, help="frames including both ends")
    p.add_argument("--z-interp", choices=Z_INTERP, default="slerp", help="z_t of each frame")
    p.add_argument("--h-baseline", action="store_true", help="add a raw-h interpolation row")
    add_setup_arguments(p, edit_options=False)
    p.add_argument("--out", type=Path, default=Path("runs/interpolate"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    setup = load_setup(args)
    images, _ = load_images([args.a, args.b], setup.backbone.image_size)
    inv = setup.invert(images)
    warn_timestep(setup, inv)
    k_resolved = setup.threshold_k(inv)  # recorded; the codes stay raw unless asked
    k = k_resolved if args.threshold_codes else None
    res = interpolate_pair(
        setup.backbone,
        setup.sae,
        inv,
        args.frames,
        k,
        args.window,
        setup.prompt,
        args.z_interp,
        args.h_baseline,
        setup.progress,
    )
    info = {
        **setup.settings(),
        "sae": str(args.sae),
        "a": str(args.a),
        "b": str(args.b),
        "z_interp": args.z_interp,
        "window": args.window,
        "timestep": inv.timestep,
    }
    doc = write_outputs(args.out, res, images, info)
    print(format_table(doc), end="")
    print(f"wrote {args.out / 'interpolate.json'}, grid.png, interpolate.gif, table.md")
    return 0
