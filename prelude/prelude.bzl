# What the prelude cell exports. The worker-enabled rules (worker_tool, worker_run, the
# execution platforms, Java and Haskell) are added here as they land; see the README.
