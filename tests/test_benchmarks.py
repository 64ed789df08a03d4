"""The benchmarks run: the extraction benchmark on a few cases, the overhead script on tiny sizes.

No wall-clock assertions: these tests show the code measures and reports, not how fast
anything is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import overhead  # noqa: E402
from benchmarks.extraction.cases import CASES, messages_for, score  # noqa: E402
from benchmarks.extraction.ladders import ladder_config  # noqa: E402
from benchmarks.extraction.run import done_when, load_partial, run_cases, summarize  # noqa: E402
from benchmarks.extraction.strategies import Budget, Record, Target, instructor_reask  # noqa: E402
from retrylib.validators import Grounded, PydanticSchema  # noqa: E402
from retrylib.validators.base import ValidationContext  # noqa: E402

QUICK = Budget(max_tokens=96, reask_attempts=2, instructor_attempts=2,
               ladder={"K": 0, "M": 2, "escalation": "fresh", "grounded": "soft"})


def _target(local_model) -> Target:
    return Target("smollm2", local_model.litellm_model, local_model.api_base)


async def test_cases_are_many_varied_and_self_consistent():
    """At least 30 cases with unique ids; each expected answer validates, is grounded, scores 100%."""
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    tags = {t for c in CASES for t in c.tags}
    assert {"flat", "nested", "list", "enum", "int", "float", "optional", "date"} <= tags
    ctx = ValidationContext()
    for c in CASES:
        text = json.dumps(c.expected)
        parsed = await PydanticSchema(c.model).validate(text, ctx)
        assert parsed.valid, (c.id, parsed.errors)
        assert (await Grounded(c.text, c.model).validate(text, ctx)).valid, c.id
        assert score(c, parsed.parsed) == (True, 1.0), c.id


async def test_grounding_rejects_invented_values():
    """An answer with a value that is not in the text, or an empty name, fails grounding."""
    case = CASES[0]
    bad = json.dumps({**case.expected, "city": "Mariadella", "name": ""})
    result = await Grounded(case.text, case.model).validate(bad, ValidationContext())
    assert not result.valid and len(result.errors) == 2
    assert score(case, json.loads(bad)) == (False, 1 / 3)


def test_every_strategy_sends_the_same_prompt():
    """The messages name every field and quote the text, after the issue's system prompt."""
    msgs = messages_for(CASES[18])
    assert msgs[0] == {"role": "system", "content": "You are a helpful assistant. Reply with JSON only."}
    assert "customer (object {name: string, email: string})" in msgs[1]["content"]
    assert CASES[18].text in msgs[1]["content"]


async def test_quick_extraction_run_gives_well_formed_records(local_model):
    """Two strategies on three cases against the embedded model: every number is computed."""
    recs = await run_cases(CASES[:3], ["single_shot", "ladder"], _target(local_model), QUICK)
    assert [(r.case, r.strategy) for r in recs] == [
        (c.id, s) for c in CASES[:3] for s in ("single_shot", "ladder")]
    for r in recs:
        assert r.attempts >= 1 and r.prompt_tokens > 0 and r.completion_tokens > 0
        assert 0.0 <= r.field_accuracy <= 1.0 and r.seconds > 0
        assert r.correct <= r.valid  # correct is only ever judged on a valid answer
    table = summarize(recs)
    assert set(table.strategy) == {"single_shot", "ladder"}
    assert table.valid_pct.between(0, 100).all() and (table.tokens > 0).all()
    assert (table.cases == 3).all()


async def test_instructor_strategy_counts_its_tokens(local_model):
    """instructor's re-ask (tools mode) runs against the same server and reports its usage."""
    r = await instructor_reask(CASES[0], _target(local_model), QUICK, mode="tools")
    assert r.attempts >= 1 and r.prompt_tokens > 0
    assert r.strategy == "instructor_tools"


def test_ladder_config_follows_the_knobs_and_stops_at_f_without_a_fallback():
    """With a fallback model the knobs map 1:1; without one there is no fallback stage and
    the ladder ends where it would have started (M capped at F)."""
    knobs = Budget().ladder
    with_fb = ladder_config(knobs, Target("s", "openai/s", "http://x/v1",
                                          (Target("g", "openai/g", "http://y/v1"),)), 7)
    assert with_fb.ladder() == [("normal", 0), ("constrained", 0), ("fallback", 1), ("human", 2)]
    assert with_fb.escalation_history == "fresh" and with_fb.fallback_models[0].model == "openai/g"
    alone = ladder_config(knobs, Target("g", "openai/g", "http://y/v1"), 7)
    assert alone.ladder() == [("normal", 0), ("constrained", 0), ("human", 1)]
    assert alone.max_attempts == 1 and not alone.fallback_models
    sketch = ladder_config(Budget().ladder_sketch, Target("g", "openai/g", "http://y/v1"), 7)
    assert sketch.max_attempts == 2 and sketch.escalation_history == "keep"


def test_done_when_can_fail():
    """The done-when verdict comes from the table: a ladder below the best other strategy fails."""
    import pandas as pd

    rows = [("constrained", 90.0, 20.0, 1000), ("resample", 40.0, 10.0, 3000), ("ladder", 80.0, 25.0, 1400)]
    summary = pd.DataFrame([{"model": "m", "strategy": s, "cases": 10, "valid_pct": v,
                             "correct_pct": c, "tokens": t} for s, v, c, t in rows])
    d = done_when(summary, "m", "ladder")
    assert d["best_other_valid"] == "constrained" and not d["valid_ok"]
    assert d["correct_ok"] and d["tokens_ok"] and d["token_ratio"] == pytest.approx(1.4)


def test_pattern_cases_carry_patterns_and_formats_the_grammar_keeps():
    """At least 15 cases whose schemas carry patterns or formats (dates, times, codes, ids,
    e-mails, money); the constrained stage's rewrite drops none of them, and llama.cpp's own
    converter builds a grammar from every rewritten schema."""
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    from retrylib.constrained import grammar_safe_schema

    pattern_cases = [c for c in CASES if "pattern" in c.tags]
    assert len(pattern_cases) >= 15 and CASES[:36] == [c for c in CASES if "pattern" not in c.tags]
    for c in pattern_cases:
        text = json.dumps(c.model.model_json_schema())
        assert '"pattern"' in text or '"format"' in text, c.id
        safe, dropped = grammar_safe_schema(c.model.model_json_schema())
        assert dropped == [], (c.id, dropped)
        assert json.dumps(safe).count('"pattern"') >= text.count('"pattern"'), c.id
        LlamaGrammar.from_string(json_schema_to_gbnf(json.dumps(safe)), verbose=False)


def test_repair_effect_counts_fixed_and_broken_cases_per_pair():
    """repair_effect pairs each repaired strategy with its plain one, case by case."""
    import pandas as pd

    from benchmarks.extraction.notebook import repair_effect

    def rec(strategy: str, case: str, valid: bool) -> dict:
        return {"model": "m", "strategy": strategy, "case": case, "valid": valid, "correct": valid,
                "prompt_tokens": 10, "completion_tokens": 5}

    records = pd.DataFrame([rec("single_shot", "a", False), rec("single_repair", "a", True),
                            rec("single_shot", "b", True), rec("single_repair", "b", False),
                            rec("single_shot", "c", True), rec("single_repair", "c", True),
                            rec("ladder", "a", True)])
    (row,) = repair_effect(records).to_dict("records")
    assert (row["strategy"], row["against"], row["cases"]) == ("single_repair", "single_shot", 3)
    assert (row["fixed"], row["broken"], row["valid_with"], row["valid_without"]) == (1, 1, 2, 2)
    assert row["tokens_with"] == row["tokens_without"] == 45


def test_a_stopped_run_can_be_resumed_from_its_partial_file(tmp_path):
    """The partial JSON-lines file gives back its records and the instructor pilot, as saved."""
    rec = Record("person-1", "constrained", "smollm2", True, True, 1.0, 1, 77, 23, 0.5)
    path = tmp_path / "x.partial.jsonl"
    path.write_text(json.dumps({"instructor_pilot": [{"mode": "tools", "chosen": "tools"}]}) + "\n"
                    + json.dumps(rec.to_dict()) + "\n")
    records, pilot = load_partial(path)
    assert records == [rec] and pilot[0]["chosen"] == "tools"


def test_overhead_script_runs_and_prints_its_table(local_model, tmp_path, capsys):
    """The overhead script on tiny sizes: every implementation measured, profile and table emitted."""
    out = tmp_path / "overhead.json"
    overhead.main(["--attempts", "3", "--calls", "5", "--repeats", "2", "--real-repeats", "2",
                   "--api-base", local_model.api_base, "--profile", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "µs/attempt" in printed and "paired difference" in printed
    data = json.loads(out.read_text())
    impls = {(r["scenario"], r["impl"]) for r in data["loop"]}
    assert impls == {(s, i) for s in ("transport", "validation")
                     for i in ("retrylib", "tenacity", "stamina", "bare")}
    assert all(r["us_per_attempt"] > 0 for r in data["loop"])
    assert data["real_call"]["repeats"] == 2 and data["real_call"]["direct_median_ms"] > 0
    assert data["components_us"] and data["profile"]["transport"]["top_own_time"]


def test_deadline_benchmark_runs_every_case_to_the_deadline(tmp_path):
    """benchmarks/deadlines.py (one repeat) measures every case and writes its samples; each
    call ended by the deadline with reason "deadline" (timings are the benchmark's business)."""
    import subprocess

    out = tmp_path / "deadlines.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "deadlines.py"),
                           "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    result = json.loads(out.read_text())
    cases = {r["case"]: r for r in result["cases"]}
    assert {"blocking_validator_in_all_of", "blocking_call_sync_entry", "hang_litellm_route",
            "backoff_sleep"} <= set(cases)
    for r in cases.values():
        assert [s["outcome"] for s in r["samples"]] == ["RetryExhaustedError:deadline"]
        assert r["within_target"] == (r["max"] <= result["target"])
