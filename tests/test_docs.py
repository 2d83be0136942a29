"""Every Python snippet of the docs site (docs/**/*.md) runs as written, each in a fresh
interpreter and an empty folder; the snippets carry their own checks (asserts against the clean
weights, the known outlier rows). A ``<!-- docs-test: slow (why) -->`` or ``<!-- docs-test: skip
(why) -->`` line right above a block marks it; every other block runs in the default suite."""

import os
import re

import pytest
from test_readme import ROOT, run_code

DOCS = os.path.join(ROOT, "docs")
BLOCK = re.compile(r"(?:<!-- docs-test: (slow|skip) \((.*?)\) -->\n)?```python\n(.*?)```", re.S)


def _snippets():
    seen = set()  # a snippet repeated on two pages runs once, under the first page's name
    for folder, _, files in sorted(os.walk(DOCS)):
        if os.path.relpath(folder, DOCS).startswith("results"):
            continue
        for name in sorted(files):
            if not name.endswith(".md"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for i, m in enumerate(BLOCK.finditer(text)):
                mark, why, code = m.groups()
                if code in seen:
                    continue
                seen.add(code)
                marks = {"slow": [pytest.mark.slow], "skip": [pytest.mark.skip(reason=why)]}.get(mark, [])
                yield pytest.param(code, id=f"{os.path.relpath(path, DOCS)}:{i}", marks=marks)


SNIPPETS = list(_snippets())


def test_the_pages_have_snippets():
    # the collection itself could silently find nothing (a moved folder, a changed fence)
    ids = {p.id.split(":")[0] for p in SNIPPETS}
    assert {"getting-started.md", "research/gradients.md", "guides/jit-multidevice.md", "guides/train.md"} <= ids


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code, tmp_path):
    out = run_code(code, tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
