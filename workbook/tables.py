"""Markdown tables for the notebooks and the reports (tabulate is not installed, so pandas'
``to_markdown`` is unavailable). One module for both, so a report's tables read like the
notebook's own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["cell", "markdown_table", "values_table"]


def cell(v: Any, max_chars: int = 160) -> str:
    """One table cell: flattened to one line, pipes escaped, long text cut; a missing value
    (``None``, ``NaN``, ``NaT``) is an empty cell."""
    import pandas as pd

    if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
        return ""
    s = " ".join(str(v).split()).replace("|", "\\|")
    return s if len(s) <= max_chars else s[: max_chars - 1] + "…"


def markdown_table(df: pd.DataFrame, max_chars: int = 160) -> str:
    """A GitHub markdown table of ``df``. Cells are flattened to one line, pipes escaped, long
    text cut, missing values left empty."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v, max_chars) for v in row) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines)


def values_table(values: Mapping[str, Any], header: tuple[str, str] = ("name", "value"),
                 max_chars: int = 160) -> str:
    """A two-column markdown table of a mapping (sample sizes, settings): one row per key,
    instead of the mapping's repr."""
    import pandas as pd

    df = pd.DataFrame({header[0]: list(values), header[1]: [_plain(v) for v in values.values()]})
    return markdown_table(df, max_chars=max_chars)


def _plain(v: Any) -> str:
    if isinstance(v, list | tuple):  # items that hold commas themselves are set apart by "; "
        items = [str(x) for x in v]
        return ("; " if any("," in x for x in items) else ", ").join(items)
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return str(v)
