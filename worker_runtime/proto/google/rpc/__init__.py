"""Generated modules for google.rpc: Status and its structured error details."""
