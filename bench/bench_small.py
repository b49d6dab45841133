#!/usr/bin/env python
"""Small sequences through the SDK: the wall time mosaicod adds over a no-op protocol server.

One command, this machine:

    python bench/bench_small.py            # 60 sequences per server
    python bench/bench_small.py --quick    # 15 sequences per server

Each sequence is what a robot writing a fault snapshot does with ``mosaicolabs`` 0.7.0:
``sequence_create``, three ``IMU`` topics, 100 messages pushed to each, exit of the writer
(topic streams closed, ``session_finalize``).  The messages are built beforehand (not timed).
Sequences alternate between the real ``mosaicod serve`` (embedded PostgreSQL, local store) and
``bench/noop_server.py`` (same protocol, trivial answers, stores nothing), each driven by its own
connected client, so both see the same machine conditions.  Phases per sequence:

* before first push: ``sequence_create`` block entered + the three ``topic_create`` calls;
* push: the 300 ``push`` calls (client work only: batches go out at exit);
* writer exit: the ``with`` block's exit (streams flushed and closed, session finalized).

With ``--baseline REV`` the server of that git revision runs too (third in each round), and its
total is printed for comparison.

Server-added = percentile over mosaicod's sequences - the same percentile over the no-op
server's.  Targets: total p50 <= 5 ms and p95 <= 15 ms.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_core import DT_NS, TS0, Mosaicod, clean_env, stop_process, tail  # noqa: E402

TOPICS = 3
MESSAGES = 100
PHASES = ("before first push", "push", "writer exit", "total")


def messages(n: int) -> list:
    from mosaicolabs import IMU, Message
    from mosaicolabs.models.data import Quaternion, Vector3d

    rng = np.random.default_rng(3)
    a = rng.normal(0, 0.3, (n, 3)).tolist()
    return [Message(timestamp_ns=TS0 + i * DT_NS,
                    data=IMU(acceleration=Vector3d(x=a[i][0], y=a[i][1], z=a[i][2]),
                             angular_velocity=Vector3d(x=0.0, y=0.0, z=0.01),
                             orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)))
            for i in range(n)]


def one_sequence(client, name: str, msgs: list) -> dict[str, float]:
    from mosaicolabs import IMU

    t0 = time.perf_counter()
    sw = client.sequence_create(name, {"kind": "fault snapshot"})
    sw.__enter__()
    try:
        writers = [sw.topic_create(f"imu{k}", {}, IMU) for k in range(TOPICS)]
        if any(w is None for w in writers):
            raise RuntimeError("topic_create failed")
        t1 = time.perf_counter()
        for w in writers:
            for m in msgs:
                w.push(m)
        t2 = time.perf_counter()
    except BaseException:
        sw.__exit__(*sys.exc_info())
        raise
    sw.__exit__(None, None, None)
    t3 = time.perf_counter()
    return {"before first push": t1 - t0, "push": t2 - t1, "writer exit": t3 - t2, "total": t3 - t0}


class Noop:
    def __init__(self, workdir: Path):
        self.log = workdir / "noop.log"
        self.proc = subprocess.Popen([sys.executable, str(HERE / "noop_server.py")], stdout=subprocess.PIPE,
                                     stderr=open(self.log, "wb"), text=True, env=clean_env())
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"no-op server did not start:\n{tail(self.log)}")
        self.port = int(line.split()[1])

    def close(self) -> None:
        stop_process(self.proc)


def server_cpu_s(server) -> float:
    """CPU seconds used so far by a ``Mosaicod`` server and its embedded PostgreSQL's processes."""
    import psutil

    total = sum(server.ps.cpu_times()[:2])
    pg = str(server.data_dir / "postgres")
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.info["name"] == "postgres" and pg in " ".join(proc.info["cmdline"] or ()):
                total += sum(proc.cpu_times()[:2])
                total += sum(sum(c.cpu_times()[:2]) for c in proc.children())
        except psutil.Error:
            continue
    return total


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="15 sequences per server")
    ap.add_argument("-n", type=int, help="sequences per server (default 60, 15 with --quick)")
    ap.add_argument("--baseline", metavar="REV",
                    help="also run the server of this git revision (e.g. c5ebffd, before issue 14) side by side")
    ap.add_argument("--tmp-dir", help="where temp data goes (default: system temp dir)")
    args = ap.parse_args(argv)
    n = args.n or (15 if args.quick else 60)
    from mosaicolabs import MosaicoClient

    started = time.monotonic()
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    msgs = messages(MESSAGES)
    with tempfile.TemporaryDirectory(prefix="mosaicod-bench-small-", dir=args.tmp_dir) as tmp:
        workdir = Path(tmp)
        ours, noop, base = Mosaicod(workdir, "small"), None, None
        clients = {}
        try:
            noop = Noop(workdir)
            clients = {"mosaicod": MosaicoClient.connect("127.0.0.1", ours.port, timeout=30),
                       "no-op": MosaicoClient.connect("127.0.0.1", noop.port, timeout=30)}
            if args.baseline:
                from bench_image import checkout

                base = Mosaicod(workdir, "baseline", code_dir=checkout(args.baseline, workdir / "baseline-code"))
                clients[args.baseline] = MosaicoClient.connect("127.0.0.1", base.port, timeout=30)
            times: dict[str, list[dict[str, float]]] = {k: [] for k in clients}
            for k, c in clients.items():  # warm-up (first calls, imports, connections)
                for i in range(3):
                    one_sequence(c, f"warm_{i}", msgs)
            servers = {"mosaicod": ours, **({args.baseline: base} if base is not None else {})}
            cpu0 = {k: server_cpu_s(s) for k, s in servers.items()}
            for i in range(n):
                for k, c in clients.items():
                    times[k].append(one_sequence(c, f"snap_{i:04d}", msgs))
            cpu = {k: (server_cpu_s(s) - cpu0[k]) / n * 1000 for k, s in servers.items()}
        finally:
            for c in clients.values():
                c.close()
            if noop is not None:
                noop.close()
            if base is not None:
                base.close()
            ours.close()

    print()
    print(f"small sequences benchmark{' (--quick)' if args.quick else ''} - {time.strftime('%Y-%m-%d %H:%M')}, "
          f"took {time.monotonic() - started:.0f}s")
    print(f"{n} sequences per server, alternating; each: sequence_create, {TOPICS} IMU topics x {MESSAGES} "
          "messages, writer exit (SDK mosaicolabs 0.7.0)")
    print(f"{'phase (ms)':20} {'no-op p50':>10} {'p95':>7} {'mosaicod p50':>13} {'p95':>7} {'added p50':>10} "
          f"{'p95':>7}  target")
    print("-" * 100)
    for phase in PHASES:
        o = [t[phase] for t in times["mosaicod"]]
        z = [t[phase] for t in times["no-op"]]
        a50, a95 = pct(o, 50) - pct(z, 50), pct(o, 95) - pct(z, 95)
        verdict = ""
        if phase == "total":
            ok = a50 <= 5 and a95 <= 15
            verdict = f"p50 <= 5, p95 <= 15 {'OK' if ok else 'MISS'}"
        print(f"{phase:20} {pct(z, 50):10.1f} {pct(z, 95):7.1f} {pct(o, 50):13.1f} {pct(o, 95):7.1f} "
              f"{a50:10.1f} {a95:7.1f}  {verdict}")
    if args.baseline:
        for phase in PHASES:
            b = [t[phase] for t in times[args.baseline]]
            z = [t[phase] for t in times["no-op"]]
            print(f"{args.baseline + ' ' + phase:20} {'':10} {'':7} {pct(b, 50):13.1f} {pct(b, 95):7.1f} "
                  f"{pct(b, 50) - pct(z, 50):10.1f} {pct(b, 95) - pct(z, 95):7.1f}  (baseline, info)")
    print("server CPU per sequence (mosaicod + its PostgreSQL, ms): "
          + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
    print(f"load average at start: {load0}; at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
