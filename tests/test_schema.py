"""One vocabulary: what the harness writes is what the leaderboards read, as plain text."""

from __future__ import annotations

import json
import pickle

from harness.schema import (
    DONE,
    END_STATUSES,
    RUN_STATUSES,
    TABLE_METRICS,
    TABLE_TAGS,
    WORK_STATUSES,
    Kind,
    Metric,
    Status,
    Tag,
)
from leaderboards import load


def test_names_are_their_plain_strings():
    assert Status.FINISHED == "finished" and f"{Status.KILLED}" == "killed"
    assert json.dumps({Tag.STATUS: Status.DIVERGED, Tag.KIND: Kind.CELL}) == (
        '{"kdbench.status": "diverged", "kdbench.kind": "cell"}'
    )
    assert pickle.loads(pickle.dumps(Metric.FID)) == "fid"
    assert all(tag.value.startswith("kdbench.") for tag in Tag)
    assert Tag.FID_FEATURES.column == "fid_features" and type(Tag.GRID_ID.column) is str


def test_status_groups():
    assert DONE == ("finished", "diverged")
    assert set(END_STATUSES) == set(RUN_STATUSES) - {"running"}
    assert set(WORK_STATUSES) == set(Status) - {"running"}  # a job never reports running


def test_leaderboard_reads_the_written_names():
    assert load.TAGS == tuple(tag.column for tag in TABLE_TAGS)
    assert "status" in load.TAGS and "cell_id" in load.TAGS and "kind" in load.TAGS
    assert load.METRICS == tuple(m.value for m in TABLE_METRICS)
    assert all(type(name) is str for name in load.TAGS + load.METRICS)  # plain column names
