"""The monitor of a VM the host daemon serves: its own stats fds where it holds them, the
VM's QEMU (through its QMP socket) for the rest.

- A QEMU that keeps no stats fds (7.x) is *forwarded*: ``query-stats``,
  ``query-stats-schemas``, ``query-cpus-fast`` and HMP ``info stats`` go to its socket and
  its reply is passed on byte for byte (each forwarded vcpu query kicks every vCPU once:
  QEMU's own cost).
- A QEMU >= 8.1 with a socket is *mixed*: vCPU stats come from the fds (no kick), VM-level
  stats from the socket (QEMU reads its own VM stats fd, which no other process can
  create), and the schemas from the socket, or from the fds when it does not answer.
- Without a socket, everything is local and VM-level stats are absent.
- Under libvirt, what the fds do not give comes from libvirt (:mod:`vmstats.libvirt`):
  local too, but values that must be fresh first (``fresh``), which may mean waiting for
  one libvirt read shared by every client.

A QEMU socket serves one client at a time, so it is used per request (connect, ask,
close), one request at a time, each step bounded by a timeout: other tools are never
locked out, and a busy or silent QEMU costs our client an error, not a hang.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from vmstats.errors import ClientError, RemoteError, StatsError
from vmstats.qapi.dispatch import Handler
from vmstats.qapi.json import RawJSON
from vmstats.qmp.client import QmpClient, stats_arguments
from vmstats.qmp.machine import CpuInfoFast, Machine
from vmstats.qmp.monitor import Monitor
from vmstats.stats.model import (
    EXTENSION_NAMES,
    VM_TARGET_NAMES,
    StatsFilter,
    StatsProvider,
    StatsResult,
    StatsTarget,
)
from vmstats.stats.registry import StatsRegistry

log = logging.getLogger(__name__)


#: Seconds a QEMU socket may take per step (connect, greeting, each reply).
DEFAULT_QMP_TIMEOUT = 3.0


class QemuSocket:
    """A QEMU's QMP socket, used per request and one request at a time."""

    def __init__(self, path: Path, timeout: float = DEFAULT_QMP_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self._turn = asyncio.Lock()

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> RawJSON:
        """QEMU's return value, as its text; QEMU's error as :class:`RemoteError`, and an
        unreachable or silent QEMU as :class:`StatsError` (a GenericError for our client)."""
        async with self._turn:
            try:
                async with QmpClient(str(self.path), self.timeout) as qmp:
                    return RawJSON((await qmp.execute(command, arguments)).decode())
            except RemoteError:
                raise
            except ClientError as exc:
                raise StatsError(f"the VM's QEMU monitor: {exc}") from exc


class HostMonitor(Monitor):
    """A :class:`Monitor` over the VM's fds, which serve ``local`` (targets), passing what
    they cannot answer to ``qemu`` when the VM has a socket.  Both may change later (a
    socket found, a vCPU plugged): sessions look them up on every command."""

    def __init__(self, registry: StatsRegistry, machine: Machine, *,
                 local: set[StatsTarget], qemu: QemuSocket | None = None) -> None:  # fmt: skip
        super().__init__(registry, machine)
        self.local = local
        self.qemu = qemu
        # Local values that come from elsewhere (libvirt) and may need a read first.
        self.refresh: Callable[[StatsTarget], Awaitable[None] | None] | None = None

    @functools.cached_property
    def _local(self) -> dict[str, Handler]:
        """The commands as the fds answer them, before any is passed to QEMU."""
        return super()._handlers()

    def _handlers(self) -> dict[str, Handler]:
        return {
            **self._local,
            "query-stats": self.query_stats,
            "query-stats-schemas": self.query_stats_schemas,
            "query-cpus-fast": self.query_cpus_fast_forwarded,
            "human-monitor-command": self.human_monitor_command_forwarded,
        }

    def serve_vcpus(self, cpus: list[CpuInfoFast]) -> None:
        """vCPU stats are served here from now on (their fds are held), for these vCPUs."""
        self.machine.cpus = cpus
        self.local.add(StatsTarget.VCPU)

    def use_qemu(self, qemu: QemuSocket, name: str | None, cpus: list[CpuInfoFast]) -> None:
        """The VM's QEMU socket answers what is not served here; its name, and its vCPUs
        where it lists them, are the VM's."""
        self.qemu = qemu
        self.machine.name = name
        if cpus:
            self.machine.cpus = cpus

    def fresh(self, target: StatsTarget) -> Awaitable[None] | None:
        return None if self.refresh is None else self.refresh(target)

    def forwards(self, target: str) -> bool:
        return self._forwards(target) is not None

    def _forwards(self, target: str) -> QemuSocket | None:
        """The socket that answers ``target``, or None: answered here."""
        if self.qemu is None or target in self.local:
            return None
        return self.qemu

    # Each handler answers at once what is answered here (no task, no extra turn of the
    # loop for the fd-served majority) and returns a coroutine for what QEMU answers: the
    # session awaits it.

    def query_stats(self, filter: StatsFilter) -> Any:
        qemu = self._forwards(filter.target.value)
        if qemu is None:
            return self._when_fresh(filter.target, self._local["query-stats"], filter)
        requests = filter.providers or ()
        ours = [r for r in requests if r.provider.is_extension]
        if not ours:
            return qemu.execute("query-stats", stats_arguments(filter))
        # vmstats' own providers are answered here, the rest by QEMU
        local = self._local["query-stats"](replace(filter, providers=ours))
        theirs = [r for r in requests if not r.provider.is_extension]
        if not theirs:
            return local
        return self._joined(local, qemu.execute("query-stats", stats_arguments(
            replace(filter, providers=theirs))))  # fmt: skip

    async def _joined(self, local: list[StatsResult], forwarded: Awaitable[RawJSON]) -> RawJSON:
        """One reply: ours first (registered after QEMU's own, so prepended later), then
        QEMU's, its text as it sent it."""
        text = str(await forwarded).strip()
        ours = self.encoder.encode_text("[StatsResult]", local)
        if text == "[]" or ours == "[]":
            return RawJSON(ours if text == "[]" else text)
        return RawJSON(f"{ours[:-1]}, {text[1:]}")

    def _when_fresh(self, target: StatsTarget, handler: Callable[..., Any], *args: Any) -> Any:
        """``handler(*args)`` now if ``target`` is fresh, else a coroutine that first
        waits for it."""
        pending = self.fresh(target)
        if pending is None:
            return handler(*args)
        return self._after(pending, handler, *args)

    @staticmethod
    async def _after(pending: Awaitable[None], handler: Callable[..., Any], *args: Any) -> Any:
        await pending
        return handler(*args)

    def query_stats_schemas(self, provider: StatsProvider | None = None) -> Any:
        ours = provider is not None and provider.is_extension
        if ours or self.qemu is None or self.local >= {StatsTarget.VM, StatsTarget.VCPU}:
            return self._local["query-stats-schemas"](provider)
        return self._schemas_from_qemu(self.qemu, provider)

    async def _schemas_from_qemu(self, qemu: QemuSocket, provider: StatsProvider | None) -> Any:
        arguments = None if provider is None else {"provider": provider.value}
        try:
            return await qemu.execute("query-stats-schemas", arguments)
        except StatsError:
            if not self.local:
                raise
            # QEMU busy: the vCPU schemas are the kernel's, and here
            return self._local["query-stats-schemas"](provider)

    def query_cpus_fast_forwarded(self) -> Any:
        if self.qemu is None or StatsTarget.VCPU in self.local:
            return self.query_cpus_fast()
        return self.qemu.execute("query-cpus-fast")

    def human_monitor_command_forwarded(self, command_line: str,
                                        cpu_index: int | None = None) -> Any:  # fmt: skip
        parsed = self.hmp.info_stats_target(command_line)
        target, provider = parsed if parsed is not None else (None, None)
        ours = provider in EXTENSION_NAMES  # vmstats' own provider: answered here
        qemu = None if target is None or ours else self._forwards(target)
        if qemu is None:
            if target in VM_TARGET_NAMES:
                return self._when_fresh(StatsTarget(target), self.human_monitor_command,
                                        command_line, cpu_index)  # fmt: skip
            return self.human_monitor_command(command_line, cpu_index)
        arguments: dict[str, Any] = {"command-line": command_line}
        if cpu_index is not None:
            arguments["cpu-index"] = cpu_index
        return qemu.execute("human-monitor-command", arguments)
