#!/usr/bin/env python
"""A no-op server speaking the mosaicod protocol: the reference for "time the server adds".

It answers the actions a writing client sends (``info``, ``sequence_create``,
``session_create``, ``topic_create``, ``session_finalize``, ...) with trivial, well-formed
responses in the same JSON dialect as mosaicod, and drains DoPut streams without storing
anything.  Nothing is checked, stored or indexed: what a client measures against it is the
client's own cost plus the transport.

    python bench/noop_server.py [--port N]     # prints "PORT <n>" once listening
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid

import pyarrow.flight as flight

MiB = 1024 * 1024


class NoopServer(flight.FlightServerBase):
    def do_action(self, context, action):
        name = action.type
        body = json.loads(action.body.to_pybytes() or b"{}")
        if name == "info":
            response = {"version": "0.7.0", "semver": {"major": 0, "minor": 7, "patch": 0, "pre": None},
                        "config": {"grpc_max_decode_message_size": 50 * MiB,
                                   "grpc_max_encode_message_size": 512 * MiB,
                                   "grpc_target_encode_message_size": 25 * MiB}}
        elif name == "session_create":
            response = {"uuid": str(uuid.uuid4()), "locator": f"{body.get('locator')}:noop"}
        elif name == "topic_create":
            response = {"uuid": str(uuid.uuid4())}
        else:
            response = None
        return [flight.Result(json.dumps({"action": name, "response": response}).encode())]

    def do_put(self, context, descriptor, reader, writer):
        for _chunk in reader:
            pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = ap.parse_args(argv)
    server = NoopServer(f"grpc://127.0.0.1:{args.port}")
    print(f"PORT {server.port}", flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
