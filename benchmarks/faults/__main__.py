import sys

from benchmarks.faults.run import main

sys.exit(main())
