"""The plan of a catalog rebuild (docs/operations.md#rebuilding-the-catalog): turn a store scan
into the rows the catalog should hold (sequences, sessions, topics and their data files), keyed
by locator.

Layout v1 folders carry everything exactly.  For upstream-written folders the missing facts are
guessed with the rules of docs/operations.md#stores-written-by-upstream-mosaicod and every guess is recorded in ``Plan.heuristics``.  Identifiers
that must be invented are derived deterministically (UUIDv5 / hashed ULIDs) so that two rebuilds
of the same store produce the same catalog.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ulid import ULID

from .. import locators
from ..store import layout
from .scan import DataFile, Problem, Scan, SequenceFolder, TopicFolder, ulid_ms

NAMESPACE = uuid.UUID("5b0c6f3e-2f61-4a53-9c55-6d6f7361696f")  # fixed: derived ids are stable


def stable_uuid(kind: str, key: str) -> str:
    return str(uuid.uuid5(NAMESPACE, f"{kind}:{key}"))


def stable_ulid(ms: int, key: str) -> str:
    rand = hashlib.sha256(key.encode()).digest()[:10]
    return str(ULID.from_bytes(max(0, ms).to_bytes(6, "big") + rand))


@dataclass
class SequencePlan:
    locator: str
    uuid: str
    user_metadata: Any
    path_in_store: str
    created: int


@dataclass
class SessionPlan:
    locator: str
    uuid: str
    sequence: str
    created: int
    completed: int | None


@dataclass
class FilePlan:
    key: str
    size: int
    committed: dict | None  # entry of _COMMIT.json files (row_count, arrow_size_bytes, size_bytes)


@dataclass
class TopicPlan:
    locator: str
    uuid: str
    sequence: str
    session: str
    user_metadata: Any
    path_in_store: str
    serialization_format: str
    ontology_tag: str
    created: int
    completed: int | None
    optimization_end: int | None
    schema_bytes: bytes | None
    files: list[FilePlan] = field(default_factory=list)
    interrupted: int | None = None  # when its upload broke (_COMMIT.json interrupted_at_ns)


@dataclass
class Plan:
    sequences: dict[str, SequencePlan] = field(default_factory=dict)
    sessions: dict[str, SessionPlan] = field(default_factory=dict)
    topics: dict[str, TopicPlan] = field(default_factory=dict)
    heuristics: list[dict] = field(default_factory=list)
    orphaned: list[dict] = field(default_factory=list)  # live folders not restored
    uploading: list[str] = field(default_factory=list)  # topics left *Uploading*
    unattributed: list[str] = field(default_factory=list)  # anonymous sq_ folders without a name
    problems: list[Problem] = field(default_factory=list)
    # sequence -> its sessions / topics in insertion order, kept by add_session / add_topic
    _sessions_by_sequence: dict[str, dict[str, SessionPlan]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _topics_by_sequence: dict[str, dict[str, TopicPlan]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def add_session(self, s: SessionPlan) -> None:
        _put(self.sessions, self._sessions_by_sequence, s)

    def add_topic(self, t: TopicPlan) -> None:
        _put(self.topics, self._topics_by_sequence, t)

    def sessions_of(self, sequence: str) -> list[SessionPlan]:
        return list(self._sessions_by_sequence.get(sequence, {}).values())

    def topics_of(self, sequence: str) -> list[TopicPlan]:
        return list(self._topics_by_sequence.get(sequence, {}).values())


def _put(by_locator: dict, by_sequence: dict[str, dict], item: Any) -> None:
    """Add (or replace) ``item`` under its locator, in both the flat and the per-sequence index."""
    old = by_locator.get(item.locator)
    if old is not None:
        del by_sequence[old.sequence][item.locator]
    by_locator[item.locator] = item
    by_sequence.setdefault(item.sequence, {})[item.locator] = item


def _group_by_sequence(items: Iterable[Any]) -> dict[str, list]:
    """Items (anything with a ``.sequence``) grouped by sequence name, keeping their order."""
    out: dict[str, list] = {}
    for x in items:
        out.setdefault(x.sequence, []).append(x)
    return out


def _orphan(plan: Plan, folder: str, reason: str) -> None:
    plan.orphaned.append({"folder": folder, "reason": reason})


def _choose_topic_folders(scan: Scan, plan: Plan, footer_rows: Callable[[str], int]) -> dict[str, TopicFolder]:
    by_locator: dict[str, list[TopicFolder]] = {}
    for t in scan.topics.values():
        if not locators.is_topic(t.locator):
            plan.problems.append(Problem("bad-locator", t.folder, f"invalid topic locator {t.locator!r}: skipped"))
            continue
        seq_folder = (t.catalog or {}).get("sequence_folder")
        if seq_folder and seq_folder in scan.dead:
            _orphan(plan, t.folder, f"its sequence folder {seq_folder} is marked TO_DELETE")
            continue
        by_locator.setdefault(t.locator, []).append(t)
    chosen: dict[str, TopicFolder] = {}
    for loc, cands in sorted(by_locator.items()):
        if len(cands) == 1:
            chosen[loc] = cands[0]
            continue
        committed = [c for c in cands if c.commit]
        if committed:
            best = max(committed, key=lambda c: (c.commit.get("state") == "optimized", c.folder[3:]))
            rule = "commit marker (optimized first, then newest)"
        else:
            rows = {c.folder: sum(_safe_rows(footer_rows, f.key) for f in c.files) for c in cands}
            top = max(rows.values())
            best = max((c for c in cands if rows[c.folder] == top), key=lambda c: c.folder[3:])
            rule = f"newest folder with the maximum row count ({top})"
        chosen[loc] = best
        losers = sorted(c.folder for c in cands if c is not best)
        for f in losers:
            _orphan(plan, f, f"duplicate folder of topic {loc}; {best.folder} chosen")
        plan.heuristics.append({"kind": "duplicate-topic-folders", "topic": loc, "chosen": best.folder,
                                "orphaned": losers, "rule": rule})
    return chosen


def _safe_rows(footer_rows: Callable[[str], int], key: str) -> int:
    try:
        return footer_rows(key)
    except Exception:  # noqa: BLE001 - unreadable file counts as empty for the choice
        return 0


def _session_ms(session_locator: str | None) -> int | None:
    if not session_locator:
        return None
    sid = session_locator.rpartition(":")[2]
    try:
        return ULID.from_str(sid).milliseconds
    except ValueError:
        return None


def _assign_sequences(scan: Scan, plan: Plan, topics_by_seq: dict[str, list[TopicFolder]],
                      sequence_map: dict[str, str], skip_anonymous: bool) -> dict[str, SequenceFolder | None]:
    """Sequence name -> folder (None: no folder found).  Exact for folders with a catalog block."""
    named: dict[str, SequenceFolder] = {}
    anonymous: list[SequenceFolder] = []
    for folder, seq in sorted(scan.sequences.items()):
        if seq.catalog:
            loc = str(seq.catalog["locator"])
            if not locators.is_sequence(loc):
                plan.problems.append(Problem("bad-locator", folder, f"invalid sequence locator {loc!r}: skipped"))
                continue
            prev = named.get(loc)
            if prev is not None:  # two live folders claim one name: keep the newest creation
                keep, drop = sorted([prev, seq], key=lambda s: (int(s.catalog.get("created_at_ns") or 0), s.folder))[::-1]
                named[loc] = keep
                _orphan(plan, drop.folder, f"duplicate folder of sequence {loc}; {keep.folder} chosen")
                continue
            named[loc] = seq
        else:
            anonymous.append(seq)
    # Session-file-only sequences are already named; now names referenced only by topics.
    wanted = sorted(set(topics_by_seq) - set(named))
    assigned: dict[str, SequenceFolder | None] = dict(named)
    free = {s.folder: s for s in anonymous}
    for folder, name in sorted(sequence_map.items()):
        if folder not in free:
            plan.problems.append(Problem("sequence-map", folder,
                                         "--sequence-map names a folder that is not an anonymous live sq_ folder"))
            continue
        if not locators.is_sequence(name):
            plan.problems.append(Problem("sequence-map", folder, f"--sequence-map: invalid sequence name {name!r}"))
            continue
        assigned[name] = free.pop(folder)
        plan.heuristics.append({"kind": "sequence-folder", "folder": folder, "sequence": name,
                                "rule": "--sequence-map"})
    t_first: dict[str, int] = {}
    for name in wanted:
        if name in assigned:
            continue
        times = [ms for t in topics_by_seq[name]
                 for ms in [_session_ms(t.session_locator) or (t.created_at or 0) // 1_000_000] if ms]
        t_first[name] = min(times) if times else 0
    if not skip_anonymous:
        for name in sorted(t_first, key=lambda n: (t_first[n], n)):
            fits = [s for s in free.values() if s.ulid_ms <= t_first[name]]
            if not fits:
                continue
            best = max(fits, key=lambda s: (s.ulid_ms, s.folder))
            del free[best.folder]
            assigned[name] = best
            plan.heuristics.append({"kind": "sequence-folder", "folder": best.folder, "sequence": name,
                                    "rule": "latest unassigned sq_ folder created before the first session "
                                            f"({best.ulid_ms} <= {t_first[name]} ms)"})
    for name in wanted:
        if name not in assigned:
            assigned[name] = None
    for folder in sorted(free):
        plan.unattributed.append(folder)
    return assigned


def build_plan(scan: Scan, *, footer_rows: Callable[[str], int], sequence_map: dict[str, str] | None = None,
               skip_anonymous: bool = False) -> Plan:
    plan = Plan()
    topics = _choose_topic_folders(scan, plan, footer_rows)
    topics_by_seq: dict[str, list[TopicFolder]] = _group_by_sequence(topics.values())
    seq_folders = _assign_sequences(scan, plan, topics_by_seq, sequence_map or {}, skip_anonymous)

    # -- sequences --------------------------------------------------------------------------
    for name in sorted(seq_folders):
        folder = seq_folders[name]
        if folder is not None and folder.catalog:
            c = folder.catalog
            plan.sequences[name] = SequencePlan(name, str(c.get("uuid") or stable_uuid("sequence", folder.folder)),
                                                folder.user_metadata, folder.folder,
                                                int(c.get("created_at_ns") or folder.ulid_ms * 1_000_000))
            continue
        if folder is not None:
            created = folder.ulid_ms * 1_000_000
            path = folder.folder
            meta = folder.user_metadata
        else:
            seq_topics = topics_by_seq.get(name, [])
            first = [ms * 1_000_000 for t in seq_topics for ms in [_session_ms(t.session_locator)] if ms]
            first += [t.created_at for t in seq_topics if t.created_at]
            created = min(first) if first else 0
            path = layout.SEQUENCE_PREFIX + stable_ulid(created // 1_000_000, "sequence:" + name)
            meta = None
            plan.heuristics.append({"kind": "sequence-without-folder", "sequence": name, "path_in_store": path,
                                    "rule": "no sq_ folder could be attributed: user metadata NULL, "
                                            "created_at from its first session"})
        plan.sequences[name] = SequencePlan(name, stable_uuid("sequence", path), meta, path, created)

    # -- sessions from our session files -----------------------------------------------------
    for name, folder in seq_folders.items():
        if folder is None or not folder.catalog:
            continue
        for doc in folder.sessions:
            loc = doc["locator"]
            if not locators.is_session(loc) or loc.partition(":")[0] != name:
                plan.problems.append(Problem("bad-locator", folder.folder, f"session {loc!r} does not belong to {name}"))
                continue
            plan.add_session(SessionPlan(loc, str(doc.get("uuid") or stable_uuid("session", loc)), name,
                                         int(doc.get("created_at_ns") or 0), doc.get("completed_at_ns")))

    # -- sessions derived from topics (upstream stores, or a lost session file) ----------------
    groups: dict[str, list[TopicFolder]] = {}
    for t in topics.values():
        if t.sequence not in plan.sequences:
            continue
        loc = t.session_locator
        if loc is None and t.legacy_session_uuid:
            loc = f"legacy-uuid:{t.legacy_session_uuid}"
        if loc is None:
            loc = f"orphan-topic:{t.folder}"
        groups.setdefault(loc, []).append(t)
    topic_session: dict[str, str] = {}
    for key, members in sorted(groups.items()):
        seq = members[0].sequence
        if key in plan.sessions:
            for t in members:
                topic_session[t.folder] = key
            continue
        created_min = min((t.created_at for t in members if t.created_at), default=0)
        if key.startswith(("legacy-uuid:", "orphan-topic:")):
            loc = f"{seq}:{stable_ulid(created_min // 1_000_000, key)}"
            ms = None
        else:
            loc = key
            ms = _session_ms(key)
            if loc.partition(":")[0] != seq or not locators.is_session(loc):
                loc = f"{seq}:{stable_ulid(created_min // 1_000_000, key + '@' + seq)}"
        ids = {str((t.catalog or {}).get("session_uuid")) for t in members if (t.catalog or {}).get("session_uuid")}
        if key.startswith("legacy-uuid:"):
            ids = {key.partition(":")[2]}
        uuid_known = len(ids) == 1
        sess_uuid = ids.pop() if uuid_known else stable_uuid("session", loc)
        completed = None
        if all(t.completed_at for t in members):
            completed = max(t.completed_at for t in members)
        created = ms * 1_000_000 if ms else created_min
        plan.add_session(SessionPlan(loc, sess_uuid, seq, created, completed))
        for t in members:
            topic_session[t.folder] = loc
        plan.heuristics.append({"kind": "derived-session", "session": loc, "uuid_exact": uuid_known,
                                "rule": "no session file: created_at from the session ULID (ms), completed_at = "
                                        "latest topic completion when every topic completed"})

    # -- topics ------------------------------------------------------------------------------
    for loc, t in sorted(topics.items()):
        if t.sequence not in plan.sequences:
            _orphan(plan, t.folder, f"no sequence {t.sequence} could be restored")
            continue
        files = _topic_files(t, plan)
        completed = t.completed_at
        interrupted = (t.commit or {}).get("interrupted_at_ns")
        interrupted = interrupted if isinstance(interrupted, int) and not isinstance(interrupted, bool) else None
        if interrupted is not None and completed is None:  # finalized with its session, if it was
            completed = plan.sessions[topic_session[t.folder]].completed
        if t.commit is None and t.catalog is not None:
            if completed is None:
                plan.uploading.append(loc)
            else:
                plan.problems.append(Problem("no-commit", t.folder,
                                             "topic completed but has no _COMMIT.json: restored as finalized"))
        elif t.commit is None and completed is None and t.files:
            plan.uploading.append(loc)
        opt_end = None
        if t.commit and t.commit.get("state") == "optimized":
            opt_end = t.commit.get("committed_at_ns")
        plan.add_topic(TopicPlan(
            locator=loc, uuid=str((t.catalog or {}).get("uuid") or stable_uuid("topic", t.folder)),
            sequence=t.sequence, session=topic_session[t.folder], user_metadata=t.user_metadata,
            path_in_store=t.folder, serialization_format=t.serialization_format, ontology_tag=t.ontology_tag,
            created=t.created_at if t.created_at is not None else t.ulid_ms * 1_000_000,
            completed=completed, optimization_end=opt_end, schema_bytes=t.schema_bytes, files=files,
            interrupted=interrupted))
    return plan


def _topic_files(t: TopicFolder, plan: Plan) -> list[FilePlan]:
    if not t.commit:
        return [FilePlan(f.key, f.size, None) for f in t.files]
    present: dict[str, DataFile] = {f.name: f for f in t.files}
    out = []
    listed = set()
    for entry in t.commit.get("files", []):
        name = str(entry.get("name", ""))
        listed.add(name)
        f = present.get(name)
        if f is None:
            plan.problems.append(Problem("missing-file", f"{t.folder}/{layout.DATA_DIR}/{name}",
                                         "listed in _COMMIT.json but missing from the store"))
            continue
        out.append(FilePlan(f.key, f.size, entry))
    for name, f in present.items():
        if name not in listed:
            plan.problems.append(Problem("uncommitted-file", f.key, "not listed in _COMMIT.json: ignored"))
    out.sort(key=lambda fp: (layout.data_file_index(fp.key) or 0, fp.key))
    return out


__all__ = ["Plan", "SequencePlan", "SessionPlan", "TopicPlan", "FilePlan", "build_plan", "stable_uuid",
           "ulid_ms"]
