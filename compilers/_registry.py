"""Backends by name: ``register_compiler`` / ``get_compiler``.

A backend is registered as a class or as a ``"module:Class"`` string, imported on first use, so
``import compilers`` does not import the TVM backend (nor TVM).
"""

from __future__ import annotations

import importlib

from ._base import Compiler

__all__ = ["compiler_names", "get_compiler", "register_compiler"]

_COMPILERS: dict[str, type[Compiler] | str] = {}


def register_compiler(name: str, compiler: type[Compiler] | str, *, replace: bool = False) -> None:
    """Register backend ``name``: a ``Compiler`` subclass or a lazy ``"module:Class"`` path."""
    if name in _COMPILERS and not replace:
        raise ValueError(f"compiler {name!r} is already registered.")
    _COMPILERS[name] = compiler


def compiler_names() -> tuple[str, ...]:
    return tuple(_COMPILERS)


def get_compiler(name: str, **options: object) -> Compiler:
    """The backend called ``name``; ``options`` go to its constructor."""
    if name not in _COMPILERS:
        raise ValueError(f"compiler name must be one of {compiler_names()}, but got {name!r}.")
    entry = _COMPILERS[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        _COMPILERS[name] = entry
    return entry(**options)
