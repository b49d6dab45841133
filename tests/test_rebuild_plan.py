"""The rebuild plan's per-sequence lookups (maintenance/plan.py)."""

from __future__ import annotations

from mosaicod.maintenance.plan import Plan, SessionPlan, TopicPlan


def _topic(loc: str, seq: str) -> TopicPlan:
    return TopicPlan(locator=loc, uuid=loc, sequence=seq, session=f"{seq}:s", user_metadata=None,
                     path_in_store=loc, serialization_format="default", ontology_tag="IMU", created=0,
                     completed=None, optimization_end=None, schema_bytes=None)


def test_plan_lookups_keep_plan_order():
    plan = Plan()
    for loc, seq in (("b/2", "b"), ("a/9", "a"), ("b/1", "b"), ("a/1", "a"), ("b/3", "b")):
        plan.add_topic(_topic(loc, seq))
    for loc, seq in (("b:z", "b"), ("a:y", "a"), ("b:a", "b")):
        plan.add_session(SessionPlan(loc, loc, seq, 0, None))
    assert [t.locator for t in plan.topics_of("b")] == ["b/2", "b/1", "b/3"]
    assert [t.locator for t in plan.topics_of("a")] == ["a/9", "a/1"]
    assert [s.locator for s in plan.sessions_of("b")] == ["b:z", "b:a"]
    assert plan.topics_of("c") == [] and plan.sessions_of("c") == []
    plan.topics_of("a").clear()  # callers get their own list
    assert len(plan.topics_of("a")) == 2
    plan.add_topic(_topic("a/0", "a"))  # rows added after a lookup are seen
    assert [t.locator for t in plan.topics_of("a")] == ["a/9", "a/1", "a/0"]
    plan.add_topic(_topic("a/9", "b"))  # a replaced row moves, though no count changed
    assert [t.locator for t in plan.topics_of("a")] == ["a/1", "a/0"]
    assert [t.locator for t in plan.topics_of("b")] == ["b/2", "b/1", "b/3", "a/9"]
    assert plan.topics["a/9"].sequence == "b"
