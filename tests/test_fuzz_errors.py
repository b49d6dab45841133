"""Seeded fuzz run through a real server and a raw pyarrow.flight client: malformed inputs of every
family (tests/fuzz_cases.py) never produce an internal error, never leak a traceback, path, SQL
or exception class name, leave the server alive and the baseline sequence unchanged.  The long
run is bench/fuzz_errors.py."""

from __future__ import annotations

import os

from . import fuzz_cases as fz

SEED = int(os.environ.get("MOSAICOD_FUZZ_SEED", "20261201"))
COUNT = int(os.environ.get("MOSAICOD_FUZZ_COUNT", "400"))


def test_malformed_inputs_of_every_family(raw_client):
    c = raw_client
    fz.seed_baseline(c)
    before = fz.snapshot(c)
    ctx = fz.context(c)
    tally = fz.Tally()
    for case in fz.generate(SEED, COUNT, ctx):
        tally.record(case, fz.send(c, case))
    assert set(tally.by_family) == set(fz.FAMILIES)  # every family was exercised
    assert not tally.violations, "\n".join(map(str, tally.violations[:20]))
    assert fz.act(c, "info", {})["version"]  # alive
    assert fz.snapshot(c) == before
