"""Which table entry a checkpoint is, and the preflight check of an entry the user names.

Keys and shapes (``gcrepro.convert.structure``) decide the backbone, GC, DCN, cascade and head.
They cannot tell a fixBN row from its SyncBN twin, nor 1x from 2x: those rows have identical keys.
The checkpoint's own metadata decides between twins, strongest first:

1. a record of the entry: a gcrepro checkpoint's run spec, or mmdetection's released file name
   (``gcrepro.mmdet_zoo``);
2. the training config text (mmdetection ``meta["config"]`` / mmengine ``meta["cfg"]``): "SyncBN"
   in it or not; ``total_epochs`` / ``max_epochs`` 12 (1x) or 24 (2x);
3. names (the file name, mmengine's ``experiment_name``): a "syncbn", "1x" or "2x" token.

Without any, the first twin in table order (fixBN, 1x) is taken and the twins are named. An entry
the user names must have the structure of the state dict (else the first difference is named) and
must not contradict 1. or 2. (names only give a note).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from gcrepro.convert.errors import ConvertError
from gcrepro.convert.structure import GC_RATIOS, Structure, stage_names
from gcrepro.entries import Entry, EntryNotFound, get_entry, list_entries

_C3_C5 = (False, True, True, True)
_NONE = (False, False, False, False)
_STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_EPOCHS = re.compile(r"\b(?:total_epochs|max_epochs)\s*=\s*(\d+)")
_SCHEDULES = {"12": "1x", "24": "2x"}
_NORMS = {"fixbn": "fixBN", "syncbn": "SyncBN"}


@dataclass(frozen=True)
class Hint:
    """One fact the metadata states: ``field`` "entry" | "norm" | "schedule"."""

    field: str
    value: str  # an entry name | "fixbn" | "syncbn" | "1x" | "2x"
    source: str  # where it was read, for messages
    strong: bool  # a record or the config (a contradicting --entry is refused) vs a name (a note)

    def contradicts(self, entry: Entry) -> bool:
        return self.value != {"entry": entry.name, "norm": entry.norm, "schedule": entry.schedule}[self.field]

    def text(self) -> str:
        return _NORMS.get(self.value, self.value)


def read_hints(*, path: Path, meta: dict[str, Any], config: str | None, recorded_entry: str | None) -> list[Hint]:
    """What the checkpoint's metadata says about its entry, strongest first."""
    from gcrepro.mmdet_zoo import entry_for_file

    hints = []
    if recorded_entry:
        hints.append(Hint("entry", recorded_entry, "the checkpoint's gcrepro record", True))
    released = entry_for_file(path.name)
    if released:
        hints.append(Hint("entry", released, f"mmdetection's released file name {path.name!r}", True))
    if config is not None:
        where = "the checkpoint's training config"
        hints.append(Hint("norm", "syncbn" if "SyncBN" in config else "fixbn", where, True))
        epochs = _EPOCHS.search(config)
        if epochs and epochs.group(1) in _SCHEDULES:
            hints.append(Hint("schedule", _SCHEDULES[epochs.group(1)], where, True))
    for what, name in (("file name", path.name), ("experiment name", meta.get("experiment_name"))):
        tokens = set(re.split(r"[_\-.\s/]+", name.lower())) if isinstance(name, str) else set()
        if "syncbn" in tokens:
            hints.append(Hint("norm", "syncbn", f"the {what} {name!r}", False))
        hints += [Hint("schedule", s, f"the {what} {name!r}", False) for s in ("1x", "2x") if s in tokens]
    return hints


def _gc_ratio(entry: Entry) -> Fraction | None:
    return Fraction(entry.gc_ratio).limit_denominator(1024) if entry.gc else None


def label(entry: Entry) -> str:
    return f"entry {entry.row} ({entry.name})"


def _backbone_of(entry: Entry) -> str:
    return f"R{entry.depth}" if entry.groups == 1 else f"X{entry.depth}-{entry.groups}x{entry.width_per_group}d"


def differences(s: Structure, entry: Entry, name: Callable[[str], str]) -> list[str]:
    """How the state dict's structure differs from ``entry``'s, in the order a reader checks; [] if it fits.
    ``name`` gives a gcrepro key's name in the source checkpoint."""
    out, e = [], entry
    want_blocks = _STAGE_BLOCKS[e.depth]
    if s.stage_blocks != want_blocks:
        out.append(f"layer3 has {s.stage_blocks[2]} blocks ({s.backbone}); {label(e)} is {_backbone_of(e)} "
                   f"({want_blocks[2]} blocks)" if s.stage_blocks[2] != want_blocks[2] else
                   f"the backbone stages have {s.stage_blocks} blocks; {label(e)} has {want_blocks}")
    if (s.groups, s.width_per_group) != (e.groups, e.width_per_group):
        out.append(f"{name(s.keys['groups'])} has shape {s.shapes['groups']} (groups {s.groups}, "
                   f"{s.width_per_group} wide per group); {label(e)} is {_backbone_of(e)} (groups {e.groups}, "
                   f"{e.width_per_group} per group)")
    gc_want = _C3_C5 if e.gc else _NONE
    if s.gc_stages != gc_want:
        have = f"{name(s.keys['gc'])} is there ({s.gc})" if any(s.gc_stages) else f"no {name(s.keys['gc'])} (no GC)"
        want = f"has GC {e.context_short} in c3-c5" if e.gc else "has no GC"
        out.append(f"{have}; {label(e)} {want}")
    elif e.gc and s.gc_ratio != _gc_ratio(e):
        out.append(f"{name(s.keys['gc_ratio'])} has shape {s.shapes['gc_ratio']}: GC "
                   f"{GC_RATIOS.get(s.gc_ratio, f'ratio {s.gc_ratio}')}; {label(e)} is GC {e.context_short}")
    dcn_want = _C3_C5 if e.dcn else _NONE
    if s.dcn_stages != dcn_want:
        have = (f"{name(s.keys['dcn'])} is there (DCN in {stage_names(s.dcn_stages)})" if any(s.dcn_stages)
                else f"no {name(s.keys['dcn'])} (no DCN)")
        out.append(f"{have}; {label(e)} {'has DCN in c3-c5' if e.dcn else 'has no DCN'}")
    if bool(s.cascade_stages) != e.cascade:
        have = f"{name(s.keys['cascade'])} is there ({'cascade stage 0' if s.cascade_stages else 'Mask R-CNN'})"
        out.append(f"{have}; {label(e)} is {'Cascade Mask R-CNN' if e.cascade else 'Mask R-CNN'}")
    if s.head != e.head:
        out.append(f"{name(s.keys['head'])} is there ({s.head} box head); {label(e)} has the {e.head} head")
    elif e.head == "4conv1fc" and not (s.head_norm and s.fpn_norm):
        missing = s.keys["head_norm"] if not s.head_norm else s.keys["fpn_norm"]
        out.append(f"no {name(missing)} (no norm in the FPN and heads); {label(e)} has SyncBN there")
    elif e.head == "2fc" and s.fpn_norm:
        out.append(f"{name(s.keys['fpn_norm'])} is there (a norm in the FPN); {label(e)} has none")
    return out


def _facts(s: Structure) -> tuple:
    return (s.depth, s.groups, s.width_per_group, any(s.gc_stages), s.gc_ratio, s.gc_stages, s.dcn_stages,
            bool(s.cascade_stages), s.head)


def _entry_facts(e: Entry) -> tuple:
    return (e.depth, e.groups, e.width_per_group, e.gc, _gc_ratio(e), _C3_C5 if e.gc else _NONE,
            _C3_C5 if e.dcn else _NONE, e.cascade, e.head)


def _get(requested: str | int | Entry, where: str) -> Entry:
    try:
        return get_entry(requested)
    except EntryNotFound as err:
        raise ConvertError(f"{where}: --entry: {err}") from None


def check_entry(s: Structure, hints: list[Hint], requested: str | int | Entry, *, name: Callable[[str], str],
                where: str) -> tuple[Entry, list[str]]:
    """The preflight of an entry the user names: its structure and the strong metadata must agree."""
    entry = _get(requested, where)
    found = differences(s, entry, name)
    if found:
        raise ConvertError(f"{where}: {found[0]}")
    notes = []
    for hint in hints:
        if hint.contradicts(entry):
            text = f"{hint.source} says {hint.text()}, but {label(entry)} is not"
            if hint.strong:
                raise ConvertError(f"{where}: {text}; its twin with the same keys is another row (gcrepro table list)")
            notes.append(f"{text}: took --entry")
    return entry, notes


def infer_entry(s: Structure, hints: list[Hint], *, name: Callable[[str], str], where: str) -> tuple[Entry, list[str]]:
    """The entry whose structure the state dict has; twins decided by ``hints`` (see the module docstring)."""
    entries = list_entries()
    candidates = [e for e in entries if not differences(s, e, name)]
    if not candidates:
        closest = min(entries, key=lambda e: sum(a != b for a, b in zip(_facts(s), _entry_facts(e))))
        raise ConvertError(f"{where}: no row of the table is a {s.describe()}; the closest, {label(closest)}, "
                           f"differs: {differences(s, closest, name)[0]}")
    notes = []
    for hint in sorted(hints, key=lambda h: (h.field != "entry", not h.strong)):
        narrowed = [e for e in candidates if not hint.contradicts(e)]
        if not narrowed:
            notes.append(f"{hint.source} says {hint.text()}, but no table row of this structure is: ignored")
        elif len(narrowed) < len(candidates):
            notes.append(f"{hint.source} says {hint.text()}")
            candidates = narrowed
    chosen = candidates[0]
    if len(candidates) > 1:
        twins = ", ".join(f"{e.row} ({e.name})" for e in candidates)
        notes.append(f"rows {twins} have the same keys and shapes and no metadata tells them apart: took row "
                     f"{chosen.row} ({_NORMS[chosen.norm]}, {chosen.schedule}); pass --entry to choose another")
    return chosen, notes
