"""Option schemas: a setting's default, type, bounds and doc, declared once and used to validate and resolve.

Every configurable thing (a registry entry's options, the student recipe, the teacher recipe, the
resources of a sweep) declares its settings as a mapping name -> `Option`. `resolve` fills the
defaults and reports every problem with its YAML path, so validation is read from declarations,
not written as branches. Plain Python: no torch, no YAML, nothing from the rest of the project.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

INT64_MAX = (1 << 63) - 1  # the largest integer a Parquet int64 column stores


@dataclass(frozen=True)
class Option:
    """One setting. `kind` is int, float, str or bool (or object with a `check`); `choices` restricts
    values; `min`/`max` are inclusive bounds, `above` an exclusive lower bound; `nullable` admits None.
    `only_for`: the label regimes that read this setting (None: every regime); a trial's id leaves out
    the settings its regime never reads (docs/design.md §5)."""

    default: Any
    kind: type
    doc: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    above: float | None = None
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None  # custom rule: returns a message or None
    only_for: tuple[str, ...] | None = None

    def problems(self, value: Any, path: str) -> list[str]:
        if value is None and self.nullable:
            return []
        if self.check is not None:
            msg = self.check(value)
            return [f"{path}: {value!r} {msg}"] if msg else []
        ok_types: tuple[type, ...] = (int, float) if self.kind is float else (self.kind,)
        if isinstance(value, bool) and self.kind is not bool:
            ok_types = ()
        if not isinstance(value, ok_types) or (isinstance(value, float) and not math.isfinite(value)):
            return [f"{path}: {value!r} is not {_kind_name(self.kind)}; {self.doc}"]
        if self.choices is not None and value not in self.choices:
            return [f"{path}: {value!r} is not allowed; choose one of {', '.join(map(str, self.choices))}"]
        if self.min is not None and value < self.min:
            return [f"{path}: {value!r} must be >= {self.min}; {self.doc}"]
        if self.above is not None and value <= self.above:
            return [f"{path}: {value!r} must be > {self.above}; {self.doc}"]
        upper = self.max if self.max is not None else (INT64_MAX if self.kind is int else None)
        if upper is not None and value > upper:
            return [f"{path}: {value!r} must be <= {upper}; {self.doc}"]
        return []

    def coerce(self, value: Any) -> Any:
        """A float option given as an integer (lr: 1) becomes a float, so equal settings hash equally."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value


def _kind_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, kind.__name__)


def did_you_mean(word: Any, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve(
    schema: Mapping[str, Option], given: Mapping[str, Any] | None, path: str, owner: str
) -> tuple[dict[str, Any], list[str]]:
    """Fill defaults and validate `given` against `schema`. Returns (resolved settings, problems).

    `path` is the YAML path of the mapping (`train`, `grid.selector[2]`); `owner` names what the
    settings belong to in messages (`'el2n'`, `the student recipe`)."""
    given = dict(given or {})
    problems: list[str] = []
    for key in sorted(set(given) - set(schema), key=str):
        known = ", ".join(sorted(schema)) or "none"
        problems.append(f"{path}.{key}: {owner} has no option {key!r}{did_you_mean(key, schema)}; its options: {known}")
    resolved = {}
    for key, opt in schema.items():
        if key in given:
            problems += opt.problems(given[key], f"{path}.{key}")
        resolved[key] = opt.coerce(given.get(key, opt.default))
    return resolved, problems


def defaults(schema: Mapping[str, Option]) -> dict[str, Any]:
    return {k: o.default for k, o in schema.items()}
