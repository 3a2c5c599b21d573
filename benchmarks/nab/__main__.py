"""``python -m benchmarks.nab [--detector NAME] [--data DIR] [--jobs 2] [--json]``."""

from benchmarks.nab.run import main

raise SystemExit(main())
