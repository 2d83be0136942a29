"""What the benchmark scripts share for their output: the JSON file a ``--json``/``--out`` flag
asks for, and the printed report beside it.

Only the library's public API is used here (``jaxpurify.io.write_atomic``), so the benchmarks
need no private module of ``jaxpurify.experiments`` for their output.
"""

from __future__ import annotations

import json
from typing import Any

from jaxpurify.io import write_atomic


def write_json(path: str, obj: Any) -> None:
    """``obj`` as JSON (indent 1, a final newline) to ``path``, atomically (the suite's results)."""
    write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def dump_json(path: str, obj: Any) -> None:
    """``obj`` as JSON (indent 1, no final newline) to ``path`` by a plain write: the row files of
    the campaign and of the memory and seal-cap measurements, which have always been written so."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def report(text: str, result: Any, path: str | None) -> None:
    """Print ``text`` (the result's table), then write ``result`` to ``path`` as :func:`write_json`
    when the command line asked for a file."""
    print(text)
    if path:
        write_json(path, result)
