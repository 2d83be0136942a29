"""The package as installed and imported: lazy public names, a fast command line, benchmarks that
write only where they are told."""

import argparse
import importlib
import os
import pkgutil
import subprocess
import sys
import tomllib

import pytest

import benchmarks
import jaxpurify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "numpy", "safetensors")


def _python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["reproduce", "--help"]])
def test_the_command_line_answers_without_importing_jax(argv):
    out = _python(
        "import sys\nfrom jaxpurify import cli\n"
        f"try:\n    cli.main({argv!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    assert out.strip().splitlines()[-1] == "[]"


# constants carry no __module__: where each is defined
CONSTANTS = {"ON_UNCERTIFIED": "jaxpurify._uncertified"}


def test_every_public_name_is_the_defining_modules_object():
    # the reference is each name's own __module__, not the package's table of lazy names
    out = _python(
        "import importlib, jaxpurify as jp\nfrom jaxpurify import *\n"
        "for name in jp.__all__:\n"
        "    obj = getattr(jp, name)\n"
        f"    module = getattr(obj, '__module__', None) or {CONSTANTS!r}[name]\n"
        "    assert globals()[name] is obj, name\n"
        "    assert getattr(importlib.import_module(module), name) is obj, name\n"
        "    print(name, module)"
    )
    modules = dict(line.split() for line in out.strip().splitlines())
    assert set(modules) == set(jaxpurify.__all__)
    assert all(m.startswith("jaxpurify.") for m in modules.values())
    assert modules["purify"] == "jaxpurify._purify" and modules["EncodedModule"] == "jaxpurify._nnx"
    with pytest.raises(AttributeError, match="no_such_name"):
        jaxpurify.no_such_name  # noqa: B018


def test_public_submodules_are_reachable_from_a_bare_import():
    out = _python(
        "import jaxpurify as jp\n"
        "print(jp.tree.map_with_path.__module__, jp.io.save.__module__, jp.checkpoint.write.__module__)"
    )
    assert out.split() == ["jaxpurify.tree", "jaxpurify.io", "jaxpurify.checkpoint"]


def test_the_declared_version_is_the_packages():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["version"] == jaxpurify.__version__


def _parsers():
    """(module name, its argparse parser) for every benchmarks module with a main(argv)."""

    class Caught(Exception):
        pass

    def catch(self, args=None, namespace=None):
        raise Caught(self)

    for info in pkgutil.iter_modules(benchmarks.__path__):
        module = importlib.import_module(f"benchmarks.{info.name}")
        if not callable(getattr(module, "main", None)):
            continue
        original = argparse.ArgumentParser.parse_args
        argparse.ArgumentParser.parse_args = catch
        try:
            module.main([])
        except Caught as c:
            yield info.name, c.args[0]
        finally:
            argparse.ArgumentParser.parse_args = original


def test_no_benchmark_writes_into_the_checkout_unless_told():
    seen = []
    for name, parser in _parsers():
        seen.append(name)
        for action in parser._actions:
            d = action.default
            if isinstance(d, str) and (os.sep in d or d.endswith((".json", ".md"))):
                inside = os.path.abspath(os.path.join(ROOT, d)).startswith(ROOT + os.sep)
                assert not inside, f"benchmarks.{name} {action.option_strings}: default {d!r} is in the checkout"
    # the modules that write results all take part (a renamed main would otherwise pass unseen)
    assert {"campaign", "disk", "report", "suite", "train", "core", "solver"} <= set(seen)
