"""``python -m worker_runtime``: the same as the ``worker-runtime`` command."""

import sys

from worker_runtime.entry import main

sys.exit(main())
