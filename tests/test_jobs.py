"""Running a job generator to its end: its result, its progress, its clean-up."""

from __future__ import annotations

import pytest

from src_models.jobs import run_to_end


def _job(cleaned: list[str]):
    try:
        yield 1, 2
        yield 2, 2
        return "result"
    finally:
        cleaned.append("released")


def test_returns_the_result_and_reports_progress():
    seen, cleaned = [], []
    assert run_to_end(_job(cleaned), seen.append) == "result"
    assert seen == [(1, 2), (2, 2)] and cleaned == ["released"]


def test_a_failing_progress_callback_still_cleans_up():
    cleaned = []

    def fail(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_to_end(_job(cleaned), fail)
    assert cleaned == ["released"]
