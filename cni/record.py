"""Frozen records for the per-pod path: what `@dataclass(frozen=True)` gives, at a fraction of its
start-up cost.

Why not `dataclasses` there: a CNI plugin is a process started per pod, and on this machine
`import dataclasses` costs ~5 ms (it imports `inspect`, hence `ast`, `dis` and `tokenize`) and each
frozen dataclass ~0.4-1.0 ms more to define (it compiles six methods with `exec`, then calls
`inspect.signature` to write a docstring): ~13 ms of every ADD for the 14 records a call defines.
`record` builds the same methods from closures, in ~0.03 ms a class.

Same behaviour as `@dataclass(frozen=True)` for what pycni uses: fields from the class's own
annotations (and those of record bases) in order; defaults, `field(default_factory=...)`; `__init__`
by position or keyword; `__repr__`; `__eq__` between instances of the same class; `__hash__` of the
field values; assignment raising `FrozenInstanceError` (an `AttributeError`); `__match_args__`;
`replace()`; `fields()` (names). `ClassVar` annotations are not fields. The agent and the tools, not
started per pod, keep `dataclasses`.
"""

from __future__ import annotations

_MISSING = object()


class FrozenInstanceError(AttributeError):
    pass


class _Field:
    __slots__ = ("default", "default_factory")

    def __init__(self, default, default_factory):
        self.default, self.default_factory = default, default_factory


def field(*, default=_MISSING, default_factory=_MISSING):
    """A field's default, given as a value or (for mutable ones) as a factory called per instance."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(default, default_factory)


def _own_fields(cls) -> list[tuple[str, object, object]]:
    out = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        if text.startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, _MISSING)
        default, factory = value, _MISSING
        if isinstance(value, _Field):
            default, factory = value.default, value.default_factory
            if default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, default)
        elif isinstance(value, (list, dict, set)):
            raise ValueError(f"mutable default {type(value).__name__} for field {name} is not "
                             "allowed: use field(default_factory=...)")
        out.append((name, default, factory))
    return out


def record(cls):
    """Class decorator: `cls` becomes a frozen record of its annotated fields."""
    specs: dict[str, tuple[object, object]] = {}
    for base in reversed(cls.__mro__[1:]):
        specs.update(getattr(base, "__record_specs__", {}))
    for name, default, factory in _own_fields(cls):
        specs.pop(name, None)   # a redefined field moves to its new place, as in dataclasses
        specs[name] = (default, factory)
    names = tuple(specs)
    required = 0
    for name, (default, factory) in specs.items():
        if default is _MISSING and factory is _MISSING:
            if required != names.index(name):
                raise TypeError(f"non-default argument {name!r} follows default argument")
            required += 1
    tail = [(name, default, factory) for name, (default, factory) in specs.items()][required:]
    known = frozenset(names)
    post_init = getattr(cls, "__post_init__", None)
    qualname = cls.__qualname__
    set_attr = object.__setattr__

    def __init__(self, *args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"{qualname}.__init__() takes {len(names) + 1} positional arguments "
                            f"but {len(args) + 1} were given")
        for name, value in zip(names, args):
            set_attr(self, name, value)
        for key, value in kwargs.items():
            if key not in known:
                raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument {key!r}")
            if names.index(key) < len(args):
                raise TypeError(f"{qualname}.__init__() got multiple values for argument {key!r}")
            set_attr(self, key, value)
        if len(args) < required:
            missing = [n for n in names[len(args):required] if n not in kwargs]
            if missing:
                raise TypeError(f"{qualname}.__init__() missing {len(missing)} required "
                                f"argument(s): {', '.join(map(repr, missing))}")
        for name, default, factory in tail:
            if name not in kwargs and names.index(name) >= len(args):
                set_attr(self, name, default if factory is _MISSING else factory())
        if post_init is not None:
            post_init(self)

    def values(self) -> tuple:
        return tuple(getattr(self, n) for n in names)

    def __repr__(self) -> str:
        return f"{qualname}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(values(self))

    def __setattr__(self, name, value):
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    for method in (__init__, __repr__, __eq__, __hash__, __setattr__, __delattr__):
        method.__qualname__ = f"{qualname}.{method.__name__}"
        setattr(cls, method.__name__, method)
    cls.__record_specs__ = specs
    cls.__match_args__ = names
    return cls


def fields(obj_or_cls) -> tuple[str, ...]:
    """The record's field names, in order."""
    return tuple(obj_or_cls.__record_specs__)


def replace(obj, /, **changes):
    """A copy of the record `obj` with `changes` applied (validated again by `__init__`)."""
    return obj.__class__(**{name: changes.pop(name) if name in changes else getattr(obj, name)
                            for name in fields(obj)}, **changes)
