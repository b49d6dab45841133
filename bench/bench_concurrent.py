#!/usr/bin/env python
"""Many clients at once: 4 writers + 4 readers of different topics against N mosaicod processes.

One command, this machine:

    python bench/bench_concurrent.py            # 256 MiB per stream, 2 server processes, ~1.5-3 min
    python bench/bench_concurrent.py --quick    # 64 MiB per stream, 100 probes
    python bench/bench_concurrent.py --servers 1

Starts ``--servers`` ``mosaicod serve`` processes on one data dir (one embedded PostgreSQL
catalog, one local store; each process on its own loopback port, as behind an L4 load balancer:
docs/operations.md, "Several server processes behind one address"), stores 4 topics to be read,
then runs two phases, each client in its own process speaking the protocol through
``pyarrow.flight`` (IMU-like rows, 16 MiB batches; clients are spread over the servers
round-robin):

* single: 1 writer (a new topic) and 1 reader (a stored topic) at the same time, one server;
* load: 4 writers (4 new topics) and 4 readers (the 4 stored topics) at the same time.

Before them, one writer alone and one reader alone measure the server CPU a byte costs on each
path.  For every phase the bench prints where the 2 cores went: CPU seconds (user + system) of
the server processes, the embedded PostgreSQL (postmaster and backends), the client processes
(their own CPU time, from the release of the start signal to their end) and the whole machine
(``/proc/stat``, non-idle), and the cores busy on average (machine CPU / wall).  The "ceiling"
row is what all cores would move at the single phase's CPU cost per byte (its servers, PostgreSQL
and clients): the load phase can beat single by more than that ratio only by costing less per
byte than the single phase.

Aggregate throughput = Arrow bytes written + read by all clients / wall time of the phase (the
single phase runs 3 rounds, the load phase as many as the probe needs, see below; bytes and wall
times are summed over the rounds).  Target: load >= 1.6x single.  During the load phase a probe
sends ``info`` every 25 ms to the servers in turn; target: ``info`` p99 <= 50 ms.  A p99 needs
hundreds of samples (from ~100, it is the single worst call or two): the load phase is repeated,
each round with new topics to write (the previous round's are deleted and purged, not timed),
until the probe has made ``--min-probes`` calls (500).  After each probe of ours the same probe
calls an idle no-op Flight server (bench/noop_server.py): its latency is what the machine's load
alone costs a call; and an idle ``mosaicod serve`` on the same catalog that no client uses: that
plus our own per-call work.  The rest is the busy servers' own delay (their threads and
interpreter lock shared with the streams).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.flight as flight

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_core import MiB, ImuData, Mosaicod, clean_env, drain, stop_process  # noqa: E402

WRITERS = READERS = 4
SINGLE_ROUNDS = 3
MAX_LOAD_ROUNDS = 15


class NoopServer:
    """bench/noop_server.py in a subprocess: answers ``info`` and does nothing else."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "noop_server.py")], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=clean_env())
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            stop_process(self.proc)
            raise RuntimeError("the no-op server did not start")
        self.location = f"grpc://127.0.0.1:{int(line.split()[1])}"

    def close(self) -> None:
        stop_process(self.proc)


def _action(client, name: str, body: dict):
    res = list(client.do_action(flight.Action(name, json.dumps(body).encode())))
    return json.loads(res[0].body.to_pybytes())["response"] if res else None


def write_topic(location: str, seq: str, nbytes: int, batch_bytes: int) -> int:
    """One sequence with one topic of ``nbytes`` Arrow bytes; returns the bytes sent."""
    client = flight.FlightClient(location)
    data = ImuData(nbytes, batch_bytes)
    _action(client, "sequence_create", {"locator": seq, "user_metadata": {}})
    session = _action(client, "session_create", {"locator": seq})["uuid"]
    tuuid = _action(client, "topic_create", {"session_uuid": session, "locator": f"{seq}/imu",
                                             "serialization_format": "default", "ontology_tag": "IMU",
                                             "user_metadata": {}})["uuid"]
    cmd = json.dumps({"resource_locator": f"{seq}/imu", "topic_uuid": tuuid}).encode()
    w, _ = client.do_put(flight.FlightDescriptor.for_command(cmd), data.schema)
    for b in data.batches():
        w.write_batch(b)
    w.done_writing()
    w.close()
    _action(client, "session_finalize", {"session_uuid": session})
    client.close()
    return data.total_bytes


def read_topic(location: str, seq: str) -> int:
    client = flight.FlightClient(location)
    info = client.get_flight_info(flight.FlightDescriptor.for_command(
        json.dumps({"resource_locator": f"{seq}/imu"}).encode()))
    nbytes, _rows = drain(client.do_get(info.endpoints[0].ticket))
    client.close()
    return nbytes


def _client(job: tuple, start: mp.Event, out: mp.Queue) -> None:
    kind, location, seq, nbytes, batch_bytes = job
    start.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    moved = write_topic(location, seq, nbytes, batch_bytes) if kind == "w" else read_topic(location, seq)
    out.put((kind, seq, moved, time.perf_counter() - t0, time.process_time() - c0))


def _proc_cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


class CpuMeter:
    """CPU seconds (user + system) of the servers, of the embedded PostgreSQL and of the machine."""

    def __init__(self, servers: list[Mosaicod]):
        self.servers = [s.ps for s in servers]
        pidfiles = sorted(Path(servers[0].data_dir).rglob("postmaster.pid"))
        self.postmaster = psutil.Process(int(pidfiles[0].read_text().split()[0])) if pidfiles else None

    def _pg(self) -> dict[int, float]:
        if self.postmaster is None:
            return {}
        procs = [self.postmaster, *self.postmaster.children(recursive=True)]
        return {p.pid: _proc_cpu(p) for p in procs}

    def snapshot(self) -> dict:
        t = psutil.cpu_times()
        procs = {}
        for p in psutil.process_iter(["name", "cpu_times"]):
            ct = p.info["cpu_times"]
            if ct is not None:
                procs[p.pid] = (p.info["name"], ct.user + ct.system)
        return {"servers": [_proc_cpu(p) for p in self.servers], "pg": self._pg(), "procs": procs,
                "machine": sum(t) - t.idle - getattr(t, "iowait", 0.0),
                "irq": getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)}

    @staticmethod
    def delta(a: dict, b: dict) -> dict:
        """CPU seconds spent between two snapshots (a backend that started in between counts whole)."""
        spent = sorted(((v - a["procs"].get(pid, (n, 0.0))[1], n, pid) for pid, (n, v) in b["procs"].items()),
                       reverse=True)
        return {"servers": [y - x for x, y in zip(a["servers"], b["servers"])],
                "pg": sum(v - a["pg"].get(pid, 0.0) for pid, v in b["pg"].items()),
                "machine": b["machine"] - a["machine"], "irq": b["irq"] - a["irq"], "top": spent[:12]}


def run_phase(jobs: list[tuple], probe_locations: list[str] | None, meter: CpuMeter,
              controls: dict[str, str] | None = None) -> tuple[float, int, list, list[float], dict]:
    """Start one process per job, release them together; returns (wall, bytes, per-client, info ms,
    CPU seconds spent during the phase).  ``controls``: name -> location of idle servers the probe
    also calls after each probe of ours (their latencies in ``cpu["control_ms"][name]``: what the
    machine's load alone costs an ``info`` there)."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(j, start, out)) for j in jobs]
    for p in procs:
        p.start()
    time.sleep(2.0)  # processes imported pyarrow and wait on the event
    latencies: list[float] = []
    control_ms: dict[str, list[float]] = {name: [] for name in controls or {}}
    stop = threading.Event()

    def info_ms(client: flight.FlightClient) -> float:
        t0 = time.perf_counter()
        list(client.do_action(flight.Action("info", b"{}")))
        return (time.perf_counter() - t0) * 1000

    def probe() -> None:
        clients = [flight.FlightClient(loc) for loc in probe_locations]
        others = {name: flight.FlightClient(loc) for name, loc in (controls or {}).items()}
        i = 0
        while not stop.is_set():
            latencies.append(info_ms(clients[i % len(clients)]))
            for name, other in others.items():
                control_ms[name].append(info_ms(other))
            i += 1
            stop.wait(0.025)
        for c in [*clients, *others.values()]:
            c.close()

    prober = threading.Thread(target=probe, daemon=True) if probe_locations else None
    cpu0 = meter.snapshot()
    t0 = time.perf_counter()
    start.set()
    if prober:
        prober.start()
    results = [out.get(timeout=1800) for _ in jobs]
    wall = time.perf_counter() - t0
    cpu = CpuMeter.delta(cpu0, meter.snapshot())
    cpu["clients"] = sum(r[4] for r in results)
    stop.set()
    if prober:
        prober.join()
    for p in procs:
        p.join()
    cpu["control_ms"] = control_ms
    return wall, sum(r[2] for r in results), results, latencies, cpu


def cpu_line(name: str, wall: float, moved: int, cpu: dict) -> str:
    srv = sum(cpu["servers"])
    per_srv = "+".join(f"{c:.1f}" for c in cpu["servers"])
    other = cpu["machine"] - srv - cpu["pg"] - cpu["clients"]
    return (f"{name:8} {wall:6.2f}s {cpu['machine'] / wall:5.2f} cores busy | CPU s: server(s) {srv:5.1f}"
            f"{f' ({per_srv})' if len(cpu['servers']) > 1 else ''}, PostgreSQL {cpu['pg']:4.1f}, "
            f"clients {cpu['clients']:5.1f}, other {other:4.1f} (irq+softirq {cpu['irq']:.1f}) "
            f"| server CPU s/GB {srv / (moved / 1e9):5.2f}")


def combine(rounds: list[tuple]) -> tuple[float, int, list, list[float], dict]:
    """The rounds of one phase as one: summed wall, bytes and CPU; every client and probe."""
    cpu = {"servers": [sum(c) for c in zip(*(r[4]["servers"] for r in rounds))],
           "top": sorted((t for r in rounds for t in r[4]["top"]), reverse=True)[:12],
           "control_ms": {name: [ms for r in rounds for ms in r[4]["control_ms"][name]]
                          for name in rounds[0][4]["control_ms"]}}
    for key in ("pg", "machine", "irq", "clients"):
        cpu[key] = sum(r[4][key] for r in rounds)
    return (sum(r[0] for r in rounds), sum(r[1] for r in rounds), [c for r in rounds for c in r[2]],
            [ms for r in rounds for ms in r[3]], cpu)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 MiB per stream, 100 probes")
    ap.add_argument("--servers", type=int, default=2, help="mosaicod processes on one catalog and store (default 2)")
    ap.add_argument("--min-probes", type=int, help="repeat the load phase until the info probe has made this "
                    f"many calls (default 500, 100 with --quick; at most {MAX_LOAD_ROUNDS} rounds)")
    ap.add_argument("--tmp-dir", help="where temp data goes (default: system temp dir)")
    args = ap.parse_args(argv)
    per_stream = (64 if args.quick else 256) * MiB
    min_probes = args.min_probes if args.min_probes is not None else (100 if args.quick else 500)
    batch_bytes = 16 * MiB
    started = time.monotonic()
    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="mosaicod-bench-conc-", dir=args.tmp_dir))
    servers: list[Mosaicod] = []
    joined: list[Mosaicod] = []
    noop = NoopServer()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:5.0f}s] {msg}", flush=True)

    def drop(seqs: list[str]) -> None:
        """Delete what a round wrote and purge it from the store (not timed): every round starts
        from the same state, without another GiB in the page cache (see bench_core's purge)."""
        for seq in seqs:
            first.delete_sequence(seq)
        first.purge_deleted()

    try:
        first = Mosaicod(workdir, "shared")
        servers.append(first)
        for k in range(1, args.servers):  # the same data dir: joins the embedded PostgreSQL and store
            servers.append(Mosaicod(workdir, f"shared-{k}", data_dir=first.data_dir))
        locs = [s.location for s in servers]
        # the control for our own delay: one more process on the same catalog and store that no
        # client uses (its CPU counts in "other")
        idle = Mosaicod(workdir, "idle", data_dir=first.data_dir)
        joined.append(idle)
        log(f"storing {READERS + 1} topics to read")
        for r in range(READERS + 1):
            write_topic(locs[0], f"stored_{r}", per_stream, batch_bytes)
        meter = CpuMeter(servers)
        log("alone: 1 writer, then 1 reader")
        alone = {"write": run_phase([("w", locs[0], "alone_w", per_stream, batch_bytes)], None, meter),
                 "read": run_phase([("r", locs[0], f"stored_{READERS}", 0, 0)], None, meter)}
        drop(["alone_w"])
        single_rounds = []
        for k in range(SINGLE_ROUNDS):
            log(f"single: 1 writer + 1 reader, round {k + 1}/{SINGLE_ROUNDS}")
            single_rounds.append(run_phase(
                [("w", locs[0], f"single{k}_w", per_stream, batch_bytes), ("r", locs[0], f"stored_{READERS}", 0, 0)],
                [locs[0]], meter))
            drop([f"single{k}_w"])
        s_wall, s_bytes, s_res, s_lat, s_cpu = combine(single_rounds)
        load_rounds: list[tuple] = []
        while True:
            k = len(load_rounds)
            log(f"load: {WRITERS} writers + {READERS} readers over {len(locs)} server(s), round {k + 1} "
                f"({sum(len(r[3]) for r in load_rounds)}/{min_probes} probes so far)")
            jobs = []
            for i in range(WRITERS):
                jobs.append(("w", locs[i % len(locs)], f"load{k}_w{i}", per_stream, batch_bytes))
                jobs.append(("r", locs[(i + 1) % len(locs)], f"stored_{i}", 0, 0))
            load_rounds.append(run_phase(jobs, locs, meter, controls={"noop": noop.location, "idle": idle.location}))
            drop([f"load{k}_w{i}" for i in range(WRITERS)])
            if sum(len(r[3]) for r in load_rounds) >= min_probes or len(load_rounds) >= MAX_LOAD_ROUNDS:
                break
        l_wall, l_bytes, l_res, l_lat, l_cpu = combine(load_rounds)
    finally:
        for srv in [*servers[1:], *joined]:  # the processes that joined; the first one stops the shared PostgreSQL
            srv.client.close()
            stop_process(srv.proc)
        if servers:
            servers[0].close()
        noop.close()
        shutil.rmtree(workdir, ignore_errors=True)

    s_rate, l_rate = s_bytes / s_wall / 1e6, l_bytes / l_wall / 1e6
    ratio = l_rate / s_rate
    p99 = float(np.percentile(l_lat, 99)) if l_lat else float("nan")
    print()
    print(f"concurrent clients benchmark{' (--quick)' if args.quick else ''} - {time.strftime('%Y-%m-%d %H:%M')}, "
          f"took {time.monotonic() - started:.0f}s; {len(locs)} server process(es), {os.cpu_count()} cores; "
          f"{per_stream // MiB} MiB per stream; single phase {SINGLE_ROUNDS} rounds, load phase {len(load_rounds)} rounds "
          f"(until >= {min_probes} info probes)")
    print(f"{'row':44} {'value':>12}  target")
    print("-" * 80)
    print(f"{'single: 1 writer + 1 reader, MB/s':44} {s_rate:12.1f}")
    print(f"{f'load: {WRITERS} writers + {READERS} readers, MB/s':44} {l_rate:12.1f}")
    print(f"{'load / single':44} {ratio:11.2f}x  >= 1.60x {'OK' if ratio >= 1.6 else 'MISS'}")
    cores = os.cpu_count()
    own = sum(s_cpu["servers"]) + s_cpu["pg"] + s_cpu["clients"]  # CPU s the single phase itself used
    l_own = sum(l_cpu["servers"]) + l_cpu["pg"] + l_cpu["clients"]
    ceiling = cores * s_bytes / own / 1e6 if own > 0 else float("nan")
    print(f"{'  ceiling: all cores at single CPU/byte, MB/s':44} {ceiling:12.1f}  = {ceiling / s_rate:.2f}x single "
          f"(servers + PostgreSQL + clients: {own / (s_bytes / 1e9):.2f} CPU s/GB)")
    l_ceiling = cores * l_bytes / l_own / 1e6 if l_own > 0 else float("nan")
    got = l_own / l_wall  # cores the load phase's own processes had on average
    print(f"{'  all cores at the load CPU/byte, MB/s':44} {l_ceiling:12.1f}  = {l_ceiling / s_rate:.2f}x single "
          f"({l_own / (l_bytes / 1e9):.2f} CPU s/GB); the load phase's processes had {got:.2f} of {cores} cores")
    if ratio < 1.6:
        if ceiling / s_rate < 1.6:
            cause = (f"the machine: the single phase already keeps {own / s_wall:.2f} of {cores} cores busy, so at its "
                     f"CPU cost per byte all {cores} cores give at most {ceiling / s_rate:.2f}x")
        elif l_ceiling / s_rate < 1.6:
            cause = (f"the cost per byte under load: {l_own / (l_bytes / 1e9):.2f} CPU s/GB against "
                     f"{own / (s_bytes / 1e9):.2f} in the single phase")
        else:
            cause = (f"cores taken by other work: the load phase's own processes had {got:.2f} of {cores} cores, "
                     "the rest went to other processes or the kernel (BENCH_TOP=1 lists the processes)")
        print(f"  capped by {cause}")
    print(f"{'info during load, p50 / p99 ms':44} {np.percentile(l_lat, 50):5.1f} /{p99:5.1f}  "
          f"p99 <= 50 {'OK' if p99 <= 50 else 'MISS'}  ({len(l_lat)} probes)")
    for name, what in (("idle", "idle mosaicod"), ("noop", "idle no-op server")):
        ctl = l_cpu["control_ms"][name]
        print(f"{f'  same probe, {what}: p50 / p99':44} {np.percentile(ctl, 50):5.1f} /{np.percentile(ctl, 99):5.1f}")
    print("  (the no-op server: what the machine's load alone costs a call; the idle mosaicod: that plus our own "
          "per-call work;\n   the rest, up to the row above, is the busy servers' own delay: their threads and "
          "interpreter lock shared with the streams)")
    print(f"{'info during single, p50 / p99 ms':44} {np.percentile(s_lat, 50):5.1f} /{np.percentile(s_lat, 99):5.1f}")
    for name, res in (("single", s_res), ("load", l_res)):
        print(f"{name} clients, MB/s each (min / median / max) and CPU s per stream (median): " + "; ".join(
            f"{label} {min(rates):.0f} / {np.median(rates):.0f} / {max(rates):.0f}, {np.median(cpus):.2f}"
            for kind, label in (("w", "writers"), ("r", "readers"))
            for rates, cpus in [([b / t / 1e6 for k, _q, b, t, _c in res if k == kind],
                                 [c for k, *_x, c in res if k == kind])]))
    print(f"where the {os.cpu_count()} cores went, per phase (wall, machine CPU / wall; server CPU per GB moved):")
    for name, (wall, moved, _res, _lat, cpu) in alone.items():
        print(cpu_line(name, wall, moved, cpu) + f" | {moved / wall / 1e6:.0f} MB/s")
    print(cpu_line("single", s_wall, s_bytes, s_cpu))
    print(cpu_line("load", l_wall, l_bytes, l_cpu))
    if os.environ.get("BENCH_TOP"):
        for name, cpu in (("single", s_cpu), ("load", l_cpu)):
            print(f"top processes, {name}: " + ", ".join(f"{n}[{pid}] {c:.1f}" for c, n, pid in cpu["top"]))
    print(f"load average at start: {load0}; at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
