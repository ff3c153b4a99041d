"""Dataclasses without code generated per class: ``@frozen`` (a frozen, slotted dataclass)
and ``@mutable`` (a plain dataclass).

Why: ``dataclasses.dataclass`` writes each class's ``__init__``, ``__repr__``, ``__eq__``
(and for a frozen one ``__hash__``, ``__setattr__``, ``__delattr__``) as source text and
compiles it: about 1 ms a frozen class, 0.6 ms a plain one on the test machine (the
compiler is the cost, not the class). The agent loads some thirty such classes before its
first publish (config, device profiles, readings, store rows, uplink state): about a fifth
of its start-up (docs/performance.md).

Both decorators let ``dataclasses`` collect the fields (and make the slotted class) while
it generates nothing (``init``, ``repr`` and ``eq`` off), then install the same methods,
written once here. What the dataclass does, this does: ``dataclasses.fields``,
``replace``, ``asdict`` and ``is_dataclass`` work; instances compare by their fields as a
tuple (so a NaN field equals itself, as in a dataclass); a frozen instance cannot be
assigned to, hashes by its fields and copies and pickles; a mutable one is unhashable.
What it does not: ``field(init=False)``, ``kw_only``, ``InitVar``, ``ClassVar`` and
inheritance between such classes (refused when the class is made);
``__dataclass_params__`` describes the ``dataclasses`` call made here, not the resulting
behaviour. Building an instance takes about a microsecond more than a generated
``__init__``: use them for what is made a few times a second at most, not per message of
a drain. ``tests/test_dataclass_lite.py`` checks each of these against ``dataclasses``.
"""

from __future__ import annotations

import dataclasses
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")
_MISSING: Any = dataclasses.MISSING


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def frozen(cls: type[T]) -> type[T]:
    """``@dataclass(frozen=True, slots=True)`` without generated code (see above)."""
    out = _prepare(cls, slots=True)
    out.__lite_hash__ = _getter(
        tuple(f.name for f in dataclasses.fields(out) if (f.compare if f.hash is None else f.hash))
    )
    for name, fn in _FROZEN.items():
        setattr(out, name, fn)
    return out  # type: ignore[no-any-return]


@dataclass_transform(field_specifiers=(dataclasses.field,))
def mutable(cls: type[T]) -> type[T]:
    """``@dataclass`` without generated code (see above)."""
    out = _prepare(cls, slots=False)
    out.__hash__ = None
    return out  # type: ignore[no-any-return]


def _prepare(cls: type, slots: bool) -> Any:
    had_doc = cls.__doc__ is not None
    if not had_doc:  # else dataclasses writes one from inspect.signature: 15 ms the first time
        cls.__doc__ = cls.__name__
    out: Any = dataclasses.dataclass(init=False, repr=False, eq=False, slots=slots)(cls)
    fields = dataclasses.fields(out)  # leaves out ClassVar and InitVar pseudo-fields
    if len(fields) != len(out.__dataclass_fields__) or not all(
        f.init and not f.kw_only for f in fields
    ):
        raise TypeError(f"{cls.__name__}: only plain fields are supported")
    if any(dataclasses.is_dataclass(b) for b in out.__mro__[1:]):
        raise TypeError(f"{cls.__name__}: inheriting from a dataclass is not supported")
    out.__lite_init__ = tuple((f.name, f.default, f.default_factory) for f in fields)
    out.__lite_repr__ = tuple(f.name for f in fields if f.repr)
    out.__lite_key__ = _getter(tuple(f.name for f in fields if f.compare))
    out.__init__ = _init
    out.__repr__ = _repr
    out.__eq__ = _eq
    if not had_doc:
        out.__doc__ = f"{cls.__name__}({', '.join(f.name for f in fields)})"
    return out


def _getter(names: tuple[str, ...]) -> Any:
    """A function of an instance giving the tuple of these fields' values (static: the
    instance is its one argument)."""
    if len(names) > 1:
        return staticmethod(attrgetter(*names))
    one = attrgetter(*names) if names else None
    return staticmethod(lambda obj: (one(obj),) if one else ())


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    spec = self.__lite_init__
    if len(args) > len(spec):
        raise TypeError(
            f"{type(self).__name__}() takes {len(spec)} positional arguments"
            f" but {len(args)} were given"
        )
    put = object.__setattr__
    for i, (name, default, factory) in enumerate(spec):
        if i < len(args):
            if name in kwargs:
                raise TypeError(f"{type(self).__name__}() got multiple values for {name!r}")
            put(self, name, args[i])
        elif name in kwargs:
            put(self, name, kwargs.pop(name))
        elif default is not _MISSING:
            put(self, name, default)
        elif factory is not _MISSING:
            put(self, name, factory())
        else:
            raise TypeError(f"{type(self).__name__}() missing required argument: {name!r}")
    if kwargs:
        raise TypeError(
            f"{type(self).__name__}() got an unexpected keyword argument {next(iter(kwargs))!r}"
        )


def _repr(self: Any) -> str:
    shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__lite_repr__)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    key = self.__lite_key__
    return bool(key(self) == key(other))


def _hash(self: Any) -> int:
    return hash(self.__lite_hash__(self))


def _setattr(self: Any, name: str, value: Any) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def _getstate(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name, _, _ in self.__lite_init__)


def _setstate(self: Any, state: tuple[Any, ...]) -> None:
    for (name, _, _), value in zip(self.__lite_init__, state, strict=True):
        object.__setattr__(self, name, value)


_FROZEN = {
    "__hash__": _hash,
    "__setattr__": _setattr,
    "__delattr__": _delattr,
    "__getstate__": _getstate,
    "__setstate__": _setstate,
}
