"""`hsae serve RUN`: a local feature explorer of a run folder, in the browser.

    hsae serve runs/demo                  # http://127.0.0.1:8765/
    hsae serve runs/demo --port 9000

Pages: the feature list (every SAE latent: search, sort by firing rate, AUROC per attribute or
measured edit effect), a feature card (its top images, where it fires on the K×K map, its AUROC
and effect bars, two edits), and an edit page (a run image or an upload; an SAE latent or
component, or the mean-difference / PCA direction; strength, rule, window and mode). Edits run
one at a time through the code path of `hsae edit` (same flags, same result bit for bit); each
download is a PNG with its parameters, and the `hsae edit` line that remakes it, in a JSON.

It listens on 127.0.0.1 only. `--host` binds another interface, with a warning: the explorer has
no login, and anyone who reaches the port can browse the run and run edits. Needs the `app`
extra (`pip install -e '.[app]'`: FastAPI and uvicorn).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hsae.cli.options import add_device_arguments

DEFAULT_PORT = 8765


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="local feature explorer of a run folder: browse features, edit images live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="run folder (sae/, acts/, data/, …) as hsae demo writes")
    p.add_argument(
        "--host",
        default=None,
        help="interface to listen on (default 127.0.0.1; others warn: no login)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument("--sae", type=Path, default=None, help="SAE folder (default RUN/sae)")
    p.add_argument("--store", type=Path, default=None, help="activation store (default RUN/acts)")
    p.add_argument(
        "--model",
        default=None,
        help="'toy', a diffusers folder or hub id (default: the store's model)",
    )
    p.add_argument("--t", type=float, default=None, help="inversion depth (default: store's)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: store's)")
    p.add_argument("--prompt", default=None, help="conditioning prompt (default: store's)")
    add_device_arguments(p)
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="inversion cache (default: $HSAE_CACHE or ~/.cache/hsae/inversions)",
    )
    p.add_argument("--no-cache", action="store_true", help="keep inversions in memory only")
    p.add_argument(
        "--stats-images",
        type=int,
        default=512,
        help="train images the feature figures are computed on (default 512)",
    )
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest upload (default 8)")
    p.add_argument(
        "--max-strength",
        type=float,
        default=20.0,
        help="largest |strength| an edit may ask for (default 20)",
    )
    p.set_defaults(func=run)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        from hsae.serve.app import create_app
        from hsae.serve.server import serve_forever
    except ImportError as e:
        print(f"hsae serve: error: {e.name or e} is missing; the explorer needs the app extra: "
              "pip install -e '.[app]'", file=sys.stderr)  # fmt: skip
        return 2
    from hsae.serve.engine import EngineSettings
    from hsae.serve.explorer import ServeOptions, open_explorer
    from hsae.serve.server import LOCAL_HOST, LOOPBACK_NAMES, bind, is_loopback, url_of

    host = args.host or LOCAL_HOST
    if args.host is not None and not is_loopback(host):
        print(f"warning: listening on {host}, not only on this machine: the explorer has no "
              "login, so anyone who reaches the port can browse the run and run edits",
              file=sys.stderr)  # fmt: skip
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    settings = EngineSettings(max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                              max_strength=args.max_strength)  # fmt: skip
    opts = ServeOptions(run=args.run, sae=args.sae, store=args.store, model=args.model, t=args.t,
                        steps=args.steps, prompt=args.prompt, device=args.device,
                        dtype=args.dtype, cache_dir=args.cache_dir, no_cache=args.no_cache,
                        stats_images=args.stats_images, engine=settings)  # fmt: skip
    explorer = open_explorer(opts)
    trusted = list(LOOPBACK_NAMES) if is_loopback(host) else None
    sock = bind(host, args.port)
    print(f"hsae explorer of {args.run}: {url_of(sock)}  (Ctrl-C stops it)", flush=True)
    try:
        serve_forever(create_app(explorer, trusted), sock)
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then may re-raise it
        pass
    finally:
        explorer.close()
        sock.close()
    return 0
