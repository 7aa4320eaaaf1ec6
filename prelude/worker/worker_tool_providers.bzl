"""WorkerToolInfo: what a worker_tool target hands the rules that send it actions."""

WorkerToolInfo = provider(
    doc = "A worker tool: what worker_run needs to send an action to a warm worker, or " +
          "to run it one-shot when workers are off.",
    fields = {
        # The JSON config that `worker-runtime serve --config` reads (the worker_tool's
        # default output). Never None.
        "config": provider_field(Artifact),
        # The command that runs the backend once, without a worker: what Buck2 runs with
        # workers off (WorkerRunInfo.exe). Never None.
        "fallback": provider_field(RunInfo),
        # The WorkerInfo whose exe starts `worker-runtime serve`; Buck2 starts one worker
        # process per WorkerInfo. Never None.
        "worker": provider_field(WorkerInfo),
    },
)
