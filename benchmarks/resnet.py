"""End-to-end purify of a ResNet-18-sized tree; see ``jaxpurify.bench.resnet``.

    python -m benchmarks.resnet --size 1 [--max-entries N] [--json out.json]
"""

from jaxpurify.bench.resnet import main

if __name__ == "__main__":
    main()
