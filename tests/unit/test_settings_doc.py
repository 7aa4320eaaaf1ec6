"""docs/settings.md is generated from the settings' definitions and must be current."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from worker_runtime.config import RemoteConfig, RuntimeConfig
from workers_dev.settings_doc import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_settings_page_is_current() -> None:
    assert PAGE.read_text() == render(), (
        "docs/settings.md is stale: run `.venv/bin/python -m workers_dev.settings_doc > "
        "docs/settings.md`"
    )


def test_every_setting_is_documented() -> None:
    for item in (*fields(RuntimeConfig), *fields(RemoteConfig)):
        assert item.metadata.get("doc"), f"{item.name} has no doc"
        assert f"| `{item.name}` |" in render()


def test_the_table_shows_the_range_each_check_allows() -> None:
    """A value out of range is refused at the start: the page says the range first."""
    page = render()
    assert "| `retries` | integer (from 0 to 100) |" in page
    assert "| `max_instances` | integer (>= 1) |" in page
    assert "| `memory_budget_mb` | integer or null (>= 1) |" in page
    assert "| `reclaim_interval_s` | seconds (finite, >= 0.1) |" in page
    assert "| `frame_stall_timeout_s` | seconds (finite, >= 0.1) |" in page
    assert "| `shutdown_grace_s` | seconds (finite, > 0) |" in page
