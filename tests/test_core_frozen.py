"""`quick_init`: the request path's frozen records keep every dataclass behaviour with a
cheaper `__init__`."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from capgate.core.engine import Amounts, Applicable, Charge, CounterState, Headroom, OutputFlex
from capgate.core.frozen import quick_init
from capgate.core.limits import Metric
from capgate.core.money import Usage
from capgate.store.base import Outcome, RequestInfo, Reservation


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    x: int
    y: int = 7
    label: str | None = None


def test_same_values_defaults_and_errors_as_the_dataclass() -> None:
    assert Point(1) == Point(x=1, y=7, label=None)
    assert (Point(1, 2, "a").x, Point(1, 2, "a").y, Point(1, 2, "a").label) == (1, 2, "a")
    assert Point(y=3, x=1) == Point(1, 3)
    assert repr(Point(1)) == "Point(x=1, y=7, label=None)"
    assert hash(Point(1, 2)) == hash(Point(1, 2)) and {Point(1), Point(1)} == {Point(1)}
    assert Point(1) != Point(2)
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, 2, "a", 4)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, z=2)  # type: ignore[call-arg]
    assert Point.__init__.__qualname__ == "Point.__init__"


def test_still_frozen_and_replaceable() -> None:
    p = Point(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    assert dataclasses.replace(p, y=9) == Point(1, 9)
    assert pickle.loads(pickle.dumps(p)) == p


def test_refuses_what_it_does_not_handle() -> None:
    with pytest.raises(TypeError, match="frozen=True, slots=True"):

        @quick_init
        @dataclasses.dataclass(frozen=True)
        class NoSlots:
            x: int

    with pytest.raises(TypeError, match="plain fields"):

        @quick_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class Factory:
            x: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="plain fields"):

        @quick_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class PostInit:
            x: int

            def __post_init__(self) -> None:
                pass


@pytest.mark.parametrize(
    "cls", [Amounts, CounterState, Applicable, Charge, Headroom, OutputFlex, Usage, RequestInfo,
            Reservation, Outcome],
)  # fmt: skip
def test_the_hot_records_use_it_and_keep_their_fields(cls: type) -> None:
    fields = [f.name for f in dataclasses.fields(cls)]
    names = cls.__init__.__code__.co_names  # the dataclass's own sets via object.__setattr__
    assert "__dataclass_builtins_object__" not in names and f"_set_{fields[0]}" in names
    assert list(cls.__init__.__code__.co_varnames[1 : 1 + len(fields)]) == fields


def test_hot_records_behave_as_before() -> None:
    assert Amounts(1, 2) == Amounts(requests=1, input_tokens=2, output_tokens=0)
    assert Charge("k", 0, Metric.REQUESTS, 1) == Charge("k", 0, Metric.REQUESTS, 1)
    outcome = Outcome(200, "ok", Usage(1, 2), 5, 1.0)
    assert (outcome.attempts, outcome.flags, outcome.requests, outcome.cache) == (1, (), 1, None)
    assert dataclasses.replace(outcome, flags=("x",)).flags == ("x",)
    info = RequestInfo("r", "k", "m", "p", "m", "/v1/chat/completions", False, 1.0, rule="a")
    assert (info.refusal_status, info.session, info.prompt, info.rule) == (None, None, None, "a")
