"""The scan of a catalog rebuild (docs/operations.md#rebuilding-the-catalog): list the store root,
classify the top-level folders and read the small JSON objects of every live folder.

Nothing here reads Parquet data; only listings and metadata documents.  Every document shape
that a Mosaico server ever wrote is accepted (our layout v1, upstream 0.7, the legacy
``manifest.json`` / ``session_uuid`` shape, the Dec-2025 shape, the post-0.7 flattened shape).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ulid import ULID

from ..store import layout
from ..store.objstore import ObjectStore

LEGACY_MANIFEST = "manifest.json"
_FORMATS = {
    "default": "default", "ragged": "ragged", "image": "image",
    "format_default": "default", "format_ragged": "ragged", "format_image": "image",
    "1": "default", "2": "ragged", "3": "image",
}


@dataclass
class Problem:
    """Something the rebuild could not use (reported; ``--strict`` turns it into a failure)."""

    kind: str  # foreign | unreadable | missing-metadata | bad-locator | corrupt-file | null-timestamps | ...
    where: str  # folder or key
    message: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "where": self.where, "message": self.message}


@dataclass
class DataFile:
    key: str  # relative to the store root: tp_<ULID>/data/00003.parquet
    index: int
    size: int

    @property
    def name(self) -> str:
        return self.key.rpartition("/")[2]


@dataclass
class TopicFolder:
    folder: str
    ulid_ms: int
    shape: str  # v1 | upstream-0.7 | legacy-manifest | dec-2025 | post-0.7
    locator: str
    session_locator: str | None
    legacy_session_uuid: str | None
    created_at: int | None
    completed_at: int | None
    serialization_format: str
    ontology_tag: str
    user_metadata: Any
    catalog: dict | None  # our block: uuid, session_uuid, sequence_folder
    commit: dict | None  # _COMMIT.json
    schema_bytes: bytes | None  # schema.arrow
    files: list[DataFile] = field(default_factory=list)

    @property
    def sequence(self) -> str:
        return self.locator.partition("/")[0]


@dataclass
class SequenceFolder:
    folder: str
    ulid_ms: int
    has_metadata: bool
    user_metadata: Any
    catalog: dict | None  # our block: locator, uuid, created_at_ns
    sessions: list[dict] = field(default_factory=list)  # session docs (layout.session_doc)


@dataclass
class Scan:
    sequences: dict[str, SequenceFolder] = field(default_factory=dict)  # folder -> folder info
    topics: dict[str, TopicFolder] = field(default_factory=dict)
    dead: list[str] = field(default_factory=list)  # folders carrying TO_DELETE
    foreign: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def ulid_ms(folder: str) -> int | None:
    m = layout.FOLDER_RE.match(folder)
    if not m:
        return None
    try:
        return ULID.from_str(m.group(2)).milliseconds
    except ValueError:
        return None


def normalise_format(raw: Any) -> str | None:
    key = str(raw).strip().lower() if raw is not None else ""
    return _FORMATS.get(key)


def parse_topic_doc(doc: Any) -> dict:
    """Topic metadata of any known shape -> flat dict; raises ValueError when unusable."""
    if not isinstance(doc, dict):
        raise ValueError("topic metadata is not a JSON object")
    props = doc.get("properties") if isinstance(doc.get("properties"), dict) else {}
    om = doc.get("ontology_metadata")
    if isinstance(om, dict) and isinstance(om.get("properties"), dict):  # 0.7 / v1
        fmt, tag = om["properties"].get("serialization_format"), om["properties"].get("ontology_tag")
        user_metadata = om.get("user_metadata")
        shape = "0.7"
    elif isinstance(om, dict) and ("ontology_tag" in om or "serialization_format" in om):  # post-0.7
        fmt, tag, user_metadata = om.get("serialization_format"), om.get("ontology_tag"), om.get("user_metadata")
        shape = "post-0.7"
    elif "ontology_tag" in props:  # Dec-2025
        fmt, tag, user_metadata = props.get("serialization_format"), props.get("ontology_tag"), doc.get("user_metadata")
        shape = "dec-2025"
    else:
        raise ValueError("no ontology metadata (ontology_tag / serialization_format) in topic metadata")
    locator = props.get("resource_locator")
    if not isinstance(locator, str) or not locator:
        raise ValueError("no properties.resource_locator in topic metadata")
    norm = normalise_format(fmt if fmt is not None else "default")
    if norm is None:
        raise ValueError(f"unknown serialization_format {fmt!r}")
    if not isinstance(tag, str) or not tag:
        raise ValueError("ontology_tag missing or empty")
    session_locator = props.get("session_locator")
    legacy_uuid = props.get("session_uuid")

    def _int(v: Any) -> int | None:
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    catalog = doc.get("catalog") if isinstance(doc.get("catalog"), dict) else None
    return {
        "shape": "v1" if catalog else shape,
        "locator": locator.lstrip("/"),
        "session_locator": session_locator if isinstance(session_locator, str) else None,
        "legacy_session_uuid": str(legacy_uuid) if legacy_uuid else None,
        "created_at": _int(props.get("created_at")),
        "completed_at": _int(props.get("completed_at")),
        "serialization_format": norm,
        "ontology_tag": tag,
        "user_metadata": user_metadata,
        "catalog": catalog,
    }


def _read_json(store: ObjectStore, key: str) -> Any:
    return json.loads(store.get_bytes(key))


def _scan_folder(store: ObjectStore, folder: str) -> tuple[str, Any]:
    """-> ("dead", None) | ("sequence", SequenceFolder) | ("topic", TopicFolder) | ("problem", Problem)."""
    try:
        listing = store.walk_files(folder)
    except Exception as exc:  # noqa: BLE001 - any store failure is reported, not fatal
        return "problem", Problem("unreadable", folder, f"cannot list folder: {exc}")
    names = {key[len(folder) + 1:]: size for key, size in listing if key.startswith(folder + "/")}
    if layout.TO_DELETE in names:
        return "dead", None
    ms = ulid_ms(folder) or 0
    if folder.startswith(layout.SEQUENCE_PREFIX):
        return _scan_sequence(store, folder, ms, names)
    return _scan_topic(store, folder, ms, names)


def _scan_sequence(store: ObjectStore, folder: str, ms: int, names: dict[str, int]) -> tuple[str, Any]:
    seq = SequenceFolder(folder, ms, False, None, None)
    problems: list[Problem] = []
    if layout.METADATA in names:
        try:
            doc = _read_json(store, layout.metadata_key(folder))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            seq.has_metadata = True
            seq.user_metadata = doc.get("user_metadata")
            cat = doc.get("catalog")
            if isinstance(cat, dict) and cat.get("kind", "sequence") == "sequence" and cat.get("locator"):
                seq.catalog = cat
        except Exception as exc:  # noqa: BLE001
            problems.append(Problem("unreadable", layout.metadata_key(folder), f"bad sequence metadata: {exc}"))
    else:
        problems.append(Problem("missing-metadata", folder, "sequence folder has no metadata.json"))
    for name in sorted(names):
        if name.startswith("sessions/") and name.endswith(".json"):
            key = f"{folder}/{name}"
            try:
                doc = _read_json(store, key)
                if not isinstance(doc, dict) or not isinstance(doc.get("locator"), str):
                    raise ValueError("not a session document")
                seq.sessions.append(doc)
            except Exception as exc:  # noqa: BLE001
                problems.append(Problem("unreadable", key, f"bad session file: {exc}"))
    return "sequence", (seq, problems)


def _scan_topic(store: ObjectStore, folder: str, ms: int, names: dict[str, int]) -> tuple[str, Any]:
    problems: list[Problem] = []
    meta_name = layout.METADATA if layout.METADATA in names else (
        LEGACY_MANIFEST if LEGACY_MANIFEST in names else None)
    if meta_name is None:
        return "problem", Problem("missing-metadata", folder, "topic folder has no metadata.json: skipped")
    try:
        info = parse_topic_doc(_read_json(store, f"{folder}/{meta_name}"))
    except Exception as exc:  # noqa: BLE001
        return "problem", Problem("unreadable", f"{folder}/{meta_name}", f"topic skipped: {exc}")
    if meta_name == LEGACY_MANIFEST and info["shape"] != "v1":
        info["shape"] = "legacy-manifest"
    elif info["shape"] == "0.7":
        info["shape"] = "upstream-0.7"
    commit = None
    if layout.COMMIT in names:
        try:
            commit = _read_json(store, layout.commit_key(folder))
            if not isinstance(commit, dict) or not isinstance(commit.get("files"), list):
                raise ValueError("not a commit marker")
        except Exception as exc:  # noqa: BLE001
            commit = None
            problems.append(Problem("unreadable", layout.commit_key(folder), f"bad commit marker ignored: {exc}"))
    schema_bytes = None
    if layout.SCHEMA in names:
        try:
            schema_bytes = store.get_bytes(layout.schema_key(folder))
        except Exception as exc:  # noqa: BLE001
            problems.append(Problem("unreadable", layout.schema_key(folder), f"schema.arrow unreadable: {exc}"))
    files = []
    for name, size in names.items():
        sub, _, base = name.rpartition("/")
        if not sub.startswith(layout.DATA_DIR):
            continue
        idx = layout.data_file_index(base)
        if idx is None:
            if base.startswith("data-") and base.endswith(".parquet"):  # pre-0.7 naming
                digits = base[5:-8]
                idx = int(digits) if digits.isdigit() else None
            if idx is None:
                continue
        files.append(DataFile(f"{folder}/{name}", idx, size))
    files.sort(key=lambda f: (f.index, f.key))
    topic = TopicFolder(folder=folder, ulid_ms=ms, commit=commit, schema_bytes=schema_bytes,
                        files=files, **info)
    return "topic", (topic, problems)


def scan(store: ObjectStore, *, workers: int = 8) -> Scan:
    """List the root and read every live folder's metadata (threads: listings are I/O bound)."""
    out = Scan()
    roots = store.list_dir("")
    candidates = []
    for name in roots:
        if layout.FOLDER_RE.match(name) and ulid_ms(name) is not None:
            candidates.append(name)
        else:
            out.foreign.append(name)
            out.problems.append(Problem("foreign", name, "not a sq_/tp_ folder of a Mosaico store: ignored"))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for folder, (what, payload) in zip(candidates, pool.map(lambda f: _scan_folder(store, f), candidates)):
            if what == "dead":
                out.dead.append(folder)
            elif what == "problem":
                out.problems.append(payload)
            elif what == "sequence":
                seq, problems = payload
                out.sequences[folder] = seq
                out.problems.extend(problems)
            else:
                topic, problems = payload
                out.topics[folder] = topic
                out.problems.extend(problems)
    return out
