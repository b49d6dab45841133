"""The query engine through mosaicolabs 0.7.0's builders, on a dataset with known answers
(tests/query_data.py): every operator in every domain, globs, nested metadata, lists of structs,
NaN and nulls, empty results, several domains at once, clusterize/intersect and bad queries."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from mosaicolabs import GPS, IMU, QueryOntologyCatalog, QuerySequence, QueryTopic

from mosaicod.config import load_settings
from mosaicod.query import run_query_with_stats

from .conftest import connect, create_database, drop_database, start_in_process
from .query_data import T0, Robot, write_dataset

ALL = {"drive_a": ["/robot", "/sensors/imu"], "drive_b": ["/sensors/gps", "/sensors/imu"],
       "test_c": ["/idle", "/robot"]}


@pytest.fixture(scope="module")
def qsrv(pg_admin_url, tmp_path_factory):
    db = create_database(pg_admin_url)
    settings = load_settings({"db_url": db, "data_dir": str(tmp_path_factory.mktemp("qdata")),
                              "log_level": "error", "log_format": "plain"}, env={})
    srv = start_in_process(settings)
    yield srv
    srv.stop()
    drop_database(pg_admin_url, db)


@pytest.fixture(scope="module")
def qc(qsrv):
    c = connect(qsrv)
    write_dataset(c)
    yield c
    c.close()


@pytest.fixture(scope="module")
def raw(qsrv, qc):
    c = flight.FlightClient(qsrv.location)
    yield c
    c.close()


def shape(resp) -> dict:
    assert resp is not None
    return {it.sequence.name: [t.name for t in it.topics] for it in resp}


def pick(*names, topics=None) -> dict:
    return {n: (topics if topics is not None else ALL[n]) for n in names}


def seq_md(key, **op):
    return QuerySequence().with_user_metadata(key, **op)


# -- sequence domain ------------------------------------------------------------------------------

SEQUENCE_CASES = [
    (QuerySequence().with_name("drive_a"), pick("drive_a")),
    (QuerySequence().with_name("/drive_a"), pick("drive_a")),
    (QuerySequence().with_name("nope"), {}),
    (QuerySequence().with_name("lonely"), {}),  # no topics: never returned
    (QuerySequence().with_name_match("drive_*"), pick("drive_a", "drive_b")),
    (QuerySequence().with_name_match("*_[a-b]"), pick("drive_a", "drive_b")),
    (QuerySequence().with_name_match("?est_?"), pick("test_c")),
    (QuerySequence().with_name_match("drive_#"), {}),
    (QuerySequence().with_created_timestamp(time_start=1), pick("drive_a", "drive_b", "test_c")),
    (QuerySequence().with_created_timestamp(time_end=1), {}),
    (QuerySequence().with_created_timestamp(time_start=1, time_end=2), {}),
    (seq_md("env.visibility", lt=50), pick("drive_a")),
    (seq_md("env.visibility", leq=30), pick("drive_a")),
    (seq_md("env.visibility", gt=30), pick("drive_b")),
    (seq_md("env.visibility", geq=30), pick("drive_a", "drive_b")),
    (seq_md("env.visibility", between=[30, 80]), pick("drive_a", "drive_b")),
    (seq_md("env.visibility", between=[31, 79]), {}),
    (seq_md("env.visibility", outside=[31, 79]), pick("drive_a", "drive_b")),
    (seq_md("env.visibility", outside=[0, 100]), {}),
    (seq_md("env.weather", eq="rain"), pick("drive_a")),
    (seq_md("env.weather", lt="s"), pick("drive_a")),
    (seq_md("project", eq="Apollo"), pick("drive_a", "test_c")),
    (seq_md("project", neq="Apollo"), pick("drive_b")),
    (seq_md("project", in_=["Gemini", "Zeus"]), pick("drive_b")),
    (seq_md("project", match="Ap*"), pick("drive_a", "test_c")),
    (seq_md("project", match="?emin?"), pick("drive_b")),
    (seq_md("count", ex=True), pick("drive_b", "test_c")),
    (seq_md("count", ex=False), pick("drive_a")),
    (seq_md("count", eq=5), pick("drive_b")),  # JSON types are not coerced
    (seq_md("count", eq="5"), pick("test_c")),
    (seq_md("level", gt=5), pick("drive_b")),  # 7.5 vs integer operand
    (seq_md("level", between=[2.5, 3.0]), pick("drive_a")),
    (seq_md("tags", eq="fleet-3"), pick("drive_a")),  # arrays match existentially
    (seq_md("tags[*]", match="fleet-#"), pick("drive_a", "drive_b")),
    (seq_md("tags[1]", eq="night"), pick("drive_a")),
    (seq_md("runs[*].id", eq=3), pick("drive_b")),
    (seq_md("runs[0].id", eq=1), pick("drive_a")),
    (seq_md("runs[!].ok", eq=True), pick("drive_b")),
    (seq_md("runs[?].ok", eq=False), pick("drive_a")),
    (seq_md("*.weather", eq="sun"), pick("drive_b")),
    (seq_md("**.x", eq=1), pick("test_c")),
    (seq_md("my key", eq="v 1"), pick("drive_a")),
    (seq_md("sub-key.deep.x", geq=1), pick("test_c")),
    (seq_md("missing.key", ex=False), pick("drive_a", "drive_b", "test_c")),
]


@pytest.mark.parametrize("q,expected", SEQUENCE_CASES, ids=lambda v: json.dumps(v.to_dict()) if hasattr(v, "to_dict") else None)
def test_sequence_domain(qc, q, expected):
    assert shape(qc.query(q)) == expected


# -- topic domain ---------------------------------------------------------------------------------

TOPIC_CASES = [
    (QueryTopic().with_name("/sensors/imu"), {"drive_a": ["/sensors/imu"], "drive_b": ["/sensors/imu"]}),
    (QueryTopic().with_name("sensors/imu"), {"drive_a": ["/sensors/imu"], "drive_b": ["/sensors/imu"]}),
    (QueryTopic().with_name_match("/sensors/*"), {"drive_a": ["/sensors/imu"], "drive_b": ALL["drive_b"]}),
    (QueryTopic().with_name_match("*imu"), {"drive_a": ["/sensors/imu"], "drive_b": ["/sensors/imu"]}),
    (QueryTopic().with_name_match("/?obot"), {"drive_a": ["/robot"], "test_c": ["/robot"]}),
    (QueryTopic().with_name_match("?obot"), {"drive_a": ["/robot"], "test_c": ["/robot"]}),
    (QueryTopic().with_ontology_tag("GPS"), {"drive_b": ["/sensors/gps"]}),
    (QueryTopic().with_ontology_tag("gps"), {}),
    (QueryTopic().with_user_metadata("kind", eq="Robot"), {"drive_a": ["/robot"], "test_c": ["/robot"]}),
    (QueryTopic().with_user_metadata("name", match="sensors/*"), {"drive_a": ["/sensors/imu"], "drive_b": ALL["drive_b"]}),
    (QueryTopic().with_created_timestamp(time_start=1), ALL),
    (QueryTopic().with_created_timestamp(time_end=1), {}),
]


@pytest.mark.parametrize("q,expected", TOPIC_CASES)
def test_topic_domain(qc, q, expected):
    assert shape(qc.query(q)) == expected


def test_round_trip_of_responses(qc):
    r = qc.query(QueryTopic().with_name_match("/sensors/*"))
    assert shape(qc.query(r.to_query_topic())) == shape(r)
    assert shape(qc.query(r.to_query_sequence())) == pick("drive_a", "drive_b")


# -- ontology domain ------------------------------------------------------------------------------

IMU_A = {"drive_a": ["/sensors/imu"]}
IMU_B = {"drive_b": ["/sensors/imu"]}
IMU_AB = {**IMU_A, **IMU_B}
R_A = {"drive_a": ["/robot"]}
R_C = {"test_c": ["/robot"]}
R_AC = {**R_A, **R_C}
x = IMU.Q.acceleration.x

ONTOLOGY_CASES = [
    ([x.eq(5.0)], IMU_A), ([x.eq(5)], IMU_A), ([x.eq(5.5)], {}),
    ([x.neq(0.0)], IMU_AB), ([x.lt(-8.5)], IMU_B), ([x.leq(0.0)], IMU_AB),
    ([x.gt(18.5)], IMU_A), ([x.geq(19.0)], IMU_A), ([x.gt(19.0)], {}),
    ([x.between(-1.0, 0.0)], IMU_AB), ([x.between(0.5, 0.6)], {}),
    ([x.outside(-9.0, 19.0)], {}), ([x.outside(-8.5, 19.0)], IMU_B),
    ([x.in_(3.0, -3.0)], IMU_AB), ([x.in_(100.0)], {}),
    ([IMU.Q.timestamp_ns.between(1185, 1195)], IMU_A), ([IMU.Q.timestamp_ns.geq(5009)], IMU_B),
    ([x.gt(10.0), IMU.Q.timestamp_ns.lt(1100)], {}),  # same-row AND
    ([x.gt(10.0), IMU.Q.timestamp_ns.lt(1150)], IMU_A),
    ([GPS.Q.status.satellites.geq(11)], {"drive_b": ["/sensors/gps"]}),
    ([GPS.Q.status.satellites.eq(3)], {}),
    ([Robot.Q.speed.gt(6.0)], R_A), ([Robot.Q.speed.lt(2.0)], R_A), ([Robot.Q.speed.eq(2.0)], R_C),
    ([Robot.Q.speed.neq(1.5)], R_AC),  # NaN differs from 1.5; null never matches
    ([Robot.Q.speed.gt(100.0)], {}), ([Robot.Q.speed.outside(1.0, 8.0)], {}),
    ([Robot.Q.mode.eq("auto")], R_A), ([Robot.Q.mode.match("auto*")], R_AC),
    ([Robot.Q.mode.match("[Aa]uto")], R_AC), ([Robot.Q.mode.lt("B")], R_C),
    ([Robot.Q.mode.in_("manual", "x")], R_A), ([Robot.Q.mode.between("b", "n")], R_A),
    ([Robot.Q.mode.geq("z")], {}),
    ([Robot.Q.ok.eq(False)], R_AC),
    ([Robot.Q.speed.eq(1.5), Robot.Q.mode.eq("manual")], {}),
    ([Robot.Q.speed.eq(1.5), Robot.Q.mode.eq("auto")], R_A),
    ([Robot.Q.ranges.any().gt(8.0)], R_C), ([Robot.Q.ranges.all().geq(2.0)], R_AC),
    ([Robot.Q.ranges.all().lt(1.0)], {}),  # the empty list is not "all"
    ([Robot.Q.ranges[1].eq(2.0)], R_A), ([Robot.Q.ranges[2].eq(7.0)], R_A), ([Robot.Q.ranges[5].geq(0.0)], {}),
    ([Robot.Q.ranges.any().between(0.4, 0.6)], R_C), ([Robot.Q.ranges.all().outside(0.0, 5.5)], {}),
    ([Robot.Q.ranges.any().in_(6.0)], R_A),
    ([Robot.Q.poses.any().x.gt(8.0)], R_C), ([Robot.Q.poses.all().x.geq(0.0)], R_AC),
    ([Robot.Q.poses.all().x.lt(0.0)], R_C), ([Robot.Q.poses[1].x.eq(9.5)], R_C),
    ([Robot.Q.poses[0].y.eq(2.0)], R_A), ([Robot.Q.poses.any().y.eq(3.0), Robot.Q.ok.eq(True)], {}),
    ([Robot.Q.stamp.gt(dt.datetime(2024, 1, 1, 13, 0))], R_C),
    ([Robot.Q.stamp.between(T0, T0 + dt.timedelta(minutes=5))], R_A),
    ([Robot.Q.stamp.eq(T0 + dt.timedelta(minutes=61))], R_C),
    ([x.leq(0.0), GPS.Q.status.satellites.gt(3)], {"drive_b": ["/sensors/gps", "/sensors/imu"]}),
    ([x.gt(18.0), GPS.Q.status.satellites.gt(3)], {}),  # drive_a has no GPS
    ([x.gt(18.0), Robot.Q.ok.eq(True)], {"drive_a": ["/robot", "/sensors/imu"]}),
]


@pytest.mark.parametrize("exprs,expected", ONTOLOGY_CASES, ids=lambda v: ",".join(json.dumps(e.to_dict()) for e in v) if isinstance(v, list) else None)
def test_ontology_domain(qc, exprs, expected):
    assert shape(qc.query(QueryOntologyCatalog(*exprs))) == expected


def test_domains_combined(qc):
    onto = QueryOntologyCatalog(Robot.Q.ok.eq(False))
    assert shape(qc.query(seq_md("project", eq="Apollo"), onto)) == R_AC
    assert shape(qc.query(QuerySequence().with_name("test_c"), onto)) == R_C
    assert shape(qc.query(QuerySequence().with_name("drive_b"), onto)) == {}
    assert shape(qc.query(QueryTopic().with_name("/robot"), seq_md("level", ex=True), onto)) == R_A
    assert shape(qc.query(seq_md("project", eq="Apollo"), QueryTopic().with_ontology_tag("IMU"))) == \
        {"drive_a": ["/sensors/imu"], "test_c": ["/idle"]}


def test_raw_edge_cases(qsrv, qc):
    rt = qsrv.runtime
    run = lambda body: run_query_with_stats(rt.engine, rt.store, body)[0]  # noqa: E731
    assert run({}) == {"items": []}
    assert run({"sequence": {}, "topic": {"user_metadata": {}}}) == {"items": []}
    assert run({"sequence": {"name": {"$eq": "drive_a"}}, "ontology": {}}) == {"items": []}
    out = run({"sequence": {"locator": {"$eq": "drive_b"}, "created_at": {"$geq": 0}},
               "ontology": {"include_timestamp_range": True, "GPS.status.satellites": {"$eq": 4}}})
    assert out == {"items": [{"sequence": "drive_b", "topics": [
        {"locator": "drive_b/sensors/gps", "ontology_tag": "GPS", "timestamp_range": [6000, 6007]}]}]}
    assert run({"sequence": {"name": "$ex"}, "topic": {"ontology_tag": {"$nex": None}}}) == {"items": []}
    # ontology $ex = the column exists in the topic's data; list literal equality on a plain list
    assert shape_raw(run({"ontology": {"Robot.speed": {"$ex": None}}})) == R_AC
    assert shape_raw(run({"ontology": {"Robot.ranges": {"$eq": [5.0, 6, 7.0]}}})) == R_A
    assert shape_raw(run({"ontology": {"Robot.ranges": {"$neq": [5.0, 6, 7.0]}}})) == R_AC
    assert shape_raw(run({"ontology": {"Robot.ranges": {"$eq": []}}})) == R_A
    assert shape_raw(run({"ontology": {"Robot.stamp": {"$lt": "2024-01-01T12:00:00.000001"}}})) == R_A
    assert shape_raw(run({"ontology": {"Robot.stamp": {"$geq": str(int((T0 - dt.datetime(1970, 1, 1)).total_seconds() + 3600) * 10**6)}}})) == R_C
    assert shape_raw(run({"ontology": {"Robot.mode": {"$neq": "auto"}}, "topic": {"name": {"$in": ["robot"]}}})) == R_AC
    assert shape_raw(run({"ontology": {"Nope.x": {"$eq": 1}}})) == {}


def shape_raw(out: dict) -> dict:
    return {it["sequence"]: ["/" + t["locator"].split("/", 1)[1] for t in it["topics"]] for it in out["items"]}


BAD = [
    ({"sequence": {"nmae": {"$eq": "a"}}}, "query.sequence.nmae"),
    ({"sequence": {"name": {"$lt": "a"}}}, "operator $lt is not supported"),
    ({"sequence": {"name": {"$eq": 5}}}, "wrong operand type"),
    ({"sequence": {"created_at_ns": {"$eq": "5"}}}, "expected an integer"),
    ({"sequence": {"name": {"$like": "a"}}}, "unknown operator '$like'"),
    ({"sequence": {"name": {"$match": "a" * 257}}}, "limit is 256"),
    ({"sequence": {"name": {"$match": ""}}}, "pattern is empty"),
    ({"sequence": {"name": {"$match": "[z-a]"}}}, "invalid range z-a"),
    ({"sequence": {"name": {"$match": "[abc"}}}, "not closed"),
    ({"sequence": {"name": {"$eq": "a", "$neq": "b"}}}, "exactly one operator"),
    ({"sequence": {"user_metadata": {"a--b": {"$eq": 1}}}}, "invalid user-metadata key"),
    ({"sequence": {"user_metadata": {"a": {"$between": [5, 1]}}}}, "empty range"),
    ({"sequence": {"user_metadata": {"a": {"$between": [1]}}}}, "exactly 2"),
    ({"sequence": {"user_metadata": {"a": {"$in": []}}}}, "non-empty list"),
    ({"sequence": {"user_metadata": {"a": {"$in": [1, "x"]}}}}, "same type"),
    ({"sequence": {"user_metadata": {"a": {"$gt": True}}}}, "booleans have no order"),
    ({"topic": {"ontology_tag": {"$eq": None}}}, "query.topic.ontology_tag.$eq"),
    ({"ontology": {"IMU": {"$eq": 1}}}, "must be '<ontology_tag>.<field>"),
    ({"ontology": {"IMU.acceleration.w": {"$eq": 1}}}, "unknown field"),
    ({"ontology": {"IMU.acceleration": {"$eq": 1}}}, "is a struct"),
    ({"ontology": {"IMU.acceleration.x": {"$eq": "a"}}}, "wrong operand type"),
    ({"ontology": {"IMU.acceleration.x": {"$match": "a*"}}}, "operator $match is not supported"),
    ({"ontology": {"Robot.ranges": {"$gt": 1.0}}}, "is a list"),
    ({"ontology": {"Robot.speed[?]": {"$gt": 1.0}}}, "is not a list"),
    ({"ontology": {"Robot.poses[?].x[0]": {"$gt": 1.0}}}, "at most one list specifier"),
    ({"ontology": {"Robot.stamp": {"$gt": "yesterday"}}}, "not a valid ISO-8601"),
    ({"ontology": {"Robot.ok": {"$gt": 1}}}, "operator $gt is not supported"),
    ({"foo": {}}, "unknown section"),
]


@pytest.mark.parametrize("body,needle", BAD)
def test_bad_queries_name_the_offending_part(raw, body, needle):
    with pytest.raises(pa.ArrowInvalid) as ei:
        list(raw.do_action(flight.Action("query", json.dumps(body).encode())))
    assert needle in str(ei.value)


# -- clusterize / intersect -----------------------------------------------------------------------

def clusters(cs) -> list[tuple[int, int]]:
    return [(c.timerange.start, c.timerange.end) for c in cs]


def test_clusterize(qc):
    r = qc.query(QuerySequence().with_name("drive_a"), QueryOntologyCatalog(x.in_(1.0, 2.0, 5.0, 6.0, 7.0)))
    imu = next(t for t in r[0].topics if t.name == "/sensors/imu")
    assert clusters(imu.clusterize()) == [(1010, 1070)]
    assert clusters(imu.clusterize(clustering_dt_ns=10)) == [(1010, 1020), (1050, 1070)]
    assert clusters(imu.clusterize(clustering_dt_ns=9)) == [(t, t) for t in (1010, 1020, 1050, 1060, 1070)]
    from mosaicolabs.query.topic_cluster import TimestampRange
    assert clusters(imu.clusterize(clustering_dt_ns=10, timestamp_range=TimestampRange(1015, 1060))) == \
        [(1020, 1020), (1050, 1050)]
    robot = next(t for t in r[0].topics if t.name == "/robot") if len(r[0].topics) > 1 else None
    assert robot is None  # the Robot topic did not match the IMU filter
    # a topic without related expressions: refused (every row would match), as upstream does
    r2 = qc.query(QuerySequence().with_name("test_c"))
    rob = next(t for t in r2[0].topics if t.name == "/robot")
    with pytest.raises(pa.ArrowInvalid, match="At least 1 filtering condition is required, found 0"):
        rob.clusterize()


def test_intersect(qc):
    r = qc.query(QueryOntologyCatalog(x.leq(-2.0), GPS.Q.status.satellites.geq(8)))
    assert shape(r) == {"drive_b": ["/sensors/gps", "/sensors/imu"]}
    assert clusters(r[0].intersect()) == []  # imu [5002, 5009], gps [6004, 6007]
    assert clusters(r[0].intersect(intersect_dt_ns=2000)) == [(5004, 6009)]
    assert clusters(r[0].intersect(intersect_dt_ns=995)) == [(6004 - 497, 5009 + 498)]
    assert clusters(r[0].intersect(intersect_dt_ns=994)) == []
    gps, imu = r[0].topics
    assert clusters(imu.intersect(gps, intersect_dt_ns=2000, override_clustering_dt_ns=1)) == [(5004, 6009)]


def test_temporal_errors(raw):
    def act(name, body):
        return list(raw.do_action(flight.Action(name, json.dumps(body).encode())))

    with pytest.raises(pa.ArrowInvalid, match="wrong ontology tag GPS, topic uses IMU"):
        act("topic_filter_clusterize", {"locator": "drive_b/sensors/imu", "clustering_dt_ns": 0,
                                        "ontology": {"GPS.status.satellites": {"$eq": 1}}})
    with pytest.raises(pa.ArrowInvalid, match="start_ns 5 must be < end_ns 5"):
        act("topic_filter_clusterize", {"locator": "drive_b/sensors/imu", "clustering_dt_ns": 0,
                                        "ontology": {}, "timestamp_range": {"start_ns": 5, "end_ns": 5}})
    with pytest.raises(pa.ArrowKeyError):
        act("topic_filter_clusterize", {"locator": "drive_b/none", "clustering_dt_ns": 0,
                                        "ontology": {"IMU.acceleration.x": {"$gt": 0}}})
    with pytest.raises(pa.ArrowInvalid, match="At least 1 filtering condition is required, found 0"):
        act("topic_filter_clusterize", {"locator": "drive_b/sensors/imu", "clustering_dt_ns": 0, "ontology": {}})
    with pytest.raises(pa.ArrowInvalid, match=r"topics\[1\].ontology: At least 1 filtering condition"):
        act("topic_filter_intersect", {"topics": [
            {"locator": "drive_b/sensors/imu", "ontology": {"IMU.acceleration.x": {"$gt": 0}}},
            {"locator": "drive_b/sensors/gps"}], "intersect_dt_ns": 0})
    with pytest.raises(pa.ArrowInvalid, match="at least 2 topics"):
        act("topic_filter_intersect", {"topics": [{"locator": "drive_b/sensors/imu"}], "intersect_dt_ns": 0})
    with pytest.raises(pa.ArrowInvalid, match="same sequence"):
        act("topic_filter_intersect", {"topics": [{"locator": "drive_b/sensors/imu"},
                                                  {"locator": "drive_a/sensors/imu"}], "intersect_dt_ns": 0})
