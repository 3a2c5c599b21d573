"""``python -m benchmarks.serving [options]``: the same as ``recwatch bench serving``."""

from benchmarks.serving.run import main

raise SystemExit(main())
