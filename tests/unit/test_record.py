"""`cni.record.record` behaves as `@dataclass(frozen=True)` does, for everything pycni relies on:
the same classes are declared both ways and driven through the same operations."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import ClassVar

import pytest

from cni import record as rec


def declare(decorator, field):
    @decorator
    class Point:
        x: int
        y: int = 0
        tags: tuple = ()
        meta: dict = field(default_factory=dict)
        kind: ClassVar[str] = "point"

        def norm(self) -> int:
            return abs(self.x) + abs(self.y)

    @decorator
    class Point3(Point):
        z: int = 0

    return Point, Point3


def declare_pair(decorator):
    @decorator
    class Pair:
        a: int
        b: tuple = ()

    return Pair


BOTH = [pytest.param((dataclasses.dataclass(frozen=True), dataclasses.field, dataclasses.FrozenInstanceError,
                      dataclasses.replace), id="dataclasses"),
        pytest.param((rec.record, rec.field, rec.FrozenInstanceError, rec.replace), id="record")]


@pytest.fixture(params=BOTH)
def kit(request):
    decorator, field, frozen_error, replace = request.param
    point, point3 = declare(decorator, field)
    return point, point3, frozen_error, replace


def test_construction_defaults_and_factories(kit):
    Point, Point3, _, _ = kit
    p = Point(1)
    assert (p.x, p.y, p.tags, p.meta) == (1, 0, (), {})
    assert Point(1).meta is not Point(1).meta            # a fresh dict per instance
    assert Point(1, 2, ("a",)) == Point(x=1, tags=("a",), y=2)
    assert Point3(1, 2, (), {}, 3).z == 3 and Point3(1, y=2, z=4).norm() == 3
    assert Point.kind == "point" and Point.y == 0        # class attributes stay


@pytest.mark.parametrize("call", [
    lambda P: P(),                       # missing required
    lambda P: P(1, 2, (), {}, 5),        # too many positional
    lambda P: P(1, x=2),                 # twice
    lambda P: P(1, colour="red"),        # unknown keyword
    lambda P: P(1, kind="x"),            # a ClassVar is not a field
])
def test_bad_arguments_raise_type_error(kit, call):
    Point = kit[0]
    with pytest.raises(TypeError):
        call(Point)


def test_equality_hash_and_repr(kit):
    Point, Point3, _, _ = kit
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(2, 1)
    assert Point3(1, 2) != Point(1, 2)                   # another class is never equal
    with pytest.raises(TypeError):
        hash(Point(1))                                   # a dict field: unhashable, as with dataclasses
    assert repr(Point(1)).endswith("Point(x=1, y=0, tags=(), meta={})")
    assert (Point(1) == object()) is False
    assert Point.__match_args__ == ("x", "y", "tags", "meta")
    assert Point3.__match_args__ == ("x", "y", "tags", "meta", "z")


@pytest.mark.parametrize("decorator", [dataclasses.dataclass(frozen=True), rec.record],
                         ids=["dataclasses", "record"])
def test_hash_of_field_values(decorator):
    Pair = declare_pair(decorator)
    assert hash(Pair(1, ("a",))) == hash(Pair(1, ("a",))) == hash((1, ("a",)))
    assert len({Pair(1), Pair(1), Pair(2)}) == 2


def test_frozen(kit):
    Point, _, frozen_error, _ = kit
    p = Point(1)
    with pytest.raises(frozen_error):
        p.x = 2
    with pytest.raises(frozen_error):
        del p.y
    with pytest.raises(AttributeError):
        p.new = 1
    assert issubclass(frozen_error, AttributeError)


def test_replace(kit):
    Point, Point3, _, replace = kit
    p = Point3(1, 2, z=3)
    q = replace(p, y=5)
    assert (q.x, q.y, q.z) == (1, 5, 3) and p.y == 2 and type(q) is Point3
    with pytest.raises(TypeError):
        replace(p, colour=1)


def test_declaration_errors():
    with pytest.raises(TypeError):
        @rec.record
        class Bad:
            a: int = 0
            b: int
    with pytest.raises(ValueError):
        @rec.record
        class Mutable:
            a: list = []
    with pytest.raises(ValueError):
        rec.field(default=1, default_factory=int)


def test_fields_and_post_init():
    seen = []

    @rec.record
    class Checked:
        a: int
        b: str = "x"

        def __post_init__(self):
            seen.append((self.a, self.b))

    Checked(1)
    Checked(2, b="y")
    assert seen == [(1, "x"), (2, "y")] and rec.fields(Checked) == ("a", "b")


def test_the_per_pod_path_imports_no_dataclasses():
    """What it is for: an ADD's modules (config, plan, result, IPAM, firewall) load without
    `dataclasses` and `inspect`."""
    code = ("import sys, cni.entry, cni.spec.request, cni.bridge.plugin, cni.bridge.apply, "
            "cni.bridge.check, ipam.plugin, ipam.service, ipam.delegate, cni.firewall.rules, "
            "cni.firewall.iptables, cni.firewall.nft, cni.firewall.policy, cni.portmap.plugin, cni.loopback; "
            "print(sorted({'dataclasses', 'inspect'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
