"""One home per config key: its line in ``properties/``, holding its default, its comment and,
in RecBole's ``# (type) comment`` style, its check.

``lora_r: 8  # (int >= 1) LoRA rank`` is the whole declaration of ``lora_r``: the config check
reads the check from the parentheses, ``--help``-style listings the comment, the merged config
the default. A key is declared once, in a defining file (``overall.yaml``, ``cpt.yaml``,
``text_encoder.yaml``, ``model/*.yaml``); other lines that set it (a model's own default, a
profile, a dataset) carry a comment saying why, and no check. The checks::

    int | float [>= N | > N | in [a, b] | in (a, b) ...]   a number and its range
    bool | str | list | dict | list or str | any             a type (``any``: not checked)
    ascending ints                                           a non-empty ascending int list
    one of a, b, c | one of NAME                             a fixed set (NAME: in llm/names.py)
    registered KIND                                          a name a plugin registers (backbones)

each optionally followed by ``or null``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cprec_recbole.config import PROPERTIES
from cprec_recbole.errors import ConfigError
from cprec_recbole.llm import names

#: Files that declare keys (each key's check lives in exactly one of them); the rest of
#: ``properties/`` (profiles, datasets) only sets values.
DEFINING = ("overall.yaml", "cpt.yaml", "text_encoder.yaml", "model/*.yaml")
#: Files that set keys declared elsewhere; experiments are not config layers.
SETTING = ("profile/*.yaml", "dataset/*.yaml")
#: Why a tempting value is missing from a choice list of llm/names.py (its error says so).
REFUSED = {"DTYPE_CHOICES": names.FP16_REFUSED}
_KEY = re.compile(r"^([A-Za-z_][\w@]*)\s*:(.*)$")
_RANGE = re.compile(r"^(>=|>) (-?[\d.e+-]+)$|^in ([\[(])(-?[\d.e+-]+), (-?[\d.e+-]+)([\])])$")


@dataclass(frozen=True)
class Number:
    """A numeric key's range; ``integer`` also rejects 0.5, ``nullable`` lets null through."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False
    hi_open: bool = False
    nullable: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.lo == 0 and self.lo_open and self.hi is None:
            text = f"a positive {kind.split()[-1]}"
        elif self.hi is None and self.lo is not None:
            text = f"{kind} >= {self.lo:g}"
        elif self.lo is not None:
            text = f"{kind} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
            text += ")" if self.hi_open else "]"
        else:
            text = kind
        return text + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value) or (self.integer and not float(value).is_integer()):
            return False
        low = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        high = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return low and high


@dataclass(frozen=True)
class Choice:
    """A key that takes one of a fixed set of values; ``why`` says why a tempting one is not."""

    options: tuple[Any, ...]
    nullable: bool = False
    why: str = ""

    def describe(self) -> str:
        text = "one of " + ", ".join(map(str, self.options)) + (" or null" if self.nullable else "")
        return f"{text} ({self.why})" if self.why else text

    def accepts(self, value: Any) -> bool:
        return (value is None and self.nullable) or value in self.options


#: The Python types a ``Kind`` check names.
TYPES = {
    "bool": (bool,),
    "str": (str,),
    "list": (list,),
    "dict": (dict,),
    "list or str": (list, str),
}
_TYPE_NAMES = {
    "bool": "true or false",
    "str": "a string",
    "list": "a list",
    "dict": "a mapping",
    "list or str": "a list or a string",
    "ascending ints": "a non-empty ascending list of integers",
    "any": "anything",
}


@dataclass(frozen=True)
class Kind:
    """A key of one type (or any: not checked)."""

    name: str
    nullable: bool = False

    def describe(self) -> str:
        return _TYPE_NAMES[self.name] + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if self.name == "any" or (value is None and self.nullable):
            return True
        if self.name == "ascending ints":
            ints = isinstance(value, list) and all(type(v) is int for v in value)
            return ints and len(value) > 0 and value == sorted(value)
        return isinstance(value, TYPES[self.name]) and not (
            isinstance(value, bool) and bool not in TYPES[self.name]
        )


@dataclass(frozen=True)
class Registered:
    """A key whose value names something a plugin registers (``registry``: a ``Plugins``
    attribute, such as ``backbones``)."""

    registry: str
    nullable: bool = False

    def describe(self) -> str:
        return f"a registered {self.registry[:-1].replace('_', ' ')}"


Rule = Number | Choice | Kind | Registered


def _number(kind: str, bounds: str, nullable: bool) -> Number:
    integer = kind == "int"
    if not bounds:
        return Number(integer=integer, nullable=nullable)
    found = _RANGE.match(bounds)
    if found is None:
        raise ValueError(f"cannot read the range {bounds!r}")
    op, low, lo_bracket, lo, hi, hi_bracket = found.groups()
    if op:
        return Number(float(low), integer=integer, lo_open=op == ">", nullable=nullable)
    return Number(
        float(lo), float(hi), integer, lo_bracket == "(", hi_bracket == ")", nullable=nullable
    )


def parse_rule(text: str) -> Rule:
    """The check written inside a comment's leading parentheses (see the module docstring)."""
    nullable = text.endswith(" or null")
    body = text.removesuffix(" or null").strip()
    head, _, rest = body.partition(" ")
    if head in ("int", "float"):
        return _number(head, rest, nullable)
    if body.startswith("one of "):
        listed = body.removeprefix("one of ")
        if re.fullmatch(r"[A-Z0-9_]+", listed) and hasattr(names, listed):
            return Choice(tuple(getattr(names, listed)), nullable, REFUSED.get(listed, ""))
        return Choice(tuple(item.strip() for item in listed.split(",")), nullable)
    if head == "registered" and rest:
        return Registered(rest, nullable)
    if body in _TYPE_NAMES:
        return Kind(body, nullable)
    raise ValueError(f"cannot read the check {text!r}")


def _leading_check(comment: str) -> tuple[Rule | None, str]:
    """``(int >= 1) LoRA rank`` -> (its rule, ``LoRA rank``). A range may end in ``)``
    (``float in [0, 1)``), so the check ends at the first ``)`` after which it reads."""
    if not comment.startswith("("):
        return None, comment
    ends = [i for i, char in enumerate(comment) if char == ")"]
    for end in ends:
        try:
            return parse_rule(comment[1:end]), comment[end + 1 :].strip()
        except ValueError:
            continue
    raise ValueError(f"cannot read the check in {comment!r}")


@dataclass(frozen=True)
class KeyLine:
    """A top-level key's line in a property file: its comment and, in a defining file, its
    check (None: none written)."""

    key: str
    path: Path
    line: int
    comment: str
    rule: Rule | None


def declarations(path: Path) -> list[KeyLine]:
    """The top-level keys of a property file with their comments and checks."""
    out = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        found = _KEY.match(text)
        if found is None:
            continue
        comment = re.search(r"\s#\s?(.*)$", found.group(2))
        try:
            rule, words = _leading_check(comment.group(1).strip() if comment else "")
        except ValueError as exc:
            raise ConfigError(f"{path}:{number}: key {found.group(1)!r}: {exc}") from None
        out.append(KeyLine(found.group(1), path, number, words, rule))
    return out


def property_files(patterns: Iterable[str], root: Path = PROPERTIES) -> list[Path]:
    return [path for pattern in patterns for path in sorted(root.glob(pattern))]


@functools.cache
def rules() -> dict[str, Rule]:
    """Each declared key's check, from the defining files."""
    out: dict[str, Rule] = {}
    where: dict[str, str] = {}
    for path in property_files(DEFINING):
        for line in declarations(path):
            if line.rule is None:
                continue
            if line.key in out:
                raise ConfigError(
                    f"{path}:{line.line}: key {line.key!r} is declared again (first at "
                    f"{where[line.key]}); keep its check in one place"
                )
            out[line.key], where[line.key] = line.rule, f"{path}:{line.line}"
    return out
