"""benchmarks/load.py runs: its quick mode (200 calls per measurement, both routes, the proxy in
a process of its own) keeps every call's accounting. No assertion on speed or memory: the
benchmark measures those, this test shows that it counts right and writes its results.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import load  # noqa: E402


def test_quick_load_run_keeps_every_call(tmp_path, capsys):
    """Quick mode, both routes and both proxy transports: 0 lost, 0 ended twice, every call
    ok, the journal equals the attempts call by call, faults cost extra attempts."""
    out = tmp_path / "load.json"
    assert load.main(["--quick", "--out", str(out)]) == 0
    assert "journal_equals_attempts" in capsys.readouterr().out
    result = json.loads(out.read_text())
    lines = {(s["route"], s["transport"]): s for s in result["summary"]}
    assert set(lines) == {("litellm", "litellm"), ("proxy", "httpx"), ("proxy", "aiohttp")}
    assert len(result["runs"]) == 9  # direct, clean and faults per line
    for run in result["runs"]:
        assert run["n"] == 200 and run["lost"] == 0 and run["ended_twice"] == 0
        assert run["outcomes"] == {"ok": 200}
        assert run["journal"] == run["attempts"] and run["journal_other_keys"] == 0
        assert run["duplicated"] == run["missing"] == 0
        if run["faults"]:
            # each faulted call costs exactly one extra attempt, seen on the wire
            assert run["attempts"] == 200 + run["faulted_calls"] and run["faulted_calls"] > 20
        else:
            assert run["attempts"] == 200
        assert run["calls_per_s"] > 0 and run["rss_peak_mb"] >= run["rss_base_mb"] > 0
    verdict = result["verdict"]
    assert verdict["zero_lost"] and verdict["zero_ended_twice"] and verdict["journal_equals_attempts"]
    assert set(verdict["throughput_ratio_ok"]) == {"litellm/litellm/200", "proxy/httpx/200",
                                                   "proxy/aiohttp/200"}


def test_fault_plans_are_seeded_and_about_30_percent():
    """The faulted calls are drawn with the seed: the same seed, the same plans; ~30 % of them."""
    a, b = load.plans(1000, 0.3, 7, "x"), load.plans(1000, 0.3, 7, "x")
    assert a == b and a != load.plans(1000, 0.3, 8, "x")
    assert 250 <= len(a) <= 350
    assert all(plan[-1] == "pass" and plan[0] in load.FAULTS for plan in a.values())
