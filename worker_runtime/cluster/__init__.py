"""The embedded engine for development and tests: PostgreSQL and BuildGrid (a Remote
Execution API server), brought up, inspected and stopped by `worker-runtime cluster`."""
