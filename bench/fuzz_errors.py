"""Long fuzz run of the error boundary, with the server CPU each erroneous request cost.

    /work/venv/bin/python bench/fuzz_errors.py --count 10000            # ~3-4 min on 2 cores
    /work/venv/bin/python bench/fuzz_errors.py --count 2000 --log-format json --seed 5

Starts the real ``mosaicod serve`` in a subprocess (embedded PostgreSQL in a temporary data dir,
local store, a free loopback port, ``--log-format`` as given: the default ``pretty`` is the one
that used to render local variables), seeds the baseline sequence, then sends ``--count``
malformed requests of every family of tests/fuzz_cases.py through a raw pyarrow.flight client,
one at a time.  The server's CPU time (user + system, from /proc via psutil) is read before and
after each request.

Prints: outcomes by family (status counts), one refusal message per family, the most expensive erroneous requests with their
server CPU, and the checks: no INTERNAL/UNKNOWN status, no traceback / path / SQL / exception
class name in any message, every "must refuse" case refused, the server alive, the baseline
unchanged.  **Target: the most expensive erroneous request costs <= 50 ms of server CPU.**
Exit status 1 when a check or the target fails.

``--server-pythonpath DIR`` runs another checkout's server (e.g. an older commit, to measure
"before"); the cases and checks stay this checkout's.  psutil reads CPU in clock ticks (10 ms), so
figures under ~10 ms are coarse.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.flight as flight

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import fuzz_cases as fz  # noqa: E402

TARGET_MS = 50.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path, log_format: str, pythonpath: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = workdir / "mosaicod.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAICOD_")}
    env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mosaicod", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(workdir / "data"), "--log-level", "info", "--log-format", log_format],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, cwd=str(workdir))
    location = f"grpc://127.0.0.1:{port}"
    client = flight.FlightClient(location)
    deadline = time.monotonic() + 240
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; log: {log}")
        try:
            list(client.do_action(flight.Action("info", b"{}")))
            break
        except flight.FlightError:
            if time.monotonic() > deadline:
                raise SystemExit(f"server not ready; log: {log}") from None
            time.sleep(0.3)
    client.close()
    return proc, location, log


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_ms(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return round((t.user + t.system) * 1000, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=20261201)
    ap.add_argument("--log-format", choices=["pretty", "plain", "json"], default="pretty")
    ap.add_argument("--families", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--server-pythonpath", type=Path, default=ROOT)
    ap.add_argument("--timeout", type=float, default=60, help="per-request timeout, seconds")
    ap.add_argument("--top", type=int, default=5, help="how many of the most expensive requests to list")
    ap.add_argument("--tmp-dir", type=Path, default=None)
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mosaicod-fuzz-", dir=args.tmp_dir))
    proc, location, log = start_server(workdir, args.log_format, args.server_pythonpath.resolve())
    ps = psutil.Process(proc.pid)
    client = flight.FlightClient(location)
    families = [f for f in args.families.split(",") if f] or None
    tally = fz.Tally()
    costs: list[tuple[float, float, str, str]] = []  # (cpu ms, wall ms, status, case)
    examples: dict[str, tuple[str, str]] = {}  # family -> (status, message) of its first refusal
    started = time.monotonic()
    try:
        fz.seed_baseline(client)
        before = fz.snapshot(client)
        ctx = fz.context(client)
        for i, case in enumerate(fz.generate(args.seed, args.count, ctx, families)):
            c0, w0 = cpu_ms(ps), time.perf_counter()
            out = fz.send(client, case, args.timeout)
            w1, c1 = time.perf_counter(), cpu_ms(ps)
            tally.record(case, out)
            if out.status != "OK":
                examples.setdefault(case.family, (out.status, fz.server_part(out.message)))
                costs.append((round(c1 - c0, 1), (w1 - w0) * 1000, out.status, case.describe()))
            if (i + 1) % 1000 == 0:
                print(f"  {i + 1} requests, {time.monotonic() - started:.0f} s", file=sys.stderr)
        alive = fz.act(client, "info", {})["version"]
        after = fz.snapshot(client)
    finally:
        client.close()
        stop(proc)

    statuses = sorted({s for fam in tally.by_family.values() for s in fam})
    print(f"\nmosaicod error-boundary fuzz: seed {args.seed}, {args.count} requests, log format "
          f"{args.log_format}, server from {args.server_pythonpath}, {time.monotonic() - started:.0f} s\n")
    width = max(len(f) for f in tally.by_family) + 2
    print("family".ljust(width) + "".join(s[:16].rjust(18) for s in statuses) + "   total")
    for fam in sorted(tally.by_family):
        counts = tally.by_family[fam]
        print(fam.ljust(width) + "".join(str(counts.get(s, "")).rjust(18) for s in statuses)
              + f"{sum(counts.values()):8d}")
    print("\none refusal per family (status: message):")
    for fam in sorted(examples):
        status, message = examples[fam]
        print(f"  {fam.ljust(width)}{status}: {message[:170]}")
    costs.sort(reverse=True)
    print(f"\nmost expensive erroneous requests (server CPU, wall):")
    for cpu, wall, status, what in costs[: args.top]:
        print(f"  {cpu:8.1f} ms cpu {wall:9.1f} ms wall  {status:17s} {what[:150]}")
    worst = costs[0][0] if costs else 0.0
    ok_target = worst <= TARGET_MS
    print(f"\nmost expensive erroneous request: {worst:.1f} ms of server CPU "
          f"(target <= {TARGET_MS:.0f} ms): {'OK' if ok_target else 'MISSED'}")
    print(f"violations: {len(tally.violations)}")
    for v in tally.violations[:15]:
        print(f"  {v}")
    same = after == before
    print(f"server alive: {bool(alive)}; baseline unchanged: {same}")
    shutil.rmtree(workdir, ignore_errors=True) if same and not tally.violations else \
        print(f"(server log kept: {log})")
    return 0 if ok_target and same and not tally.violations else 1


if __name__ == "__main__":
    sys.exit(main())
