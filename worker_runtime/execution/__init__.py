"""Where a work request runs: one interface (``Executor.run(request) -> Outcome``), the
local and remote executors, and the policies (timeout, retry, fallback, auto, race) as
wrappers around it. The Buck2 adapter only translates to and from it."""
