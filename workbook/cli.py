"""``python -m workbook`` (or ``retrylib-workbook``): run the notebooks, write the reports.

::

    python -m workbook run [--params FILE] [--only 01,03] [--output-dir reports]

Thin, as papermill's CLI is: it gathers the arguments and calls :func:`workbook.runner.run_workbook`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _run(args: argparse.Namespace) -> int:
    from workbook.runner import run_workbook

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    return run_workbook(params=args.params, only=only, output_dir=args.output_dir,
                        cell_timeout=args.cell_timeout)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbook",
                                description="The retrylib verification workbook.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute the notebooks with papermill and export the reports")
    r.add_argument("--params", default="params/default.yaml", help="papermill parameter file (YAML)")
    r.add_argument("--only", default=None, help="a subset of notebooks by number, e.g. 01,03")
    r.add_argument("--output-dir", default="reports", help="where the reports go")
    r.add_argument("--cell-timeout", type=float, default=None, help="seconds per cell (default: from params)")
    r.set_defaults(func=_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from retrylib.errors import ConfigError, ServerStartError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, ServerStartError) as exc:
        print(f"workbook: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
