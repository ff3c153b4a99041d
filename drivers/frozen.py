"""``@frozen``: a frozen, slotted dataclass whose methods are shared functions instead of
code generated for each class.

Why: ``dataclasses.dataclass`` writes each class's ``__init__``, ``__repr__``, ``__eq__``,
``__hash__``, ``__setattr__`` and ``__delattr__`` as source text and compiles it, about
1 ms a frozen class on the test machine (the compiler, not the class, is the cost). The
agent loads some thirty such classes before its first publish (config, device profiles,
store rows), so that was about a fifth of its start-up (docs/performance.md).

``@frozen`` lets ``dataclasses`` collect the fields and make the slotted class while it
generates nothing (``init``, ``repr`` and ``eq`` off), then installs the same methods,
written once here. What a frozen dataclass does, this does: ``dataclasses.fields``,
``replace``, ``asdict`` and ``is_dataclass`` work; an instance cannot be assigned to;
instances compare and hash by their fields as a tuple (so a NaN field equals itself, as
in a dataclass); copy and pickle work. What it does not: ``field(init=False)``,
``kw_only``, ``InitVar``, ``ClassVar`` and inheritance between such classes (refused when
the class is made); ``__dataclass_params__`` describes the ``dataclasses`` call made here, not the
resulting behaviour. Building an instance takes a few microseconds more than a
dataclass's generated ``__init__``: use it for what is made a few times (configuration,
device profiles), not for what is made per message.
``tests/test_frozen.py`` checks each of these against ``dataclasses`` itself.
"""

from __future__ import annotations

import dataclasses
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform

T = TypeVar("T")
_MISSING: Any = dataclasses.MISSING


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def frozen(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, slotted dataclass without generating code (see above)."""
    had_doc = cls.__doc__ is not None
    if not had_doc:  # else dataclasses writes one from inspect.signature: 15 ms the first time
        cls.__doc__ = cls.__name__
    out: Any = dataclasses.dataclass(init=False, repr=False, eq=False, slots=True)(cls)
    fields = dataclasses.fields(out)  # leaves out ClassVar and InitVar pseudo-fields
    if len(fields) != len(out.__dataclass_fields__) or not all(
        f.init and not f.kw_only for f in fields
    ):
        raise TypeError(f"@frozen {cls.__name__}: only plain fields are supported")
    if any(dataclasses.is_dataclass(b) for b in out.__mro__[1:]):
        raise TypeError(f"@frozen {cls.__name__}: inheriting from a dataclass is not supported")
    names = tuple(f.name for f in fields)
    out.__frozen_init__ = tuple((f.name, f.default, f.default_factory) for f in fields)
    out.__frozen_repr__ = tuple(f.name for f in fields if f.repr)
    out.__frozen_key__ = _getter(tuple(f.name for f in fields if f.compare))
    out.__frozen_hash__ = _getter(
        tuple(f.name for f in fields if (f.compare if f.hash is None else f.hash))
    )
    out.__frozen_state__ = _getter(names)
    for name, fn in _METHODS.items():
        setattr(out, name, fn)
    if not had_doc:
        out.__doc__ = f"{cls.__name__}({', '.join(names)})"
    return out  # type: ignore[no-any-return]


def _getter(names: tuple[str, ...]) -> Any:
    """A function of an instance giving the tuple of these fields' values (static: the
    instance is its one argument)."""
    if len(names) > 1:
        return staticmethod(attrgetter(*names))
    one = attrgetter(*names) if names else None
    return staticmethod(lambda obj: (one(obj),) if one else ())


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    spec = self.__frozen_init__
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
    shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__frozen_repr__)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    key = self.__frozen_key__
    return bool(key(self) == key(other))


def _hash(self: Any) -> int:
    return hash(self.__frozen_hash__(self))


def _setattr(self: Any, name: str, value: Any) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def _getstate(self: Any) -> tuple[Any, ...]:
    return tuple(self.__frozen_state__(self))


def _setstate(self: Any, state: tuple[Any, ...]) -> None:
    for name, value in zip(self.__frozen_init__, state, strict=True):
        object.__setattr__(self, name[0], value)


_METHODS = {
    "__init__": _init,
    "__repr__": _repr,
    "__eq__": _eq,
    "__hash__": _hash,
    "__setattr__": _setattr,
    "__delattr__": _delattr,
    "__getstate__": _getstate,
    "__setstate__": _setstate,
}
