"""`hsae`: one sub-command per stage of the H-space SAE method.

Every command module has `register(sub)`, which adds its parser with `func(args) -> int` in the
parser's defaults; `build_parser` calls them in the order below, so `hsae --help` lists the
stages in the order of the method.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "hsae.cli.data",
    "hsae.cli.train",
    "hsae.cli.demo",
    "hsae.cli.eval",
    "hsae.cli.edit",
    "hsae.cli.features",
    "hsae.cli.editbench",
    "hsae.cli.counterfactual",
    "hsae.cli.interpolate",
    "hsae.cli.probe",
    "hsae.cli.table2",
    "hsae.cli.report",
    "hsae.cli.serve",
    "hsae.cli.toy",
    "hsae.cli.store",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsae", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The handler is not a setting: commands record vars(args) in their JSON outputs.
    func = vars(args).pop("func")
    try:
        return int(func(args))
    except (OSError, ValueError, KeyError) as e:
        # Input errors end with one clear line, not a traceback.
        print(f"hsae {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
