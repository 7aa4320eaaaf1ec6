"""Development-only code of this repository: what tests, benchmarks and the demo use
but Buck2 never launches (not part of the installed `worker_runtime` package)."""
