"""Remote persistent workers: the Remote Execution API client that forwards requests, and
the convention both it and the executor follow."""
