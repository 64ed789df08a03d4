"""``retrylib``: the command line. Thin: it gathers arguments and calls the library.

::

    retrylib serve [--model smollm2|gemma3|PATH] [--port N] [--check]
    retrylib chaos [--upstream URL] [--port N] [--plan "503,503,pass"] [--upstream-free]
                   [--backlog N]
    retrylib call CONFIG.yaml            # llm_call on a declarative config; prints the attempts
    retrylib review list|show ID|resolve ID --answer FILE|approve ID|reject ID --reason TEXT
                    |retry ID --guidance TEXT|resume ID [--store PATH] [--by NAME]  # the review queue
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any


def _serve(args: argparse.Namespace) -> int:
    from retrylib.testing.local import LocalModelServer, completion_check

    srv = LocalModelServer(args.model, port=args.port, n_ctx=args.n_ctx, n_threads=args.threads,
                           log_path=args.log)
    srv.start()
    if args.check:
        try:
            text, seconds = completion_check(srv)
        finally:
            srv.stop()
        print(f"model server {srv.model}: one completion in {seconds:.2f}s: {text.strip()[:60]!r}")
        return 0
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
    from retrylib.errors import ConfigError
    from retrylib.testing.chaos import run_forever

    if not args.upstream and not args.upstream_free:
        raise ConfigError("give --upstream URL (e.g. the model server's …/v1) or --upstream-free")
    run_forever(upstream=None if args.upstream_free else args.upstream, host=args.host,
                port=args.port, plan=args.plan, upstream_free=args.upstream_free,
                backlog=args.backlog)
    return 0


def _call(args: argparse.Namespace) -> int:
    from pathlib import Path

    from retrylib.declarative import llm_call_sync
    from retrylib.errors import ConfigError, RetryError

    # Always a file here (JSON is YAML too): a missing one is said so, not read as YAML text.
    path = Path(args.config)
    if not path.exists():
        raise ConfigError(f"llm_call config file not found: {args.config}: the file does not exist")
    if not path.is_file():
        raise ConfigError(f"llm_call config file not found: {args.config} is not a file")
    try:
        result = llm_call_sync(path)
    except RetryError as exc:
        return _failed(exc)
    return _answered(result)


def _answered(result: Any) -> int:
    """A call's result on stdout: its attempts as a table, then content and metrics as JSON."""
    print(_table(result.attempts))
    print(json.dumps({"content": result.content, "metrics": result.metrics}, indent=2, default=str))
    return 0


def _failed(exc: Any) -> int:
    """A call that ended without an answer: the error and its attempts on stderr; exit 2."""
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    if getattr(exc, "case_id", None):
        print(f"review case: {exc.case_id}", file=sys.stderr)
    if exc.attempts:
        print(_table(exc.attempts), file=sys.stderr)
    return 2


def _review(args: argparse.Namespace) -> int:
    from retrylib.review import ReviewError, approve, open_store, reject, resolve, retry
    from retrylib.review.render import case_detail, case_list

    try:
        store = open_store(args.store)
        if args.action == "list":
            print(case_list(store.list(None if args.all else (args.status or ["open"]))))
            return 0
        if args.action == "show":
            print(case_detail(store.get(args.id), full=args.full))
            return 0
        if args.action == "resume":
            return _resume(store, args)
        if args.action == "resolve":
            text = sys.stdin.read() if args.answer == "-" else _read(args.answer)
            case = resolve(store, args.id, text, reviewer=args.by, check=not args.no_check)
        elif args.action == "approve":
            case = approve(store, args.id, reviewer=args.by, note=args.note)
        elif args.action == "reject":
            case = reject(store, args.id, args.reason, reviewer=args.by)
        else:
            case = retry(store, args.id, args.guidance, attempts=args.attempts, reviewer=args.by)
    except ReviewError as exc:
        print(f"retrylib review: {exc}", file=sys.stderr)
        return 2
    last = case.reviews[-1]
    print(f"case {case.id} is {case.status} (by {last['by']}); the call continues with "
          f"retrylib.review.resume({case.id!r}, store={store.location!r}, ...)")
    return 0


def _resume(store: Any, args: argparse.Namespace) -> int:
    """Continue a decided case's call (``retrylib.review.resume``), its route rebuilt from the
    case: a resolved or approved case sends nothing; a retried one re-asks the model."""
    import asyncio

    from retrylib.errors import RetryError
    from retrylib.review import resume

    kwargs = {"api_base": args.api_base} if args.api_base else {}
    try:
        result = asyncio.run(resume(args.id, store=store, reviewer=args.by, force=args.force,
                                    **kwargs))
    except RetryError as exc:
        return _failed(exc)
    return _answered(result)


def _read(path: str) -> str:
    from pathlib import Path

    from retrylib.errors import ConfigError

    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--answer {path}: {exc.strerror or exc}") from None


_COLUMNS = ["number", "stage", "outcome", "slept", "duration", "status_code", "error_type",
            "validation_errors", "tokens_in", "tokens_out"]


def _table(attempts: Sequence[object]) -> str:
    """The attempts as an aligned text table (no pandas: the CLI runs on the core install)."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        if isinstance(v, (list, tuple)):
            v = "; ".join(map(str, v))
        text = "" if v is None else str(v)
        return text if len(text) <= 60 else text[:57] + "..."

    rows = [_COLUMNS] + [[cell(a.to_dict().get(c)) for c in _COLUMNS] for a in attempts]  # type: ignore[attr-defined]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retrylib", description="Retry LLM calls until their output is valid.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="start the embedded model server and print its URL")
    s.add_argument("--model", default="smollm2", help="smollm2, gemma3, or a .gguf path")
    s.add_argument("--port", type=int, default=None)
    s.add_argument("--n-ctx", type=int, default=4096)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--log", default=None, help="server log file (default: a temp file)")
    s.add_argument("--check", action="store_true",
                   help="make one real completion, print it and stop (fails if the server crashes)")
    s.set_defaults(func=_serve)

    c = sub.add_parser("chaos", help="start the fault-injecting proxy and print its URL")
    c.add_argument("--upstream", default=None, help="the upstream OpenAI base URL (…/v1)")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=0)
    c.add_argument("--plan", default=None, help='a fault sequence, e.g. "503,503,pass"')
    c.add_argument("--upstream-free", action="store_true",
                   help="answer fixed content without an upstream (benchmarks only)")
    c.add_argument("--backlog", type=int, default=128,
                   help="the listening socket's backlog (raise it for thousands of clients)")
    c.set_defaults(func=_chaos)

    k = sub.add_parser("call", help="run llm_call on a declarative YAML (or JSON) config")
    k.add_argument("config", help="path to the YAML or JSON config file")
    k.set_defaults(func=_call)

    _review_parser(sub)
    return p


def _review_parser(sub: argparse._SubParsersAction) -> None:
    from retrylib.review.case import STATUSES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=None,
                        help="the review store (SQLite file); default $RETRYLIB_REVIEW_STORE")
    common.add_argument("--by", default=None, help="who decides (default: the OS user)")
    r = sub.add_parser("review", help="the human-review queue: list, show and decide cases")
    acts = r.add_subparsers(dest="action", required=True)
    ls = acts.add_parser("list", parents=[common], help="the cases, as a table (default: open ones)")
    ls.add_argument("--status", action="append", choices=STATUSES, help="only cases with this status")
    ls.add_argument("--all", action="store_true", help="every case, whatever its status")
    sh = acts.add_parser("show", parents=[common], help="one case: conversation, attempts, errors")
    sh.add_argument("--full", action="store_true", help="do not shorten long messages")
    rs = acts.add_parser("resolve", parents=[common], help="give the answer the model could not")
    rs.add_argument("--answer", required=True, help="a file holding the answer ('-': stdin)")
    rs.add_argument("--no-check", action="store_true", help="do not validate the answer now")
    ap = acts.add_parser("approve", parents=[common], help="accept the last answer as it is")
    ap.add_argument("--note", default=None, help="why it is fine")
    rj = acts.add_parser("reject", parents=[common], help="close the case without an answer")
    rj.add_argument("--reason", required=True, help="why")
    rt = acts.add_parser("retry", parents=[common], help="ask the model again, with your guidance")
    rt.add_argument("--guidance", required=True, help="what the model is told in the re-ask")
    rt.add_argument("--attempts", type=int, default=None,
                    help="how many more attempts (default: the call's max_attempts_before_human)")
    ru = acts.add_parser("resume", parents=[common],
                         help="continue a decided case's call and print its result")
    ru.add_argument("--force", action="store_true",
                    help="take over a case left 'resuming' by a process that died")
    ru.add_argument("--api-base", default=None,
                    help="send a retried call here instead of the recorded api_base")
    for p in (sh, rs, ap, rj, rt, ru):
        p.add_argument("id", help="the case id (HumanReviewNeededError.case_id)")
    r.set_defaults(func=_review)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from retrylib.errors import ConfigError, MissingExtraError, ServerDiedError, ServerStartError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, ServerStartError, ServerDiedError, MissingExtraError) as exc:
        print(f"retrylib: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
