"""The benchmark suite; see ``benchmarks.suite``.

python -m benchmarks.run --out DIR [--quick]
"""

import sys

from benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main())
