"""Where things are: the project's root, and the module of the test pipelines."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_PIPELINES = "tests.support.pipelines"
