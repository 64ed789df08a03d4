"""A schema's definitions and references, in the shapes a grammar builder can take.

pydantic writes every nested model as a ``$ref`` into the root's ``$defs``; a recursive
model (a tree, a thread of replies) refers to itself. llama-cpp-python's JSON-schema
converter misreads three of these shapes, and in each case the server quietly drops the
grammar for plain JSON, or crashes (measured on llama-cpp-python 0.3.36):

- a root that is only a ``$ref`` (pydantic's form for a recursive model): refs below it
  stay unresolved (``KeyError``), so plain JSON: :func:`hoist_root_ref`;
- a definition whose name a grammar rule may not hold (``_Tree``, ``Page_Item_``): the
  converter cleans the name where it defines the rule but not where a recursive reference
  uses it, so the grammar does not parse and the sampler segfaults: :func:`rename_defs`;
- recursion itself has no bound: a small model under the grammar nests until
  ``max_tokens`` cuts it: :func:`unroll_recursion` (the runaway guard's depth bound).

Each function returns a new schema and leaves its argument alone. Only the root's
``$defs``/``definitions`` and local refs (``#/$defs/Name``) are followed.
"""

from __future__ import annotations

import copy
import re
from typing import Any

MAX_DEPTH = 32  # the deepest unrolling the runaway guard takes (each level copies a definition)
_DEFS = ("$defs", "definitions")
_RULE_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")  # what a GBNF rule name may not hold
DATA_KEYWORDS = ("enum", "const", "default", "examples", "required")  # values, not schemas


class _Cut:
    """The place where a recursion was cut (see :func:`unroll_recursion`)."""


CUT = _Cut()


def _local(ref: Any) -> tuple[str, str] | None:
    """``("$defs", "Name")`` for a local ref into the root's definitions, else ``None``."""
    if not isinstance(ref, str) or not ref.startswith(("#/$defs/", "#/definitions/")):
        return None
    where, _, name = ref[2:].partition("/")
    return where, name.replace("~1", "/").replace("~0", "~")


def rename_defs(schema: Any) -> Any:
    """The root's definitions renamed to what a grammar rule may be called (``[A-Za-z0-9-]``),
    with every local ``$ref`` to them (a discriminator's mapping too)."""
    if not isinstance(schema, dict):
        return schema
    renames: dict[str, str] = {}
    for where in _DEFS:
        defs = schema.get(where)
        if not isinstance(defs, dict):
            continue
        taken = set(defs)
        for name in defs:
            clean = _RULE_UNSAFE.sub("-", name).strip("-") or "def"
            if clean != name:
                new, i = clean, 2
                while new in taken:
                    new, i = f"{clean}-{i}", i + 1
                taken.add(new)
                renames[f"#/{where}/{name}"] = f"#/{where}/{new}"
    if not renames:
        return schema

    def visit(node: Any) -> Any:
        if isinstance(node, list):
            return [visit(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: visit(v) for k, v in node.items()}
        if isinstance(out.get("$ref"), str):
            out["$ref"] = renames.get(out["$ref"], out["$ref"])
        disc = out.get("discriminator")
        if isinstance(disc, dict) and isinstance(disc.get("mapping"), dict):
            disc["mapping"] = {k: renames.get(v, v) if isinstance(v, str) else v
                               for k, v in disc["mapping"].items()}
        return out

    out = visit(schema)
    for where in _DEFS:
        if isinstance(out.get(where), dict):
            out[where] = {renames.get(f"#/{where}/{k}", f"#/{where}/{k}").split("/", 2)[2]: v
                          for k, v in out[where].items()}
    return out


def hoist_root_ref(schema: Any) -> Any:
    """A root that is only a ``$ref`` into its own definitions, with the definition itself
    at the root (the definitions kept, for the recursion). It means the same."""
    for _ in range(8):  # a chain of aliases, not a loop
        found = _local(schema.get("$ref")) if isinstance(schema, dict) else None
        target = schema.get(found[0], {}).get(found[1]) if found else None
        if not isinstance(target, dict):
            return schema
        schema = {**{k: v for k, v in schema.items() if k != "$ref"}, **copy.deepcopy(target)}
    return schema


def recursive_defs(schema: dict[str, Any]) -> set[tuple[str, str]]:
    """The root's definitions that refer to themselves, directly or through others."""
    return {d for d in _defs_of(schema) if _reaches(schema, d, {d})}


def _defs_of(schema: dict[str, Any]) -> list[tuple[str, str]]:
    return [(w, n) for w in _DEFS if isinstance(schema.get(w), dict) for n in schema[w]]


def _reaches(schema: dict[str, Any], start: tuple[str, str], targets: set[tuple[str, str]]) -> bool:
    seen, todo = {start}, [start]
    while todo:
        where, name = todo.pop()
        for d in _refs_in((schema.get(where) or {}).get(name)):
            if d in targets:
                return True
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return False


def _refs_in(node: Any) -> list[tuple[str, str]]:
    if isinstance(node, list):
        return [r for v in node for r in _refs_in(v)]
    if not isinstance(node, dict):
        return []
    own = _local(node.get("$ref"))
    return ([own] if own else []) + [r for k, v in node.items() if k not in DATA_KEYWORDS
                                     for r in _refs_in(v)]


def unroll_recursion(schema: dict[str, Any], max_depth: int) -> tuple[dict[str, Any], list[str]]:
    """A copy in which each recursive definition nests ``max_depth`` levels at most.

    Every reference to a recursive definition gets a copy of it per level
    (``Tree-d1`` … ``Tree-dN``); below the last level the recursion is cut where the schema
    lets it end: a list of them gets ``maxItems: 0``, an ``anyOf``/``oneOf`` loses that
    alternative, an optional property is left out. Where it cannot end there (a required
    property, a list with ``minItems``), the cut moves up to the next place that can.

    Returns:
        ``(copy, notes)``: the notes name each definition unrolled (for the attempt's note).
        A schema without recursion comes back as it is, with no notes.
    """
    recursive = recursive_defs(schema)
    if not recursive:
        return schema, []
    # Definitions that lead to a recursive one get a copy per level too (at the same depth).
    leads = {d for d in _defs_of(schema) if d not in recursive and _reaches(schema, d, recursive)}
    out = {k: v for k, v in schema.items() if k not in _DEFS}
    defs = {where: dict(schema[where]) for where in _DEFS if isinstance(schema.get(where), dict)}

    def level(where: str, name: str, depth: int) -> Any:
        copy_name = f"{name}-d{depth}"
        if copy_name not in defs[where]:
            defs[where][copy_name] = {}  # (claimed first: the body may refer to itself)
            body = expand(schema[where][name], depth)
            defs[where][copy_name] = body
        return CUT if defs[where][copy_name] is CUT else f"#/{where}/{copy_name}"

    def expand(node: Any, depth: int) -> Any:
        if isinstance(node, list):
            return [expand(v, depth) for v in node]
        if not isinstance(node, dict):
            return copy.deepcopy(node)
        found = _local(node.get("$ref"))
        if found is not None and (found in recursive or found in leads):
            if found in recursive:
                ref = CUT if depth >= max_depth else level(*found, depth + 1)
            else:
                ref = level(*found, depth)
            return CUT if ref is CUT else {**node, "$ref": ref}
        new: dict[str, Any] = {}
        required = set(node.get("required") or ())
        emptied = False
        for key, value in node.items():
            if key in DATA_KEYWORDS or key in _DEFS:
                new[key] = copy.deepcopy(value)
            elif key in ("properties", "patternProperties") and isinstance(value, dict):
                props = {}
                for prop, sub in value.items():
                    e = expand(sub, depth)
                    if e is CUT and prop in required:
                        return CUT
                    if e is not CUT:
                        props[prop] = e
                new[key] = props
            elif key in ("anyOf", "oneOf") and isinstance(value, list):
                alts = [a for a in (expand(v, depth) for v in value) if a is not CUT]
                if not alts:
                    return CUT
                new[key] = alts
            elif key == "items" and isinstance(value, dict):
                e = expand(value, depth)
                if e is CUT:
                    if node.get("minItems", 0):
                        return CUT
                    new["items"], emptied = {"type": "null"}, True
                else:
                    new["items"] = e
            else:
                e = expand(value, depth)
                if e is CUT or (isinstance(e, list) and any(x is CUT for x in e)):
                    if key != "additionalProperties":
                        return CUT
                    e = False
                new[key] = e
        if emptied:
            new["maxItems"] = 0
        return new

    root = expand(out, 0)
    if root is CUT:  # nothing can end the recursion: leave the schema as it was
        return schema, []
    for where, d in defs.items():  # the originals are no longer referred to: only copies
        root[where] = {k: v for k, v in d.items()
                       if v is not CUT and (where, k) not in recursive and (where, k) not in leads}
    notes = [f"/{w}/{n} unrolled to depth {max_depth}" for w, n in sorted(recursive)]
    return root, notes
