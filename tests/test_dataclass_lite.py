"""``drivers.dataclass_lite``: ``@frozen`` behaves as ``dataclass(frozen=True, slots=True)``
and ``@mutable`` as ``dataclass`` do, for every use the module documents (pure: no I/O)."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from drivers.dataclass_lite import frozen, mutable


@frozen
class Pair:
    """A frozen record with a default and a factory."""

    name: str
    value: float
    unit: str = "kW"
    tags: list[str] = field(default_factory=list)
    note: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PairDc:
    name: str
    value: float
    unit: str = "kW"
    tags: list[str] = field(default_factory=list)
    note: str = field(default="", compare=False, repr=False)


@frozen
class Point:
    x: int
    y: int
    label: str = field(default="", compare=False)


@dataclass(frozen=True)
class PointDc:
    x: int
    y: int
    label: str = field(default="", compare=False)


@frozen
class Empty:
    pass


def both(*args: object, **kwargs: object) -> tuple[object, object]:
    return Pair(*args, **kwargs), PairDc(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("a", 1.0), {}),
        (("a",), {"value": 2.5, "unit": "MWh"}),
        ((), {"name": "b", "value": 0.0, "tags": ["x"]}),
        (("c", 3.0, "m3", ["y"], "n"), {}),
    ],
)
def test_same_fields_values_repr_and_dict_as_a_dataclass(
    args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    f, d = both(*args, **kwargs)
    assert [x.name for x in dataclasses.fields(f)] == [x.name for x in dataclasses.fields(d)]  # type: ignore[arg-type]
    assert dataclasses.asdict(f) == dataclasses.asdict(d)  # type: ignore[call-overload]
    assert repr(f) == repr(d).replace("PairDc(", "Pair(")
    assert Pair.__match_args__ == PairDc.__match_args__
    assert Pair.__slots__ == PairDc.__slots__  # type: ignore[attr-defined]
    assert not hasattr(f, "__dict__")
    assert dataclasses.is_dataclass(f) and dataclasses.is_dataclass(Pair)


def test_equality_and_hash_by_compared_fields_only() -> None:
    a, b = Pair("a", 1.0, note="one"), Pair("a", 1.0, note="two")
    assert a == b
    with pytest.raises(TypeError, match="unhashable"):  # a list field, as in a dataclass
        hash(a)
    p, q = Point(1, 2, "one"), Point(1, 2, "two")
    assert p == q and hash(p) == hash(q) == hash(PointDc(1, 2, "three")) == hash((1, 2))
    assert Pair("a", 1.0) != Pair("a", 2.0)
    other: object = PairDc("a", 1.0)
    assert Pair("a", 1.0) != other  # another class is never equal
    assert Pair("a", 1.0).__eq__(("a", 1.0, "kW", [])) is NotImplemented
    nan = Pair("a", math.nan)
    assert nan == nan  # the field tuples hold the same object, as in a dataclass
    assert PairDc("a", math.nan) != PairDc("a", float("nan"))
    assert Pair("a", math.nan) != Pair("a", float("nan"))
    assert {Empty(): 1}[Empty()] == 1 and repr(Empty()) == "Empty()"


def test_immutable_like_a_frozen_dataclass() -> None:
    f = Pair("a", 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.value = 2.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del f.value
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError)):
        f.other = 1  # type: ignore[attr-defined]
    assert f.value == 1.0


def test_replace_copy_and_pickle() -> None:
    f = Pair("a", 1.0, tags=["t"])
    g = dataclasses.replace(f, value=2.0)
    assert (g.name, g.value, g.tags) == ("a", 2.0, ["t"]) and f.value == 1.0
    for h in (copy.copy(f), copy.deepcopy(f), pickle.loads(pickle.dumps(f))):
        assert h == f and h is not f and type(h) is Pair and h.note == f.note
    assert copy.deepcopy(f).tags is not f.tags


def test_default_factory_is_called_per_instance() -> None:
    a, b = Pair("a", 1.0), Pair("b", 1.0)
    assert a.tags == [] and a.tags is not b.tags


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {"value": 1.0}, "missing required argument: 'name'"),
        (("a", 1.0, "u", [], "n", "extra"), {}, "takes 5 positional arguments but 6"),
        (("a", 1.0), {"name": "b"}, "multiple values for 'name'"),
        (("a", 1.0), {"colour": "red"}, "unexpected keyword argument 'colour'"),
    ],
)
def test_wrong_arguments_are_refused_as_a_dataclass_refuses_them(
    args: tuple[object, ...], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        Pair(*args, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PairDc(*args, **kwargs)  # type: ignore[arg-type]


def test_what_it_does_not_support_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="only plain fields"):

        @mutable
        class NoInit:
            a: int = field(init=False, default=1)

    with pytest.raises(TypeError, match="only plain fields"):

        @frozen
        class KwOnly:
            a: int = field(kw_only=True)

    with pytest.raises(TypeError, match="only plain fields"):

        @frozen
        class WithClassVar:
            a: int
            limit: ClassVar[int] = 3

    with pytest.raises(TypeError, match="inherit"):

        @frozen
        class Child(PairDc):
            extra: int = 0


def test_no_code_is_compiled_for_a_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of it: no per-class compile (``dataclasses`` compiles six functions)."""
    compiled: list[str] = []
    real = dataclasses._create_fn  # type: ignore[attr-defined]

    def spy(name: str, *a: object, **k: object) -> object:
        compiled.append(name)
        return real(name, *a, **k)

    monkeypatch.setattr(dataclasses, "_create_fn", spy)

    @frozen
    class Light:
        a: int
        b: str = "x"

    assert compiled == [] and Light(1) == Light(1, "x")
    assert Light.__doc__ == "Light(a, b)" and Pair.__doc__ is not None
    assert Pair.__doc__.startswith("A frozen record")

    @dataclass(frozen=True)
    class Heavy:
        a: int

    assert len(compiled) >= 4  # the spy sees what dataclasses compiles


@mutable
class State:
    """Mutable bookkeeping."""

    count: int = 0
    seen: set[int] = field(default_factory=set)
    label: str = field(default="", compare=False)


@dataclass
class StateDc:
    count: int = 0
    seen: set[int] = field(default_factory=set)
    label: str = field(default="", compare=False)


def test_mutable_as_a_dataclass() -> None:
    s, d = State(), StateDc()
    assert repr(s) == repr(d).replace("StateDc(", "State(")
    s.count += 1
    s.seen.add(3)
    s.extra = 1  # type: ignore[attr-defined]  # no slots, as a plain dataclass
    assert (s.count, s.seen) == (1, {3}) and State().seen == set()
    assert State(1, {3}, "a") == State(1, {3}, "b") != State(2)
    assert dataclasses.asdict(State(2)) == dataclasses.asdict(StateDc(2))
    assert dataclasses.replace(s, count=5).count == 5
    assert State.__hash__ is None and StateDc.__hash__ is None
    with pytest.raises(TypeError, match="unhashable"):
        hash(s)
    assert copy.deepcopy(s) == s and pickle.loads(pickle.dumps(State(4))) == State(4)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        State(colour=1)
