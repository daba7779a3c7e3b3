"""Key renaming by templates that work both ways.

A ``Rule`` pairs a source template with a gcrepro template, e.g.
``("neck.lateral_convs.{k}.conv.{p}", "backbone.fpn.inner_blocks.{k}.0.{p}")``. Fields: ``{i} {j} {k}
{s}`` match digits, ``{p}`` a parameter or buffer name (``weight``, ``running_mean``), ``{rest}`` anything.
``rename`` applies the first rule that matches each key, forwards (source -> gcrepro) or backwards.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from torch import Tensor

from gcrepro.convert.errors import ConvertError

_FIELD = re.compile(r"\{(\w+)\}")
_PATTERNS = {"i": r"\d+", "j": r"\d+", "k": r"\d+", "s": r"\d+", "p": r"[A-Za-z_]+", "rest": r".+"}


def _compile(template: str) -> re.Pattern:
    parts, pos = [], 0
    for m in _FIELD.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        parts.append(f"(?P<{m.group(1)}>{_PATTERNS[m.group(1)]})")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts) + r"\Z")


@dataclass(frozen=True)
class Rule:
    source: str
    target: str
    _patterns: tuple[re.Pattern, re.Pattern] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_patterns", (_compile(self.source), _compile(self.target)))

    def apply(self, key: str, *, backwards: bool = False) -> str | None:
        """``key`` renamed by this rule, or None when it does not match."""
        m = self._patterns[1 if backwards else 0].match(key)
        return None if m is None else (self.source if backwards else self.target).format(**m.groupdict())


def rename(keys: list[str], rules: list[Rule], *, backwards: bool = False) -> tuple[dict[str, str], list[str]]:
    """``({old: new}, [keys no rule matches])``; the first matching rule wins."""
    renamed: dict[str, str] = {}
    unmatched: list[str] = []
    for key in keys:
        new = next((n for n in (r.apply(key, backwards=backwards) for r in rules) if n is not None), None)
        if new is None:
            unmatched.append(key)
        else:
            renamed[key] = new
    return renamed, unmatched


@dataclass
class Mapped:
    """A source state dict in gcrepro names, and what it took."""

    tensors: dict[str, Tensor]  # gcrepro key -> tensor
    origin: dict[str, str]  # gcrepro key -> the source key it came from
    unmatched: list[str]  # source keys no rule renames
    rules: list[Rule]  # source -> gcrepro
    counts: Counter = field(default_factory=Counter)  # kept, renamed, reordered, background_rows
    notes: list[str] = field(default_factory=list)

    def source_key(self, key: str) -> str:
        """The source's name for the gcrepro key ``key``: where it came from, or would have."""
        if key in self.origin:
            return self.origin[key]
        return next((n for n in (r.apply(key, backwards=True) for r in self.rules) if n is not None), key)


def apply_rules(state_dict: dict[str, Tensor], rules: list[Rule], *, where: str) -> Mapped:
    """``state_dict`` renamed by ``rules`` (source -> gcrepro); two keys landing on one name raise."""
    renamed, unmatched = rename(list(state_dict), rules)
    tensors: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for old, new in renamed.items():
        if new in tensors:
            raise ConvertError(f"{where}: keys {origin[new]} and {old} would both become {new}")
        tensors[new], origin[new] = state_dict[old], old
    moved = sum(old != new for old, new in renamed.items())
    return Mapped(tensors, origin, unmatched, rules, Counter(renamed=moved, kept=len(renamed) - moved))
