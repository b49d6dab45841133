"""Store layout v1 (docs/storage.md#object-store-layout): key names and the JSON documents we write.

    sq_<ULID>/metadata.json                 {"user_metadata": ..., "catalog": {...}}
    sq_<ULID>/sessions/<SESSION_ULID>.json  session facts
    tp_<ULID>/metadata.json                 upstream topic metadata + "catalog" block
    tp_<ULID>/schema.arrow                  Arrow IPC schema message of the do_put schema
    tp_<ULID>/data/NNNNN.parquet            data chunks
    tp_<ULID>/_COMMIT.json                  commit marker (last write of a finished or interrupted upload)
    <folder>/TO_DELETE                      deletion marker
"""

from __future__ import annotations

import json
import re
from typing import Any

from ulid import ULID

FORMAT = "mosaico-py/1"
SEQUENCE_PREFIX = "sq_"
TOPIC_PREFIX = "tp_"
METADATA = "metadata.json"
SCHEMA = "schema.arrow"
COMMIT = "_COMMIT.json"
TO_DELETE = "TO_DELETE"
DATA_DIR = "data"

FOLDER_RE = re.compile(r"^(sq|tp)_([0-9A-HJKMNP-TV-Z]{26})$")
DATA_FILE_RE = re.compile(r"^(\d{5,})\.parquet$")


def new_ulid() -> str:
    return str(ULID())


def new_sequence_folder() -> str:
    return SEQUENCE_PREFIX + new_ulid()


def new_topic_folder() -> str:
    return TOPIC_PREFIX + new_ulid()


def metadata_key(folder: str) -> str:
    return f"{folder}/{METADATA}"


def session_key(sequence_folder: str, session_locator: str) -> str:
    """The session document's key: its sequence folder followed by ``session_key("", locator)``
    (the journal builds it that way from the sequence row, catalog/journal.py)."""
    session_id = session_locator.rpartition(":")[2]
    return f"{sequence_folder}/sessions/{session_id}.json"


def schema_key(topic_folder: str) -> str:
    return f"{topic_folder}/{SCHEMA}"


def commit_key(topic_folder: str) -> str:
    return f"{topic_folder}/{COMMIT}"


def to_delete_key(folder: str) -> str:
    return f"{folder}/{TO_DELETE}"


def data_file_name(index: int) -> str:
    return f"{index:05d}.parquet"


def data_key(topic_folder: str, index: int) -> str:
    return f"{topic_folder}/{DATA_DIR}/{data_file_name(index)}"


def data_file_index(name: str) -> int | None:
    m = DATA_FILE_RE.match(name.rpartition("/")[2])
    return int(m.group(1)) if m else None


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sequence_metadata_doc(*, locator: str, uuid: str, created_at_ns: int, user_metadata: Any) -> dict:
    return {
        "user_metadata": user_metadata,
        "catalog": {"format": FORMAT, "kind": "sequence", "locator": locator, "uuid": uuid,
                    "created_at_ns": created_at_ns},
    }


def session_doc(*, locator: str, uuid: str, created_at_ns: int, completed_at_ns: int | None) -> dict:
    return {"format": FORMAT, "locator": locator, "uuid": uuid, "created_at_ns": created_at_ns,
            "completed_at_ns": completed_at_ns}


def topic_metadata_doc(*, locator: str, session_locator: str, created_at_ns: int,
                       completed_at_ns: int | None, serialization_format: str, ontology_tag: str,
                       user_metadata: Any, topic_uuid: str, session_uuid: str,
                       sequence_folder: str) -> dict:
    return {
        "properties": {"created_at": created_at_ns, "completed_at": completed_at_ns,
                       "session_locator": session_locator, "resource_locator": locator},
        "ontology_metadata": {
            "properties": {"serialization_format": serialization_format, "ontology_tag": ontology_tag},
            "user_metadata": user_metadata,
        },
        "interval_props": None,
        "catalog": {"format": FORMAT, "kind": "topic", "uuid": topic_uuid, "session_uuid": session_uuid,
                    "sequence_folder": sequence_folder},
    }


def commit_doc(*, state: str, committed_at_ns: int, row_count: int,
               timestamp_range: tuple[int, int] | None, files: list[dict],
               interrupted_at_ns: int | None = None) -> dict:
    """``state``: finalized | interrupted (the upload broke; ``files`` is what it received) |
    optimized.  ``interrupted_at_ns`` stays on a topic whose upload was interrupted, whatever
    happens to it later (finalized with its session, optimized)."""
    doc = {
        "format": FORMAT, "state": state, "committed_at_ns": committed_at_ns, "row_count": row_count,
        "timestamp_range": ({"start_ns": timestamp_range[0], "end_ns": timestamp_range[1]}
                            if timestamp_range else None),
        "files": files,
    }
    if interrupted_at_ns is not None:
        doc["interrupted_at_ns"] = interrupted_at_ns
    return doc
