"""Stats lists that carry their own wire text: the fast path for big query-stats replies.

A provider that reads the same layout many times (one per vCPU) compiles a
:class:`StatsTemplate` once: the JSON text of the whole stats array with a ``%``
placeholder per value, in QEMU's key order.  Rendering a vCPU is then one ``itemgetter``
call, a few fix-ups (booleans, histograms) and one ``%`` format, with no Python object per
stat.  :class:`EncodedStats` keeps the values and behaves as the usual sequence of
``(name, value)`` pairs for everything that is not the wire (HMP, tools, tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from operator import itemgetter
from typing import TypeVar, overload

from vmstats.qapi.json import dumps
from vmstats.qapi.qdict import qdict_order
from vmstats.stats.model import StatsProvider, StatsResult, StatsValue

SCALAR, BOOLEAN, LIST = 0, 1, 2
T = TypeVar("T")

#: The order QEMU writes the members of ``Stats`` in (its QDict order).
_STATS_KEYS = qdict_order(["name", "value"])


@lru_cache(maxsize=4096)
def _buckets_text(buckets: tuple[int, ...]) -> str:
    """Histogram buckets as QEMU writes them (reversed).  Cached: buckets rarely change
    between two reads, and the text of 32 integers costs more than hashing them."""
    return ", ".join(map(str, buckets[::-1]))


class StatsTemplate:
    """The wire text of a stats array with holes for the values, and how to fill them.

    ``entries`` are ``(name, shape, start, stop)`` in wire order: the value of a stat is
    ``values[start]`` (SCALAR, BOOLEAN: non-zero is true) or ``values[start:stop]``
    reversed (LIST), as QEMU's KVM provider shapes it.
    """

    __slots__ = ("_booleans", "_getter", "_lists", "_natural", "_template", "entries")

    def __init__(self, entries: Sequence[tuple[str, int, int, int]]) -> None:
        self.entries = tuple(entries)
        holes = {SCALAR: "%d", BOOLEAN: "%s", LIST: "[%s]"}
        pieces = []
        for name, shape, _, _ in self.entries:
            fields = {"name": dumps(name).replace("%", "%%"), "value": holes[shape]}
            pieces.append("{" + ", ".join(f"{dumps(k)}: {fields[k]}" for k in _STATS_KEYS) + "}")
        self._template = "[" + ", ".join(pieces) + "]"
        starts = [start for _, _, start, _ in self.entries]
        self._getter = itemgetter(*starts) if len(starts) > 1 else None
        self._booleans = [i for i, e in enumerate(self.entries) if e[1] == BOOLEAN]
        self._lists = [(i, e[2], e[3]) for i, e in enumerate(self.entries) if e[1] == LIST]
        natural = self.entries[::-1]  # provider order
        self._natural = (
            [name for name, _, _, _ in natural],
            itemgetter(*(start for _, _, start, _ in natural)) if len(natural) > 1 else None,
            [name for name, shape, _, _ in natural if shape == BOOLEAN],
            [(name, start, stop) for name, shape, start, stop in natural if shape == LIST],
        )

    def render(self, values: Sequence[int]) -> str:
        if not self.entries:
            return "[]"
        if self._getter is not None:
            args = list(self._getter(values))
        else:
            args = [values[self.entries[0][2]]]
        for i in self._booleans:
            args[i] = "true" if args[i] else "false"
        for i, start, stop in self._lists:
            args[i] = _buckets_text(tuple(values[start:stop]))
        return self._template % tuple(args)

    def natural(self, values: Sequence[int]) -> dict[str, StatsValue]:
        """The stats by name in provider order, buckets ascending (what readers want:
        :func:`vmstats.stats.order.natural_values` of the decoded pairs), made straight
        from the values: the scalars by one ``itemgetter``, no pair per stat."""
        names, getter, booleans, lists = self._natural
        if getter is None:
            return self.natural_slow(values)
        out: dict[str, StatsValue] = dict(zip(names, getter(values), strict=True))
        for name in booleans:
            out[name] = out[name] != 0
        for name, start, stop in lists:
            out[name] = list(values[start:stop])
        return out

    def natural_slow(self, values: Sequence[int]) -> dict[str, StatsValue]:
        out: dict[str, StatsValue] = {}
        for name, shape, start, stop in reversed(self.entries):
            if shape == LIST:
                out[name] = list(values[start:stop])
            else:
                out[name] = values[start] != 0 if shape == BOOLEAN else values[start]
        return out

    def decode(self, values: Sequence[int]) -> list[tuple[str, StatsValue]]:
        out: list[tuple[str, StatsValue]] = []
        for name, shape, start, stop in self.entries:
            if shape == SCALAR:
                out.append((name, values[start]))
            elif shape == BOOLEAN:
                out.append((name, values[start] != 0))
            else:
                out.append((name, list(values[start:stop][::-1])))
        return out


class EncodedStats(Sequence[tuple[str, StatsValue]]):
    """One object's stats: wire text on demand, ``(name, value)`` pairs on demand."""

    __slots__ = ("_decoded", "_template", "_text", "_values")

    def __init__(self, template: StatsTemplate, values: Sequence[int]) -> None:
        self._template = template
        self._values = values
        self._text: str | None = None
        self._decoded: list[tuple[str, StatsValue]] | None = None

    def __qmp_json__(self) -> str:
        if self._text is None:  # rendered once, however often the object is written
            self._text = self._template.render(self._values)
        return self._text

    def natural(self) -> dict[str, StatsValue]:
        """The stats by name in provider order, buckets ascending."""
        return self._template.natural(self._values)

    def _pairs(self) -> list[tuple[str, StatsValue]]:
        if self._decoded is None:
            self._decoded = self._template.decode(self._values)
        return self._decoded

    @overload
    def __getitem__(self, index: int) -> tuple[str, StatsValue]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, StatsValue]]: ...
    def __getitem__(self, index: int | slice) -> object:
        return self._pairs()[index]

    def __len__(self) -> int:
        return len(self._template.entries)

    def __iter__(self) -> Iterator[tuple[str, StatsValue]]:
        return iter(self._pairs())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EncodedStats({self._pairs()!r})"


_STATS_HOLE = "\x00stats\x00"


class ResultTemplate:
    """The wire text of one object's ``StatsResult`` around its stats array: the same
    for every query of that object (provider, QOM path), so made once."""

    __slots__ = ("prefix", "suffix")

    def __init__(self, provider: StatsProvider, qom_path: str | None) -> None:
        members = {"provider": dumps(provider.value), "stats": _STATS_HOLE}
        if qom_path is not None:
            members["qom-path"] = dumps(qom_path)
        order = qdict_order(["provider", *(["qom-path"] if qom_path is not None else []), "stats"])
        text = "{" + ", ".join(f"{dumps(k)}: {members[k]}" for k in order) + "}"
        self.prefix, self.suffix = text.split(_STATS_HOLE)


class EncodedResult(StatsResult):
    """A result whose wire text is its template around its pre-encoded stats."""

    __slots__ = ("_template", "_text")

    def __init__(self, template: ResultTemplate, provider: StatsProvider,
                 stats: EncodedStats, qom_path: str | None) -> None:  # fmt: skip
        super().__init__(provider, stats, qom_path)
        self._template = template
        self._text: str | None = None

    def __qmp_json__(self) -> str:
        if self._text is None:
            stats = self.stats
            assert isinstance(stats, EncodedStats)
            self._text = self._template.prefix + stats.__qmp_json__() + self._template.suffix
        return self._text


class TemplateChoice:
    """A provider's templates: all its stats, and the subsets requests name (``names``),
    without those it has no value for (``omitted``), each made once.  At most 256
    subsets are kept: a client may name stats freely."""

    def __init__(self, entries: Sequence[tuple[str, int, int, int]]) -> None:
        self.all = StatsTemplate(entries)
        self._chosen: dict[tuple[tuple[str, ...] | None, frozenset[str]], StatsTemplate] = {}

    def select(self, names: Sequence[str] | None,
               omitted: frozenset[str] = frozenset()) -> StatsTemplate:  # fmt: skip
        """The template of the stats named (all for None) but ``omitted``, in wire order."""
        if names is None and not omitted:
            return self.all
        key = (None if names is None else tuple(names), omitted)
        found = self._chosen.get(key)
        if found is None:
            wanted = None if names is None else set(names)
            found = StatsTemplate([e for e in self.all.entries if e[0] not in omitted
                                   and (wanted is None or e[0] in wanted)])  # fmt: skip
            if len(self._chosen) < 256:
                self._chosen[key] = found
        return found


#: Per template, the source a result was made from and the result.
ResultMemo = dict[StatsTemplate, tuple[object, "EncodedResult"]]


class ResultMaker:
    """Results of one provider: an envelope per QOM path, made once, and per object and
    template the last source (a data block, a list of counts) with the result made of
    it.  Most vCPUs of a fleet are idle: a source that did not change is the same result,
    text and all (results are immutable once made, so sharing them is safe)."""

    def __init__(self, provider: StatsProvider) -> None:
        self.provider = provider
        self._envelopes: dict[str | None, ResultTemplate] = {}

    def result(self, memo: ResultMemo, template: StatsTemplate, source: T,
               values: Callable[[T], Sequence[int]],
               qom_path: str | None) -> EncodedResult:  # fmt: skip
        """The result of ``template`` over ``values(source)``, or the one made last time
        of the same source."""
        last = memo.get(template)
        if last is not None and last[0] == source and last[1].qom_path == qom_path:
            return last[1]  # (a vCPU given another path since, by its QEMU, is made anew)
        envelope = self._envelopes.get(qom_path)
        if envelope is None:
            envelope = self._envelopes[qom_path] = ResultTemplate(self.provider, qom_path)
        stats = EncodedStats(template, values(source))
        made = EncodedResult(envelope, self.provider, stats, qom_path)
        memo[template] = (source, made)
        return made
