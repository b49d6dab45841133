"""Helpers of the operations tests: real `mosaicod` processes, SDK writes, protocol-level reads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl

MOSAICOD = [sys.executable, "-m", "mosaicod"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSAICOD_")}
    env.update({"MOSAICOD_LOG_FORMAT": "json", "MOSAICOD_LOG_LEVEL": "info"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(MOSAICOD + args, env=env, capture_output=True, text=True, timeout=timeout)


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class ServeProcess:
    proc: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path

    @property
    def location(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def metrics_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_serve(args: list[str], env: dict[str, str], log_path: Path, timeout: float = 90) -> ServeProcess:
    port, mport = free_port(), free_port()
    fh = open(log_path, "w")
    proc = subprocess.Popen(MOSAICOD + ["serve", "--host", "127.0.0.1", "--port", str(port),
                                        "--metrics-port", str(mport), *args],
                            env=env, stdout=fh, stderr=subprocess.STDOUT)
    fh.close()
    srv = ServeProcess(proc, port, mport, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosaicod serve exited with {proc.returncode}:\n{srv.log()}")
        try:
            if http_get(srv.metrics_url("/healthz"), timeout=2)[0] == 200:
                return srv
        except OSError:
            pass
        time.sleep(0.2)
    srv.stop()
    raise RuntimeError(f"mosaicod serve did not become healthy:\n{srv.log()}")


def write_sequence(port: int, name: str, topics: dict[str, int], *, payload: int = 64, seed: int = 0,
                   ts_offset: int = 0, batch_bytes: int | None = None) -> None:
    """Create a sequence with the SDK: each topic gets ``rows`` String messages of ``payload``
    hex chars; timestamps are unique and (for several topics) interleaved.  ``batch_bytes``
    makes the client flush record batches of about that size (many small do_put batches, like a
    client with a small message limit), so the server writes many small chunks."""
    import random

    from mosaicolabs import Message, MosaicoClient, String

    rnd = random.Random(seed)
    client = MosaicoClient.connect("127.0.0.1", port)
    try:
        with client.sequence_create(name, {"writer": "ops-test", "seed": seed}) as sw:
            for t_index, (topic, rows) in enumerate(topics.items()):
                tw = sw.topic_create(topic, {"index": t_index}, String)
                if batch_bytes:
                    tw._wrstate.max_batch_size_bytes = batch_bytes
                for i in range(rows):
                    text = rnd.getrandbits(payload * 4).to_bytes(payload // 2, "big").hex()
                    tw.push(Message(timestamp_ns=ts_offset + 1_000 + i * 10 + t_index, data=String(data=text)))
    finally:
        client.close()


def read_topic(location: str, locator: str, start: int | None = None, end: int | None = None) -> pa.Table:
    """The topic as the protocol serves it (get_flight_info + do_get, as the SDK does)."""
    cmd: dict = {"resource_locator": locator}
    if start is not None:
        cmd["timestamp_ns_start"] = start
    if end is not None:
        cmd["timestamp_ns_end"] = end
    client = fl.FlightClient(location)
    try:
        info = client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps(cmd).encode()))
        tables = [client.do_get(ep.ticket).read_all() for ep in info.endpoints]
    finally:
        client.close()
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def log_events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out
