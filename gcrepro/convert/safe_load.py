"""Read any checkpoint file without running code from it: ``load_checkpoint_any(path) -> dict``.

1. ``torch.load(weights_only=True)``: tensors and plain Python types only.
2. Where that refuses, the file's pickle is read as opcodes (``pickletools``; nothing is built or
   imported) to list the classes and functions it names. Any name outside ``STAND_INS`` (and outside
   torch's own weights-only list) is refused with one line naming it.
3. Otherwise it is loaded again, still ``weights_only=True``, with each allow-listed name mapped to
   an inert stand-in of ours: ``Dropped`` objects that accept any arguments, keep nothing and run
   nothing. mmengine-era checkpoints need this: next to the state dict they pickle a message hub
   with ``HistoryBuffer`` objects of numpy arrays, and numpy scalars in their metadata (torchvision's
   reference training scripts: an ``argparse.Namespace``). The state dict itself is tensors and never
   meets a stand-in.

A truncated or corrupt file, or one that is not a checkpoint, gets a one-line ``ConvertError``.
"""
from __future__ import annotations

import _compat_pickle
import io
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from gcrepro.convert.errors import ConvertError


class Dropped:
    """An allow-listed non-tensor object, replaced on load: keeps no state, runs no code.

    ``origin`` (a class attribute set here, never from the file) names what it stands for.
    """

    __slots__ = ()
    origin = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Dropped":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<dropped {self.origin}>"


# pickle global -> what it is. numpy spells its module numpy.core (1.x) or numpy._core (2.x).
_ALLOWED = {
    "numpy.core.multiarray._reconstruct": "numpy array",
    "numpy._core.multiarray._reconstruct": "numpy array",
    "numpy.ndarray": "numpy array",
    "numpy.dtype": "numpy dtype",
    "numpy.core.multiarray.scalar": "numpy scalar",
    "numpy._core.multiarray.scalar": "numpy scalar",
    "mmengine.logging.history_buffer.HistoryBuffer": "mmengine HistoryBuffer",
    "mmengine.logging.message_hub.MessageHub": "mmengine MessageHub",
    # a HistoryBuffer pickles its statistics methods as getattr(HistoryBuffer, "mean"): never called here
    "builtins.getattr": "a method looked up by getattr",
    "argparse.Namespace": "command-line arguments",  # torchvision's reference scripts save theirs as "args"
}
# One stand-in class per name: torch accepts an object's state only for allow-listed types.
STAND_INS: dict[str, type[Dropped]] = {
    name: type(f"Dropped_{name.replace('.', '_')}", (Dropped,), {"__slots__": (), "origin": what})
    for name, what in _ALLOWED.items()
}

_LEGACY_PICKLES = 5  # torch's pre-zip format: magic number, protocol, system info, the object, storage keys
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def _global_name(module: str, name: str) -> str:
    """``module.name`` as the unpickler resolves it (Python 2 names such as ``__builtin__`` mapped)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _globals_of_pickle(stream: io.BufferedIOBase, found: list[str]) -> None:
    """Append the ``module.name`` globals one pickle in ``stream`` names, in order, to ``found`` (also those
    before a truncation); reads opcodes only."""
    strings: list[str] = []  # recent string pushes: STACK_GLOBAL takes module and name from the stack
    for op, arg, _ in pickletools.genops(stream):
        if op.name in _STRING_OPS:
            strings.append(str(arg))
        elif op.name in ("GLOBAL", "INST"):
            found.append(_global_name(*str(arg).split(" ", 1)))
        elif op.name == "STACK_GLOBAL":
            found.append(_global_name(*strings[-2:]) if len(strings) >= 2 else "<a global built on the stack>")


class _Bounded:
    """A binary file whose ``read(n)`` never asks for more than what is left: a corrupt length field of 2**60
    (random bytes read as BINUNICODE8, say) must end as a truncation, not as a MemoryError."""

    def __init__(self, f: io.BufferedIOBase, size: int) -> None:
        self.f, self.size = f, size

    def read(self, n: int = -1) -> bytes:
        left = max(self.size - self.f.tell(), 0)
        return self.f.read(left if n is None or n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.f.readline()

    def tell(self) -> int:
        return self.f.tell()


def pickle_globals(path: Path) -> list[str]:
    """Every class or function the checkpoint's pickles name (zip or legacy torch format, or a bare pickle)."""
    found: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")), None)
                if name is None:
                    raise ConvertError(f"{path}: a zip archive without data.pkl, not a torch.save checkpoint")
                _globals_of_pickle(io.BytesIO(archive.read(name)), found)
                return found
        with open(path, "rb") as f:
            bounded = _Bounded(f, path.stat().st_size)
            for i in range(_LEGACY_PICKLES):
                try:
                    _globals_of_pickle(bounded, found)
                except ValueError:
                    if i == 0:
                        raise
                    break  # the end of a bare pickle, the storage bytes after the last one, or a truncation
        return found
    except (ValueError, EOFError, zipfile.BadZipFile, OSError, MemoryError) as err:
        raise _unreadable(path, err) from None


def _torch_allows(name: str) -> bool:
    from torch import _weights_only_unpickler

    return name in _weights_only_unpickler._get_allowed_globals()


def _reason(err: BaseException) -> str:
    """What went wrong, in one short line, never torch's advice to load without weights_only."""
    text = str(err)
    if "WeightsUnpickler error:" in text:  # torch wraps the unpickler's own error in its advice
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = (text.strip().splitlines() or [""])[0].split(". ")[0][:160]
    if not first or "weights only" in first.lower() or "weights_only" in first:
        return type(err).__name__
    return f"{type(err).__name__}: {first}"


def _unreadable(path: Path, err: BaseException) -> ConvertError:
    return ConvertError(f"{path}: not a readable checkpoint (truncated or corrupt? {_reason(err)})")


def _load(path: Path, names: list[str]) -> Any:
    with torch.serialization.safe_globals([(STAND_INS[n], n) for n in names]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _load_with_stand_ins(path: Path) -> Any:
    try:
        return _load(path, [])
    except pickle.UnpicklingError:
        pass  # refused a global, or not a pickle at all: the opcodes tell which
    except Exception as err:  # noqa: BLE001 - torch's zip and legacy readers raise several types
        raise _unreadable(path, err) from None
    names = list(dict.fromkeys(pickle_globals(path)))  # in file order, once each
    refused = [n for n in names if n not in STAND_INS and not _torch_allows(n)]
    if refused:
        raise ConvertError(f"{path}: refused to load {refused[0]} (not a tensor, a plain type or an allow-listed "
                           "class; loading it could run code from the file)")
    try:
        return _load(path, [n for n in names if n in STAND_INS])
    except Exception as err:  # noqa: BLE001
        raise _unreadable(path, err) from None


def load_checkpoint_any(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict, read without running code from it (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ConvertError(f"{path}: empty file, not a checkpoint")
    with warnings.catch_warnings():  # e.g. torch's note on pickle protocols: the error line says what matters
        warnings.simplefilter("ignore")
        obj = _load_with_stand_ins(path)
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: holds a {type(obj).__name__}; expected a checkpoint dict or a state dict")
    return obj
