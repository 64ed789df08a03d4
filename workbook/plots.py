"""The workbook's figures. Each function takes the DataFrame an experiment returned and
returns a matplotlib ``Figure``; the notebook shows it as the cell's last expression.

matplotlib is imported inside the functions: importing ``retrylib`` never pulls it in.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

STAGE_COLOURS = {"normal": "tab:blue", "constrained": "tab:purple", "fallback": "tab:olive",
                 "tool": "tab:orange", "human": "tab:red"}


def _done(fig: Any) -> Any:
    """Lay the figure out and detach it from pyplot, so that a notebook shows it once (as the
    cell's value) rather than twice (value and inline auto-display)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_backoff(df: pd.DataFrame) -> Any:
    """Seeded schedule against measured sleeps, one panel per jitter kind.

    Args:
        df: ``core.backoff_experiment``'s rows (``jitter``, ``retry``, ``base``, ``schedule``,
            ``slept``, ``wire_gap``, ``max_delay``).

    Returns:
        The Figure.
    """
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(df["jitter"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.2), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        d = df[df["jitter"] == kind]
        ax.plot(d["retry"], d["base"], "k--", lw=1, label="un-jittered d_n")
        ax.axhline(d["max_delay"].iloc[0], color="grey", lw=0.8, ls=":", label="max_delay")
        ax.plot(d["retry"], d["schedule"], "o", ms=9, mfc="none", label="seeded schedule")
        ax.plot(d["retry"], d["slept"], "x", ms=8, mew=2, label="measured sleep")
        ax.plot(d["retry"], d["wire_gap"], "+", ms=8, color="tab:green", label="gap seen by proxy")
        ax.set(title=f"jitter = {kind}", xlabel="retry number", xticks=list(d["retry"]))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("delay (s)")
    axes[0][-1].legend(fontsize="small", loc="upper left")
    fig.suptitle("Backoff: seeded schedule vs measured sleep")
    return _done(fig)


def plot_jitter_spread(df: pd.DataFrame) -> Any:
    """The delays each jitter formula draws over many seeds, against the un-jittered curve.

    Args:
        df: ``core.jitter_spread``'s rows (``jitter``, ``retry``, ``delay``, ``base``).
    """
    import matplotlib.pyplot as plt

    kinds = list(dict.fromkeys(df["jitter"]))
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.0), sharey=True, squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        d = df[df["jitter"] == kind]
        offset = (d["seed"] % 21 - 10) * 0.015  # spread the dots sideways so the density shows
        ax.scatter(d["retry"] + offset, d["delay"], s=4, alpha=0.35)
        base = d.groupby("retry")["base"].first()
        ax.plot(base.index, base.values, "k--", lw=1)
        ax.set(title=kind, xlabel="retry number", xticks=list(base.index))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("delay (s)")
    fig.suptitle(f"Jitter: {df['seed'].nunique()} seeds per kind (dashed: un-jittered d_n)")
    return _done(fig)


def plot_memory(df: pd.DataFrame, calls: pd.DataFrame | None = None) -> Any:
    """Resident set size after each attempt of a series of calls, and each call's
    tracemalloc peak.

    Args:
        df: attempts with ``index`` (position in the series), ``call`` and ``rss_bytes``.
        calls: per call, ``call`` and ``process_traced_peak_bytes`` (optional second panel).
    """
    import matplotlib.pyplot as plt

    n = 2 if calls is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.2), squeeze=False)
    ax = axes[0][0]
    for call, d in df.groupby("call"):
        ax.plot(d["index"], d["rss_bytes"] / 2**20, "o-", ms=4, label=f"call {call}")
    ax.set(title="RSS after each attempt", xlabel="attempt (across the series)", ylabel="RSS (MiB)")
    ax.grid(alpha=0.3)
    if df["call"].nunique() <= 10:
        ax.legend(fontsize="small")
    if calls is not None:
        bx = axes[0][1]
        bx.bar(calls["call"].astype(str), calls["process_traced_peak_bytes"] / 1024)
        bx.set(title="tracemalloc peak per call", xlabel="call", ylabel="peak traced (KiB)")
        bx.grid(alpha=0.3, axis="y")
    return _done(fig)


def plot_stage_timeline(df: pd.DataFrame) -> Any:
    """Which stage each attempt ran in, one row per configuration.

    Args:
        df: long format: ``row`` (label), ``attempt`` (1-based), ``stage`` (``normal``,
            ``tool``, ... or ``human`` for the hand-over after the last attempt).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = list(dict.fromkeys(df["row"]))
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.55 * len(rows)))
    for y, label in enumerate(rows):
        d = df[df["row"] == label]
        for a, stage in zip(d["attempt"], d["stage"], strict=True):
            hatch = "//" if stage == "human" else None
            ax.barh(y, 0.9, left=a - 0.45, color=STAGE_COLOURS.get(stage, "grey"), hatch=hatch,
                    edgecolor="white")
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xticks(range(1, int(df["attempt"].max()) + 1))
    ax.set(xlabel="attempt number (human: the hand-over instead of another call)",
           title="Escalation stages per attempt")
    present = [s for s in STAGE_COLOURS if s in set(df["stage"])]
    ax.legend(handles=[Patch(color=STAGE_COLOURS[s], label=s) for s in present],
              loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(rows) < 4 else -0.2),
              ncol=len(present), frameon=False)
    return _done(fig)


def plot_escalation_timing(df: pd.DataFrame) -> Any:
    """Seconds from the call's start until each stage was reached: measured vs predicted.

    Args:
        df: ``stage``, ``measured_s`` and ``predicted_s`` (the backoff sleeps before it).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    x = range(len(df))
    ax.bar([i - 0.2 for i in x], df["predicted_s"], width=0.4, label="predicted (sum of sleeps)")
    ax.bar([i + 0.2 for i in x], df["measured_s"], width=0.4, label="measured")
    ax.set_xticks(list(x), list(df["stage"]))
    ax.set(ylabel="seconds since the call started", title="Time to reach each stage")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    return _done(fig)


# -- 03 integration and 04 edge cases ----------------------------------------------------

def plot_overhead(df: pd.DataFrame, summary: dict[str, float]) -> Any:
    """Left: each pair's wall time, bare litellm vs wrapped. Right: the ratio per pair, with
    its median and interquartile band.

    Args:
        df: ``integration.overhead``'s rows (``pair``, ``arm``, ``seconds``).
        summary: ``integration.overhead_summary`` of them.

    Returns:
        The Figure.
    """
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for arm, marker in (("direct", "o"), ("wrapped", "s")):
        part = df[df.arm == arm]
        a.plot(part.pair, part.seconds * 1000, marker=marker, label=arm)
    a.set(xlabel="pair", ylabel="wall time (ms)", title="one real call: bare litellm vs wrapped")
    a.legend()
    w, d = (df[df.arm == k].set_index("pair").seconds for k in ("wrapped", "direct"))
    b.plot((w / d).index, w / d, "o-", color="tab:purple")
    b.axhline(summary["ratio_median"], color="k", lw=1, label=f"median {summary['ratio_median']:.3f}")
    b.axhspan(summary["ratio_q1"], summary["ratio_q3"], color="tab:purple", alpha=0.15, label="IQR")
    b.axhline(1.0, color="grey", ls=":")
    b.set(xlabel="pair", ylabel="wrapped / direct", title="overhead ratio per pair")
    b.legend()
    return _done(fig)


def plot_memory_growth(mem: pd.DataFrame) -> Any:
    """RSS after each call (with the last half's fitted line), and the tracemalloc peak of
    the traced calls.

    Args:
        mem: ``integration.memory_run``'s rows (``call``, ``rss_mb``, ``traced``, ``peak_kb``,
            ``attempts``).

    Returns:
        The Figure.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.plot(mem.call, mem.rss_mb, "o-", ms=3)
    half = mem.call >= len(mem) // 2
    fit = np.polyfit(mem.call[half], mem.rss_mb[half], 1) if half.sum() > 1 else None
    if fit is not None:
        a.plot(mem.call[half], np.polyval(fit, mem.call[half]), "r--", label=f"last-half slope {fit[0]:.3f} MB/call")
        a.legend()
    a.set(xlabel="call", ylabel="RSS (MB)", title="process memory after each call")
    t = mem[mem.traced]
    b.bar(t.call, t.peak_kb, color=np.where(t.attempts > 1, "tab:orange", "tab:blue"))
    b.set(xlabel="call (traced: odd)", ylabel="tracemalloc peak (KiB)",
          title="peak traced memory per call (orange: retried)")
    return _done(fig)


def plot_cache_hits(calls: pd.DataFrame) -> Any:
    """Milliseconds per call, cache misses vs hits, on a log scale.

    Args:
        calls: ``integration.cache_run(...)["calls"]`` (``repeat``, ``hit``, ``seconds``).

    Returns:
        The Figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for hit, color in ((False, "tab:red"), (True, "tab:green")):
        part = calls[calls.hit == hit]
        ax.scatter(part.repeat + (0.1 if hit else -0.1), part.seconds * 1000, color=color,
                   label="cache hit" if hit else "miss (model called)")
    ax.set_yscale("log")
    ax.set(xlabel="repeat of the same prompts", ylabel="ms per call (log)", title="litellm in-memory cache")
    ax.legend()
    return _done(fig)


def plot_time_split(split: pd.DataFrame) -> Any:
    """Mean milliseconds per call in each component (log scale: they differ by orders).

    Args:
        split: ``integration.time_split``'s rows (``component``, ``ms_per_call``, ``share``).

    Returns:
        The Figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8))
    s = split.sort_values("ms_per_call")
    ax.barh(s.component, s.ms_per_call.clip(lower=1e-3), color="tab:blue")
    for y, (ms, share) in enumerate(zip(s.ms_per_call, s.share, strict=True)):
        ax.text(max(ms, 1e-3) * 1.1, y, f"{ms:.2f} ms ({share:.1%})", va="center")
    ax.set_xscale("log")
    ax.set(xlabel="ms per call (log)", title="where a call's time goes")
    return _done(fig)


def plot_concurrency_timeline(conc: dict[str, Any]) -> Any:
    """Every concurrent call as a row: its requests' arrival times at the proxy, coloured by
    the fault each got; the line spans the call's first to last request.

    Args:
        conc: ``edge.concurrent``'s result (``calls`` with ``arrivals`` and ``faults``, ``t0``,
            ``n``).

    Returns:
        The Figure.
    """
    import matplotlib.pyplot as plt

    df, t0 = conc["calls"], conc["t0"]
    colors: dict[str, str] = {}
    palette = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.045 * len(df))))
    for r in df.itertuples():
        xs = [t - t0 for t in r.arrivals]
        if xs:
            ax.plot([xs[0], xs[-1]], [r.call, r.call], color="lightgrey", lw=0.8, zorder=1)
        for x, f in zip(xs, r.faults, strict=True):
            name = "reply:…" if f.startswith("reply:") else f.split(":")[0]
            colors.setdefault(name, palette(len(colors) % 20))  # type: ignore[arg-type]
            ax.scatter(x, r.call, s=9, color=colors[name], zorder=2)
    for name, c in colors.items():
        ax.scatter([], [], color=c, label=name)
    ax.legend(ncol=min(len(colors), 5), fontsize=7, loc="upper right")
    ax.set(xlabel="seconds since the first request", ylabel="call",
           title=f"{conc['n']} concurrent calls: each request as the proxy received it")
    return _done(fig)


def plot_delay_cap(row: dict[str, Any]) -> Any:
    """For the delay-cap scenario: the backoff each attempt planned, the sleep measured in
    the loop, and the gap between requests on the wire, against ``max_delay``.

    Args:
        row: the delay-cap row of ``edge.retry_extremes`` (``scheduled``, ``slept``,
            ``gaps``, ``max_delay``).

    Returns:
        The Figure.
    """
    import matplotlib.pyplot as plt

    n = range(2, len(row["scheduled"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(n, row["scheduled"][1:], "o-", label="planned delay")
    ax.plot(n, row["slept"][1:], "s--", label="slept (loop)")
    ax.plot(n, row["gaps"], "^:", label="gap between requests (proxy)")
    ax.axhline(row["max_delay"], color="r", lw=1, label=f"max_delay {row['max_delay']}")
    ax.set(xlabel="attempt", ylabel="seconds", title="exponential backoff (factor 10) hits the cap")
    ax.legend(fontsize=8)
    return _done(fig)


def plot_load(result: dict[str, Any], saved: dict[str, Any] | None = None) -> Any:
    """Many calls at once: throughput direct / retrylib / 30 % faults, and RSS per call in
    flight against the 50 KB target, per route (and transport); the committed full run's
    bars beside this run's, when given.

    Args:
        result: ``edge.load_benchmark``'s result (its ``summary`` rows).
        saved: the committed ``benchmarks/results/load.json``, or ``None``.

    Returns:
        The Figure.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [dict(r, run="this run") for r in result["summary"]]
    rows += [dict(r, run="committed") for r in (saved or {}).get("summary", [])]
    labels = [f"{'litellm' if r['route'] == 'litellm' else 'proxy/' + r['transport']} "
              f"{r['n']:,}{'' if r['run'] == 'this run' else ' (committed)'}" for r in rows]
    x = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(10.0, 1.1 * len(rows) + 4), 4.8))
    for k, (key, name, colour) in enumerate([("direct_calls_per_s", "direct (no retrylib)", "tab:grey"),
                                             ("clean_calls_per_s", "retrylib, clean", "tab:blue"),
                                             ("faults_calls_per_s", "retrylib, 30% faults", "tab:orange")]):
        left.bar(x + (k - 1) * 0.27, [r[key] for r in rows], 0.27, label=name, color=colour)
    left.set(ylabel="calls per second", title="throughput (all calls launched at once)")
    left.set_xticks(x, labels, fontsize=7, rotation=35, ha="right")
    left.legend(fontsize=8)
    for k, (key, name, colour) in enumerate([("rss_kb_per_call_direct", "direct", "tab:grey"),
                                             ("rss_kb_per_call_clean", "retrylib, clean", "tab:blue"),
                                             ("rss_kb_per_call_faults", "retrylib, 30% faults", "tab:orange")]):
        right.bar(x + (k - 1) * 0.27, [r[key] for r in rows], 0.27, label=name, color=colour)
    target = result.get("targets", {}).get("rss_kb_per_call", 50.0)
    right.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:g} KB")
    right.set(ylabel="KB of RSS per call in flight", title="memory per call in flight")
    right.set_xticks(x, labels, fontsize=7, rotation=35, ha="right")
    right.legend(fontsize=8)
    return _done(fig)
