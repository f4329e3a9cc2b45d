"""Where a query's time goes inside the server (no socket): cProfile of QMPSession.

Run: ``.venv/bin/python benchmarks/profile_query.py [VCPUS] [CALLS]``.  Prints the cost per
stage (read fds, build results, encode, write JSON) and the top functions.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from vmstats.demo import DemoVM
from vmstats.qmp.monitor import Monitor
from vmstats.qmp.session import QMPSession
from vmstats.stats import StatsRegistry

#: Stage -> source files whose *exclusive* time counts for it (no double counting).
STAGES = {
    "read fds (pread + unpack)": (
        "kvm/binstats.py",
        "{built-in method posix.pread}",
        "{method 'unpack' of '_struct.Struct' objects}",
    ),
    "build results (provider, engine)": ("kvm/provider.py", "stats/registry.py"),
    "render stats text (templates)": ("stats/wire.py", "{method 'join' of 'str' objects}"),
    "encode results (compiled encoder)": ("qapi/output.py",),
    "JSON writer, response": (
        "qapi/json.py",
        "json/encoder.py",
        "qmp/session.py",
        "qapi/dispatch.py",
        "qapi/qdict.py",
    ),
    "parse request, validate arguments": ("qmp/jsonstream.py", "qapi/visitor.py", "qapi/ghash.py"),
}


def main() -> None:
    vcpus = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    request = b'{"execute":"query-stats","arguments":{"target":"vcpu"}}'
    with DemoVM(vcpus, rate=0) as vm:
        vm.run_rounds(1)
        registry = StatsRegistry()
        registry.add_stats_callbacks(vm.provider)
        session = QMPSession(Monitor(registry))
        session.receive_data(b'{"execute":"qmp_capabilities"}')
        for _ in range(20):
            session.receive_data(request)
        start = time.perf_counter()
        for _ in range(calls):
            reply = session.receive_data(request)
        wall = (time.perf_counter() - start) / calls * 1e6
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(calls):
            session.receive_data(request)
        profile.disable()
    stats = pstats.Stats(profile)
    print(
        f"{vcpus} vCPUs: {wall:,.0f} us per unfiltered vcpu query in-process "
        f"({len(reply[0]):,} bytes of reply)\n"
    )
    print("| stage | exclusive us per query (under cProfile) | share |\n|---|---:|---:|")
    totals = dict.fromkeys(STAGES, 0.0)
    everything = 0.0
    for (filename, _, function), v in stats.stats.items():  # type: ignore[attr-defined]
        everything += v[2]
        for stage, patterns in STAGES.items():
            if any(filename.endswith(p) or function == p for p in patterns):
                totals[stage] += v[2]
                break
    totals["other (glue, builtins)"] = everything - sum(totals.values())
    for stage, total in totals.items():
        print(f"| {stage} | {total / calls * 1e6:,.0f} | {total / everything:.0%} |")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(12)
    print("\n```\n" + "\n".join(out.getvalue().splitlines()[6:24]) + "\n```")


if __name__ == "__main__":
    main()
