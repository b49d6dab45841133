"""Shared query-test dataset: sequences written through the 0.7.0 SDK whose answers are known.

Used by tests/test_query_sdk.py and tests/test_query_property.py (module-scoped server).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import List, Optional

import pyarrow as pa
from mosaicolabs import GPS, IMU, Message, MosaicoField, MosaicoType, Point3d, Serializable, Vector3d
from mosaicolabs.models.sensors.gps import GPSStatus


class Robot(Serializable):
    """Custom ontology: nullable float (NaN too), string, bool, list of floats, list of structs,
    a timestamp column."""

    speed: Optional[MosaicoType.float64] = MosaicoField(default=None, description="m/s")
    mode: Optional[MosaicoType.string] = MosaicoField(default=None, description="drive mode")
    ok: MosaicoType.bool = MosaicoField(description="health")
    ranges: List[MosaicoType.float32] = MosaicoField(description="lidar ranges")
    poses: List[Vector3d] = MosaicoField(description="waypoints")
    stamp: MosaicoType.annotate(dt.datetime, pa.timestamp("us")) = MosaicoField(description="wall clock")


T0 = dt.datetime(2024, 1, 1, 12, 0, 0)


def imu_msg(ts: int, x: float) -> Message:
    return Message(timestamp_ns=ts, data=IMU(acceleration=Vector3d(x=x, y=0.5, z=9.81),
                                             angular_velocity=Vector3d(x=0.0, y=0.0, z=0.0)))


def gps_msg(ts: int, sats: int) -> Message:
    return Message(timestamp_ns=ts, data=GPS(position=Point3d(x=45.0, y=7.6, z=230.0),
                                             status=GPSStatus(status=1, service=1, satellites=sats)))


def robot_msg(ts: int, speed, mode, ok, ranges, poses, minute: int) -> Message:
    return Message(timestamp_ns=ts, data=Robot(speed=speed, mode=mode, ok=ok, ranges=ranges,
                                               poses=[Vector3d(x=a, y=b, z=0.0) for a, b in poses],
                                               stamp=T0 + dt.timedelta(minutes=minute)))


# sequence -> (metadata, {topic: (model, [messages])})
def dataset() -> dict:
    imu_a = [imu_msg(1000 + 10 * i, float(i)) for i in range(20)]  # x = 0..19, ts 1000..1190
    imu_b = [imu_msg(5000 + i, -float(i)) for i in range(10)]  # x = 0..-9
    gps_b = [gps_msg(6000 + i, 4 + i) for i in range(8)]  # satellites 4..11
    robot_a = [
        robot_msg(100, 1.5, "auto", True, [1.0, 2.0], [(0.0, 0.0), (1.0, 1.0)], 0),
        robot_msg(200, None, "manual", False, [], [], 5),
        robot_msg(300, 7.0, None, True, [5.0, 6.0, 7.0], [(5.0, 2.0)], 10),
    ]
    robot_c = [
        robot_msg(10, math.nan, "auto-x", True, [3.0], [(9.0, 9.0), (9.5, 9.0)], 60),
        robot_msg(20, 2.0, "Auto", False, [0.5, 9.0], [(-1.0, 3.0)], 61),
    ]
    return {
        "drive_a": ({"env": {"visibility": 30, "weather": "rain"}, "project": "Apollo",
                     "tags": ["fleet-3", "night"], "my key": "v 1",
                     "runs": [{"id": 1, "ok": True}, {"id": 2, "ok": False}], "level": 3},
                    {"/sensors/imu": (IMU, imu_a), "/robot": (Robot, robot_a)}),
        "drive_b": ({"env": {"visibility": 80, "weather": "sun"}, "project": "Gemini",
                     "tags": ["fleet-1"], "count": 5, "level": 7.5,
                     "runs": [{"id": 3, "ok": True}]},
                    {"/sensors/imu": (IMU, imu_b), "/sensors/gps": (GPS, gps_b)}),
        "test_c": ({"project": "Apollo", "count": "5", "sub-key": {"deep": {"x": 1}}},
                   {"/robot": (Robot, robot_c), "/idle": (IMU, [])}),
        "lonely": ({"project": "Apollo"}, {}),
    }


def write_dataset(client) -> dict:
    data = dataset()
    for seq, (md, topics) in data.items():
        if not topics:  # a sequence without topics: the server refuses to finalize it, it stays
            try:
                with client.sequence_create(seq, md):
                    pass
            except Exception:
                pass
            continue
        with client.sequence_create(seq, md) as w:
            writers = {t: w.topic_create(t, {"name": t.strip("/"), "kind": model.__name__}, model)
                       for t, (model, _) in topics.items()}
            for t, (_, msgs) in topics.items():
                for m in msgs:
                    writers[t].push(m)
    return data
