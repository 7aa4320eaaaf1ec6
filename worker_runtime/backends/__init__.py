"""Backend processes that speak Bazel's worker protocol: one process, pools of them, their keys."""
