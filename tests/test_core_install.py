"""The core install: `pip install retrylib` (no extras) runs the retry loop, and each feature
that needs an extra names it.

A fresh venv gets the project without extras (pip builds and installs it with exactly the
core dependencies), then runs an example in that venv: a plain async call function, and the
proxy route over the wire to a real fault proxy on 127.0.0.1 (served from this process).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXAMPLE = textwrap.dedent('''
    import asyncio, importlib.util, json, sys
    import retrylib
    from retrylib import MissingExtraError, RetryConfig, make_call, retry_with_validation
    from retrylib import validators as V
    from retrylib.testing import ScriptedCall, http_error, set_testing

    absent = [m for m in ("litellm", "pandas", "aiohttp", "llama_cpp", "papermill", "jsonschema")
              if importlib.util.find_spec(m) is not None]
    assert not absent, f"not a core-only venv: {absent}"

    async def my_model(messages, **kw):  # the user's own call: any async function
        asked = len(messages)
        return "Sure!" if asked == 1 else '{"name": "Ann", "age": 31}'

    async def main():
        out = {}
        r = await retry_with_validation(
            my_model, [{"role": "user", "content": "Ann, 31, as JSON"}],
            [V.JsonObject(), V.FieldsPresent(["name", "age"])], RetryConfig(max_attempts=3))
        out["plain"] = [r.parsed, len(r.attempts), r.attempts[0].validation_errors[:1]]
        # The proxy route (httpx only) through the real fault proxy: a 503, then its answer.
        call = make_call("proxy/fixed", api_base=sys.argv[1])
        r = await retry_with_validation(call, [{"role": "user", "content": "hi"}],
                                        config=RetryConfig(max_attempts=3, initial_delay=0.01))
        out["proxy"] = [r.content, [a.status_code for a in r.attempts]]
        with set_testing(True):
            r = await retry_with_validation(ScriptedCall([http_error(429, route="proxy"), "ok"]),
                                            [{"role": "user", "content": "hi"}])
        out["scripted"] = [r.content, [a.slept for a in r.attempts]]
        try:
            r.to_frame()
        except MissingExtraError as exc:
            out["to_frame"] = str(exc)
        try:
            await make_call("openai/x", api_base="http://127.0.0.1:9/v1")(messages=[])
        except MissingExtraError as exc:
            out["litellm"] = str(exc)
        return out

    print(json.dumps(asyncio.run(main())))
''')


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory):
    """A fresh venv with retrylib installed without extras."""
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    out = subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(ROOT)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return py


def test_core_install_pulls_only_the_core(core_venv):
    """Installed without extras, the venv holds the core dependencies and none of the heavy ones."""
    out = subprocess.run([str(core_venv), "-m", "pip", "list", "--format=freeze"],
                         capture_output=True, text=True, timeout=120, check=True)
    names = {ln.split("==")[0].lower().replace("_", "-") for ln in out.stdout.splitlines()}
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for req in core:
        name = req.split(">")[0].split("<")[0].split("=")[0].strip().lower()
        assert name in names, f"core dependency {name} not installed"
    heavy = {"litellm", "llama-cpp-python", "jupyterlab", "papermill", "nbconvert", "pandas",
             "matplotlib", "numpy", "aiohttp", "openai"}
    assert not heavy & names, heavy & names
    assert len(names) < 30, sorted(names)  # pydantic, httpx, loguru, pyyaml and theirs


def test_core_install_runs_an_example(core_venv, chaos_free):
    """The loop with a plain call, the proxy route over the wire and ScriptedCall all work
    core-only; to_frame() and the litellm route name the extra they need."""
    import json

    chaos_free.set_plan("503,pass")
    out = subprocess.run([str(core_venv), "-c", EXAMPLE, chaos_free.url], capture_output=True,
                         text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["plain"][0] == {"name": "Ann", "age": 31} and got["plain"][1] == 2
    assert "invalid JSON" in got["plain"][2][0]
    assert got["proxy"] == ["OK", [503, None]]
    assert [e["fault"] for e in chaos_free.journal()] == ["503", "pass"]
    assert got["scripted"] == ["ok", [0.0, 0.0]]
    assert got["to_frame"] == "RetryResult.to_frame() needs pandas: pip install 'retrylib[workbook]'"
    assert "pip install 'retrylib[litellm]'" in got["litellm"]
