"""Transport sizing settings: what `info` reports to clients and how DoGet batches are sized."""

from __future__ import annotations

import json

import pyarrow.flight as flight
import pytest

from .test_core_bad_input import act, batch, new_topic, put

MiB = 1024 * 1024
ROW_BYTES = 16  # timestamp_ns int64 + data float64 (test_core_bad_input.SCHEMA)


@pytest.mark.parametrize("max_batch_size, target, rows_cap", [
    (100, 8 * MiB, 100),             # the row cap binds
    (8192, 64 * ROW_BYTES, 64),      # the target message size binds
])
def test_info_reports_sizes_and_do_get_batches_follow_them(make_settings, start_server,
                                                           max_batch_size, target, rows_cap):
    srv = start_server(make_settings(max_batch_size=max_batch_size, target_grpc_encode_message_size=target,
                                     max_grpc_decode_message_size=16 * MiB))
    c = flight.FlightClient(srv.location)
    try:
        config = act(c, "info", {})["config"]
        assert config["grpc_max_decode_message_size"] == 16 * MiB
        assert config["grpc_target_encode_message_size"] == target

        sess, tid = new_topic(c, "sized", "t")
        put(c, "sized/t", tid, [batch(list(range(1000)))])
        act(c, "session_finalize", {"session_uuid": sess})
        info = c.get_flight_info(flight.FlightDescriptor.for_command(
            json.dumps({"resource_locator": "sized/t"}).encode()))
        sizes = [chunk.data.num_rows for chunk in c.do_get(info.endpoints[0].ticket)]
        assert sum(sizes) == 1000
        assert max(sizes) == rows_cap
    finally:
        c.close()
