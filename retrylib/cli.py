"""``retrylib``: the command line. Thin: it gathers arguments and calls the library.

::

    retrylib serve [--model smollm2|gemma3|PATH] [--port N]
    retrylib chaos [--upstream URL] [--port N] [--plan "503,503,pass"] [--upstream-free]
    retrylib call CONFIG.yaml            # llm_call on a declarative config; prints the attempts
    retrylib workbook run [--params FILE] [--only 01,03] [--output-dir reports]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence


def _serve(args: argparse.Namespace) -> int:
    from retrylib.local import LocalModelServer

    srv = LocalModelServer(args.model, port=args.port, n_ctx=args.n_ctx, n_threads=args.threads,
                           log_path=args.log)
    srv.start()
    print(f"model server: {srv.api_base} (model {srv.model}; litellm: {srv.litellm_model}; "
          f"log {srv.log_path})", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            if not srv.alive():
                print(f"model server died; log tail:\n{srv.log_tail()}", file=sys.stderr)
                return 1
    finally:
        srv.stop()
    return 0


def _chaos(args: argparse.Namespace) -> int:
    from retrylib.chaos import run_forever
    from retrylib.errors import ConfigError

    if not args.upstream and not args.upstream_free:
        raise ConfigError("give --upstream URL (e.g. the model server's …/v1) or --upstream-free")
    run_forever(upstream=None if args.upstream_free else args.upstream, host=args.host,
                port=args.port, plan=args.plan, upstream_free=args.upstream_free)
    return 0


def _call(args: argparse.Namespace) -> int:
    from retrylib.declarative import llm_call_sync
    from retrylib.errors import RetryError
    from retrylib.result import attempts_frame

    try:
        result = llm_call_sync(args.config)
    except RetryError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        if exc.attempts:
            print(attempts_frame(exc.attempts)[_COLUMNS].to_string(index=False), file=sys.stderr)
        return 2
    print(attempts_frame(result.attempts)[_COLUMNS].to_string(index=False))
    print(json.dumps({"content": result.content, "metrics": result.metrics}, indent=2, default=str))
    return 0


_COLUMNS = ["number", "stage", "outcome", "slept", "duration", "status_code", "error_type",
            "validation_errors", "tokens_in", "tokens_out"]


def _workbook(args: argparse.Namespace) -> int:
    from retrylib.workbook import run_workbook

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    return run_workbook(params=args.params, only=only, output_dir=args.output_dir,
                        cell_timeout=args.cell_timeout)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retrylib", description="Retry LLM calls until their output is valid.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="start the embedded model server and print its URL")
    s.add_argument("--model", default="smollm2", help="smollm2, gemma3, or a .gguf path")
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--n-ctx", type=int, default=4096)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--log", default=None, help="server log file (default: a temp file)")
    s.set_defaults(func=_serve)

    c = sub.add_parser("chaos", help="start the fault-injecting proxy and print its URL")
    c.add_argument("--upstream", default=None, help="the upstream OpenAI base URL (…/v1)")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=0)
    c.add_argument("--plan", default=None, help='a fault sequence, e.g. "503,503,pass"')
    c.add_argument("--upstream-free", action="store_true",
                   help="answer fixed content without an upstream (benchmarks only)")
    c.set_defaults(func=_chaos)

    k = sub.add_parser("call", help="run llm_call on a declarative YAML config")
    k.add_argument("config", help="path to the YAML config")
    k.set_defaults(func=_call)

    w = sub.add_parser("workbook", help="the verification workbook")
    wsub = w.add_subparsers(dest="workbook_command", required=True)
    r = wsub.add_parser("run", help="execute the notebooks with papermill and export the reports")
    r.add_argument("--params", default="params/default.yaml", help="papermill parameter file (YAML)")
    r.add_argument("--only", default=None, help="a subset of notebooks by number, e.g. 01,03")
    r.add_argument("--output-dir", default="reports", help="where the reports go")
    r.add_argument("--cell-timeout", type=float, default=None, help="seconds per cell (default: from params)")
    r.set_defaults(func=_workbook)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from retrylib.errors import ConfigError, ServerStartError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, ServerStartError) as exc:
        print(f"retrylib: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
