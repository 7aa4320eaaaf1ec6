"""Providers of the worker prelude."""

WorkerToolInfo = provider(
    doc = "A worker tool: what worker_run needs to send actions to a warm worker.",
    fields = {
        # The config file written for `worker-runtime serve --config` (an Artifact).
        "config": provider_field(typing.Any),
        # The command that runs the backend once, without a worker (a RunInfo).
        "fallback": provider_field(typing.Any),
        # The WorkerInfo whose exe starts `worker-runtime serve` (one process per WorkerInfo).
        "worker": provider_field(typing.Any),
    },
)
