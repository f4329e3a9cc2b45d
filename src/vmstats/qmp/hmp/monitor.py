"""The human monitor's command table and dispatch: ``info stats``, ``info version``,
``help``, ``cpu``, as QEMU 7.2's ``handle_hmp_command`` finds, parses and runs them.

Like QEMU's ``human-monitor-command``, each command line runs in a fresh monitor: its
state (the output so far, the CPU chosen with ``cpu N`` or ``cpu-index``) lives in an
:class:`HMPCall` made for that line, so one :class:`HumanMonitor` serves any number of
sessions at once.  Differences from QEMU, on purpose: no vCPU is synchronised (kicked) to
find "the current CPU", and where QEMU would dereference a NULL schema entry we print
its error line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vmstats.errors import GenericError
from vmstats.qmp.hmp.args import SPACE, Expr, ExprError, get_str, to_int64
from vmstats.qmp.hmp.info_stats import info_stats
from vmstats.stats.model import StatsProvider
from vmstats.stats.registry import StatsRegistry


class _ParseFailure(Exception):
    """Parsing an argument failed; the message (if any) was already printed."""


@dataclass
class HMPCall:
    """One command line's state: its output and the current CPU (an index, or None)."""

    cpu: int | None = None
    out: list[str] = field(default_factory=list)

    def printf(self, text: str) -> None:
        self.out.append(text)


Handler = Callable[["HumanMonitor", HMPCall, dict[str, object]], None]


@dataclass(frozen=True)
class HMPCommand:
    name: str
    args_type: str
    params: str
    help: str
    handler: Handler | None = None
    sub_table: Sequence[HMPCommand] = field(default_factory=tuple)

    def matches(self, name: str) -> bool:
        return name in self.name.split("|")


class HumanMonitor:
    """HMP command lines over a stats registry; immutable once built, shared by sessions."""

    def __init__(
        self,
        registry: StatsRegistry,
        cpus: Callable[[], Sequence[str]],
        version: tuple[int, int, int],
        package: str,
        providers: Sequence[StatsProvider] = (StatsProvider.KVM,),
    ) -> None:
        self.registry = registry
        self.cpus = cpus
        self.version = version
        self.package = package
        self.providers = tuple(providers)  # the StatsProvider values this QEMU knows
        info = (
            HMPCommand(
                "stats",
                "target:s,names:s?,provider:s?",
                "target [names] [provider]",
                "show statistics for the given target (vm or vcpu); optionally filter "
                "byname (comma-separated list, or * for all) and provider",
                HumanMonitor._info_stats,
            ),
            HMPCommand("version", "", "", "show the version of QEMU", HumanMonitor._info_version),
        )
        self.table: tuple[HMPCommand, ...] = (
            HMPCommand("cpu", "index:i", "index", "set the default CPU", HumanMonitor._cpu_cmd),
            HMPCommand("help|?", "name:S?", "[cmd]", "show the help", HumanMonitor._help),
            HMPCommand(
                "info",
                "item:s?",
                "[subcommand]",
                "show various information about the system state",
                HumanMonitor._info_help,
                info,
            ),
        )

    # -- entry point ----------------------------------------------------------------

    def execute(self, command_line: str, cpu_index: int | None = None) -> str:
        """Run one command line; return its output with QEMU's CRLF line ends."""
        call = HMPCall()
        if cpu_index is not None:
            if not 0 <= cpu_index < len(self.cpus()):
                raise GenericError("Parameter 'cpu-index' expects a CPU number")
            call.cpu = cpu_index
        self._handle(call, command_line)
        return "".join(call.out).replace("\n", "\r\n")

    def info_stats_target(self, command_line: str) -> tuple[str, str | None] | None:
        """The target and provider of a well-formed ``info stats`` line (what decides
        where the host daemon answers it), else None.  Prints nothing: the line is not
        run."""
        call = HMPCall()
        command, pos = self._find(call, command_line, 0, self.table)
        if command is None or command.handler is not HumanMonitor._info_stats:
            return None
        try:
            args = self._parse_arguments(call, command, command_line, pos)
        except _ParseFailure:
            return None
        provider = args.get("provider")
        return str(args["target"]), None if provider is None else str(provider)

    # -- QEMU's handle_hmp_command ---------------------------------------------------

    def _find(
        self, call: HMPCall, line: str, pos: int, table: Sequence[HMPCommand]
    ) -> tuple[HMPCommand | None, int]:
        while pos < len(line) and line[pos] in SPACE:
            pos += 1
        if pos >= len(line):
            return None, pos
        name_start = pos
        while pos < len(line) and line[pos] != "/" and line[pos] not in SPACE:
            pos += 1
        name = line[name_start:pos][:255]
        command = next((c for c in table if c.matches(name)), None)
        if command is None:
            call.printf(f"unknown command: '{line[:pos]}'\n")
            return None, pos
        while pos < len(line) and line[pos] in SPACE:
            pos += 1
        if command.sub_table and pos < len(line):
            return self._find(call, line, pos, command.sub_table)
        return command, pos

    def _handle(self, call: HMPCall, line: str) -> None:
        command, pos = self._find(call, line, 0, self.table)
        if command is None:
            return
        try:
            args = self._parse_arguments(call, command, line, pos)
        except _ParseFailure:
            end = pos
            while end > 0 and line[end - 1] in SPACE:
                end -= 1
            call.printf(f'Try "help {line[:end]}" for more information\n')
            return
        assert command.handler is not None
        command.handler(self, call, args)

    @staticmethod
    def _parse_arguments(
        call: HMPCall, command: HMPCommand, line: str, pos: int
    ) -> dict[str, object]:
        args: dict[str, object] = {}
        for spec in filter(None, command.args_type.split(",")):
            key, kind = spec.split(":")
            optional = kind.endswith("?")
            kind = kind.rstrip("?")
            while pos < len(line) and line[pos] in SPACE:
                pos += 1
            if optional and pos >= len(line):
                continue
            if kind == "s":
                value, pos = get_str(line, pos)
                if value is None:
                    call.printf(f"{command.name}: string expected\n")
                    raise _ParseFailure
                args[key] = value
            elif kind == "S":
                args[key] = line[pos:]
                pos = len(line)
            elif kind == "i":
                expr = Expr(line, pos)
                try:
                    expr.skip_space()
                    value_int = to_int64(expr.sum())
                except ExprError as exc:
                    call.printf(f"{exc}\n")
                    raise _ParseFailure from None
                pos = expr.pos
                if (value_int >> 32) & 0xFFFFFFFF:
                    call.printf(f"'{command.name}' has failed: integer is for 32-bit values\n")
                    raise _ParseFailure
                args[key] = value_int
        while pos < len(line) and line[pos] in SPACE:
            pos += 1
        if pos < len(line):
            call.printf(f"{command.name}: extraneous characters at the end of line\n")
            raise _ParseFailure
        return args

    # -- help -----------------------------------------------------------------------

    def _help_dump(
        self, call: HMPCall, table: Sequence[HMPCommand], args: list[str], index: int
    ) -> None:
        prefix = "".join(f"{a} " for a in args[:index])
        if index >= len(args):
            for command in table:
                call.printf(f"{prefix}{command.name} {command.params} -- {command.help}\n")
            return
        for command in table:
            if command.matches(args[index]):
                if command.sub_table:
                    self._help_dump(call, command.sub_table, args, index + 1)
                else:
                    call.printf(f"{prefix}{command.name} {command.params} -- {command.help}\n")
                return
        call.printf("unknown command: '" + " ".join(args[: index + 1]) + "'\n")

    def _help(self, call: HMPCall, args: dict[str, object]) -> None:
        words: list[str] = []
        text = args.get("name")
        if isinstance(text, str):
            pos = 0
            while True:
                while pos < len(text) and text[pos] in SPACE:
                    pos += 1
                if pos >= len(text):
                    break
                word, pos = get_str(text, pos)
                if word is None or len(words) >= 16:
                    return
                words.append(word)
        self._help_dump(call, self.table, words, 0)

    def _info_help(self, call: HMPCall, args: dict[str, object]) -> None:
        self._help_dump(call, self.table, ["info"], 0)

    # -- commands -------------------------------------------------------------------

    def _cpu_cmd(self, call: HMPCall, args: dict[str, object]) -> None:
        index = args["index"]
        assert isinstance(index, int)
        if not 0 <= index < len(self.cpus()):
            call.printf("invalid CPU index\n")
            return
        call.cpu = index

    def _info_version(self, call: HMPCall, args: dict[str, object]) -> None:
        major, minor, micro = self.version
        call.printf(f"{major}.{minor}.{micro}{self.package}\n")

    def _info_stats(self, call: HMPCall, args: dict[str, object]) -> None:
        cpus = self.cpus()
        names, provider = args.get("names"), args.get("provider")
        info_stats(
            call.printf,
            self.registry,
            self.providers,
            cpus[call.cpu or 0] if cpus else None,
            str(args["target"]),
            names if isinstance(names, str) else None,
            provider if isinstance(provider, str) else None,
        )
