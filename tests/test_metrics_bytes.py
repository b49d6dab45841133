"""Byte counters of the Prometheus metrics follow what DoPut received and DoGet sent."""

from __future__ import annotations

from mosaicod import metrics

from .test_core_bad_input import act, batch, new_topic, put, read


def _value(counter) -> float:
    return counter._value.get()


def test_bytes_received_and_sent_are_counted(raw_client):
    sess, tid = new_topic(raw_client, "counted", "t")
    sent = [batch(list(range(i * 1000, (i + 1) * 1000))) for i in range(3)]
    in0 = _value(metrics.BYTES_IN)
    put(raw_client, "counted/t", tid, sent)
    act(raw_client, "session_finalize", {"session_uuid": sess})
    assert _value(metrics.BYTES_IN) - in0 == sum(b.nbytes for b in sent)

    out0 = _value(metrics.BYTES_OUT)
    table = read(raw_client, "counted/t")
    assert table.num_rows == 3000
    assert _value(metrics.BYTES_OUT) - out0 == table.nbytes
