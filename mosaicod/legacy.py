"""The older (pre-0.6) dialect, served next to 0.7's for read-only clients such as PlotJuggler's
Mosaico plugin.  Everything here is additive: keys and actions a 0.7.0 client never reads.

* the `version` action answers with the `info` payload (mosaicod/server.py);
* each topic endpoint's ``app_metadata`` carries an ``info`` block beside ``data_info``;
* FlightInfo schemas carry the old ``mosaico:*`` metadata (GetSchema and DoGet schemas never do);
* queries accept ``locator`` for ``name``, with substring ``$match`` (mosaicod/query/parse.py) and,
  for topics, the whole ``seq/topic`` locator (mosaicod/query/sql.py), and answer with
  ``timestamp_range`` per topic (mosaicod/query/engine.py).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from .views import view_schema

CONTEXT = "mosaico:context"
PROPERTIES = "mosaico:properties"
USER_METADATA = "mosaico:user_metadata"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def info_block(data_info: dict) -> dict:
    """The old endpoint statistics, whole-topic (a window never changes them)."""
    return {"total_bytes": data_info["total_bytes"], "chunks_number": data_info["total_chunks_count"],
            "timestamp": data_info["interval"]}


def sequence_flight_schema(user_metadata: dict | None) -> pa.Schema:
    """FlightInfo schema of a sequence: no fields; the context and, when there is some, the user
    metadata as compact JSON text."""
    metadata = {CONTEXT: "sequence"}
    if user_metadata:
        metadata[USER_METADATA] = _compact(user_metadata)
    return pa.schema([], metadata=metadata)


def topic_flight_schema(stored: pa.Schema, *, ontology_tag: str, serialization_format: str,
                        user_metadata: dict | None) -> pa.Schema:
    """FlightInfo schema of a topic: its fields as returned by DoGet (view types), the schema-level
    metadata replaced by the context, the properties and the user metadata (``null`` if none)."""
    props = {"serialization_format": serialization_format, "ontology_tag": ontology_tag}
    return view_schema(stored).with_metadata({CONTEXT: "topic", PROPERTIES: _compact(props),
                                              USER_METADATA: _compact(user_metadata or None)})
