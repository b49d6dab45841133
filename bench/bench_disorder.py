"""Disordered data: server memory and throughput of reads (whole topic and a window) and of the
store optimizer for the same topic uploaded in order, in reverse and shuffled.

    python bench/bench_disorder.py            # 1 GiB per topic (target run), 1.5-7 min on 2 cores
    python bench/bench_disorder.py --quick    # 128 MiB per topic, smoke test

Target: for the reversed and the shuffled topic, each peak RSS (read, window, optimize) is at most
1.5x the peak of the same operation on the in-order topic, measured in the same run.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_core import (DT_NS, GiB, MiB, ROW_BYTES, TS0, ImuData, Mosaicod, PeakRss,  # noqa: E402
                        clean_env, drain, mb)

TARGET = 1.5
KINDS = ("ordered", "reversed", "shuffled")


class Arrival:
    """The topic's batches in arrival order (for ``Mosaicod.put``): ascending, fully reversed
    (batches and the rows in them), or batches in random order (each one a stretch of time)."""

    def __init__(self, data: ImuData, kind: str, seed: int = 5):
        self.data, self.kind, self.schema = data, kind, data.schema
        self.order = list(range(data.n_batches))
        if kind == "reversed":
            self.order.reverse()
        elif kind == "shuffled":
            self.order = [int(i) for i in np.random.default_rng(seed).permutation(data.n_batches)]

    def batches(self, pace: float | None = None):
        data = self.data
        base = np.arange(data.rows, dtype=np.int64) * DT_NS
        for i in self.order:
            ts = base + (TS0 + i * data.rows * DT_NS)
            cols = data._templates[i % len(data._templates)]  # noqa: SLF001 - same payload as bench_core
            batch = pa.RecordBatch.from_arrays([pa.array(ts), *cols], schema=data.schema)
            if self.kind == "reversed":
                batch = batch.take(pa.array(np.arange(data.rows - 1, -1, -1)))
            yield batch


def timed_read(srv: Mosaicod, topic: str, window: tuple[int, int] | None) -> tuple[float, int, int, int]:
    """(seconds, bytes, rows, peak RSS) of one read against the running server."""
    cmd = {"resource_locator": topic}
    if window:
        cmd.update(timestamp_ns_start=window[0], timestamp_ns_end=window[1])
    with PeakRss(srv.ps) as peak:
        t0 = time.perf_counter()
        info = srv.client.get_flight_info(flight.FlightDescriptor.for_command(json.dumps(cmd).encode()))
        nbytes, rows = drain(srv.client.do_get(info.endpoints[0].ticket))
        secs = time.perf_counter() - t0
    return secs, nbytes, rows, max(peak.peak, peak.hwm or 0)


def optimize(srv: Mosaicod, work: Path) -> tuple[float, int]:
    """One `mosaicod store-optimizer` pass (a separate process, as an operator runs it): seconds and
    the process's peak RSS (the kernel's ru_maxrss, exact)."""
    log = work / "optimizer.log"
    with open(log, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([*srv.cmd, "store-optimizer", "--data-dir", str(srv.data_dir),
                                 "--log-level", "warning"], env=clean_env(), stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        secs = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"store-optimizer failed: {log.read_text(errors='replace')[-2000:]}")
    return secs, usage.ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="128 MiB topics instead of 1 GiB")
    ap.add_argument("--tmp-dir", help="where the server's data dir goes (default: system temp dir)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "disorder.txt"))
    args = ap.parse_args(argv)
    size = 128 * MiB if args.quick else GiB
    data = ImuData(size, 4 * MiB)
    span = data.total_rows * DT_NS
    window = (TS0 + span // 4, TS0 + 3 * span // 4)
    work = Path(tempfile.mkdtemp(prefix="bench-disorder-", dir=args.tmp_dir))
    started = time.time()
    res: dict[str, dict] = {}
    srv = Mosaicod(work, "disorder")
    try:
        for kind in KINDS:
            t0 = time.perf_counter()
            r: dict = {"put_s": srv.put(kind, Arrival(data, kind))}
            srv.restart()  # a fresh server process for every topic's reads
            r["idle"] = srv.ps.memory_info().rss
            r["read"] = timed_read(srv, f"{kind}/imu", None)
            r["window"] = timed_read(srv, f"{kind}/imu", window)
            r["optimize"] = optimize(srv, work)
            r["read_after"] = timed_read(srv, f"{kind}/imu", None)
            assert r["read"][2] == data.total_rows and r["read_after"][2] == data.total_rows, (kind, r)
            res[kind] = r
            print(f"{kind}: done in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    finally:
        srv.close()
        shutil.rmtree(work, ignore_errors=True)
    text = render(res, data, started, args.quick)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    ops = ("read", "window") if args.quick else ("read", "window", "optimize")
    ok = all(res[k][op][-1] <= TARGET * res["ordered"][op][-1] for k in KINDS[1:] for op in ops)
    return 0 if ok else 1


def render(res: dict, data: ImuData, started: float, quick: bool) -> str:
    def mbs(nbytes, secs):
        return f"{nbytes / secs / 1e6:8.1f}"

    lines = [f"mosaicod disorder benchmark - {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}"
             f"{' (--quick)' if quick else ''}",
             f"topic: {data.total_bytes / GiB:.2f} GiB IMU rows ({ROW_BYTES} B/row), {data.n_batches} batches of "
             f"{data.rows * ROW_BYTES / MiB:.0f} MiB; run took {time.time() - started:.0f}s", "",
             f"{'operation':<30}{'arrival':>10}{'seconds':>9}{'MB/s':>9}{'peak RSS':>10}{'vs ordered':>12}  target",
             "-" * 90]
    for op, title in (("read", "read whole topic"), ("window", "read middle half (window)"),
                      ("optimize", "store-optimizer pass")):
        base = res["ordered"][op][-1]
        for kind in KINDS:
            r = res[kind][op]
            secs, peak = r[0], r[-1]
            nbytes = r[1] if op != "optimize" else data.total_bytes
            ratio = peak / base
            verdict = "" if kind == "ordered" else (f"<= {TARGET}x " + ("OK" if ratio <= TARGET else "MISSED"))
            if quick and op == "optimize" and kind != "ordered":
                verdict = "(no target with --quick)"
            lines.append(f"{title:<30}{kind:>10}{secs:9.2f}{mbs(nbytes, secs)}{mb(peak):>10}{ratio:11.2f}x  {verdict}")
    lines += ["", f"{'after the optimizer':<30}{'arrival':>10}{'seconds':>9}{'MB/s':>9}{'peak RSS':>10}", "-" * 90]
    for kind in KINDS:
        secs, nbytes, _, peak = res[kind]["read_after"]
        lines.append(f"{'read whole topic':<30}{kind:>10}{secs:9.2f}{mbs(nbytes, secs)}{mb(peak):>10}")
    if quick:
        lines += ["", "--quick: the in-order topic is one sorted chunk, which the optimizer only flags as optimized; "
                      "its optimizer row is no baseline."]
    lines += ["", "upload seconds (information): " + ", ".join(f"{k} {res[k]['put_s']:.1f}" for k in KINDS),
              "idle RSS of each fresh server: " + ", ".join(f"{k} {mb(res[k]['idle'])}" for k in KINDS),
              "peak RSS: of `mosaicod serve` for read and window (a fresh process per topic; max of psutil samples every "
              "50 ms and VmHWM), of the `mosaicod store-optimizer` process for its pass (ru_maxrss).",
              "MB/s: Arrow bytes received by the client (optimizer: the topic's Arrow bytes) per wall-clock second."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
