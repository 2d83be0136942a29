"""The ``>>>`` examples in the docstrings of the public modules run and print what they show."""

import doctest
import importlib

import pytest

# the public modules (the research harness included); an example added to any of them runs here
MODULES = [
    "jaxpurify",
    "jaxpurify._options",
    "jaxpurify._solution",
    "jaxpurify.attacks",
    "jaxpurify.checkpoint",
    "jaxpurify.contamination",
    "jaxpurify.convert",
    "jaxpurify.data",
    "jaxpurify.defenses",
    "jaxpurify.io",
    "jaxpurify.models",
    "jaxpurify.progress",
    "jaxpurify.train",
    "jaxpurify.tree",
]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=FLAGS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see the output)"


def test_the_examples_are_found():
    # map_with_path, io.load and RecoverOptions.replace carry examples: a finder that silently
    # found none (a changed docstring format) would make the test above pass on nothing
    found = {
        name: sum(len(t.examples) for t in doctest.DocTestFinder().find(importlib.import_module(name)))
        for name in ("jaxpurify.tree", "jaxpurify.io", "jaxpurify._options")
    }
    assert all(n >= 3 for n in found.values()), found
