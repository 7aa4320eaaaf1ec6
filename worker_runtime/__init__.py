"""buck2-worker-runtime: Buck2's persistent worker protocol in front, warm Bazel-protocol backends behind."""

from __future__ import annotations

__version__ = "0.1.0"
