"""``python -m benchmarks.pipeline [options]``: the same as ``recwatch bench pipeline``."""

from benchmarks.pipeline.run import main

raise SystemExit(main())
