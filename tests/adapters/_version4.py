"""The rows a version-4 run store holds, shared by the SQLite and PostgreSQL upgrade tests, and the
categories the upgrade to version 5 must give them."""

from __future__ import annotations

RUNS = [
    ("done", "completed"),
    ("stopped", "cancelled"),
    ("timed-out", "failed"),
    ("refused", "failed"),
    ("sink-broke", "failed"),
]
"""``(run_id, status)`` of each stored run."""

STAGES = [
    ("done", "ok", None),
    ("done", "skip", None),
    ("stopped", "cancel", None),
    ("timed-out", "ok", None),
    ("timed-out", "fail", "StageTimeoutError"),
    ("timed-out", "fail", "StageFailedError"),
    ("refused", "fail", "StageFailedError"),
    ("refused", "fail", "RetriesExhaustedError"),
    ("refused", "fail", "ValueError"),
    ("refused", "fail", "TimeoutError"),
]
"""``(run_id, status, error_type)`` of each stored stage, in position order."""

RUN_CATEGORIES = {
    "done": ("success", ()),
    "stopped": ("cancellation", ()),
    "timed-out": ("timeout", ()),
    "refused": ("failure", ()),
    "sink-broke": ("error", ()),
}
"""``run_id -> (category, not_started)`` after the upgrade."""

STAGE_CATEGORIES = [
    "success",
    "skip",
    "cancellation",
    "success",
    "timeout",
    "failure",
    "failure",
    "failure",
    "error",
    "error",
]
"""Each stage's category after the upgrade, in the order of ``RUNS`` then position."""
