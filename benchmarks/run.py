"""The benchmark suite (same as ``jaxpurify bench``); see ``jaxpurify.bench.suite``.

    python -m benchmarks.run [--quick] [--out DIR]
"""

import sys

from jaxpurify.bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
