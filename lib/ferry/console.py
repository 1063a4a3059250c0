"""The ``ferry`` console script's entry: everything, imports included, under one Ctrl-C rule.

A Ctrl-C at any moment (even while Python is still importing Invoke) ends
the command quietly with status 130, as a shell expects of an interrupted
program; inside a task the task decides first (``run`` detaches from its job).
A closed stdout (``ferry --list | head -1``) ends it quietly with 141.
"""

from __future__ import annotations

import gc
import os
import sys


def _defer_yaml() -> None:
    """Invoke imports its vendored PyYAML at start-up (~14 ms of every command) but uses it only to read a
    YAML config file. Registered first with its body deferred, it runs on first use: never, for a command
    with no such file. Left alone if Invoke moved it.

    Not ``importlib.util.LazyLoader``: on Python 3.11 the import system's own look at ``__spec__`` (during
    ``from .vendor import yaml``) already counts as a use. A module ``__getattr__`` (PEP 562) is asked only
    for a name the module does not have yet, such as ``safe_load``.
    """
    import importlib.util

    name = "invoke.vendor.yaml"
    if "invoke" in sys.modules or name in sys.modules:
        return
    invoke = importlib.util.find_spec("invoke")  # finds the package without running it
    if invoke is None or not invoke.submodule_search_locations:
        return
    package = os.path.join(invoke.submodule_search_locations[0], "vendor", "yaml")
    spec = importlib.util.spec_from_file_location(name, os.path.join(package, "__init__.py"),
                                                  submodule_search_locations=[package])
    if spec is None or spec.loader is None or not os.path.isfile(spec.origin or ""):
        return
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def first_use(attribute: str):
        del module.__dict__["__getattr__"]
        loader.exec_module(module)  # the package's own code, in this very module (its relative imports work)
        try:
            return module.__dict__[attribute]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}") from None

    module.__getattr__ = first_use  # type: ignore[method-assign]
    sys.modules[name] = module


def _mock(*args, **kwargs):
    """``Mock`` as Invoke's ``MockContext`` calls it: the real one, imported on first call."""
    from unittest.mock import Mock

    return Mock(*args, **kwargs)


def _defer_mock():
    """``invoke.context`` does ``from unittest.mock import Mock`` for ``MockContext`` (a testing aid), which
    imports unittest, asyncio and ssl into every command (~20 ms) though none makes a MockContext. While
    Invoke imports, ``unittest.mock`` in ``sys.modules`` is a stand-in whose ``Mock`` imports the real one
    when called; it is taken out right after (:func:`_restore_mock`), so any later ``import unittest.mock``
    (a user's tasks, a test) gets the real module. Returns the stand-in, or None if there was nothing to defer.
    """
    if "invoke" in sys.modules or "unittest.mock" in sys.modules:
        return None
    import types

    stand_in = types.ModuleType("unittest.mock", "ferry's stand-in while Invoke imports (see ferry.console)")
    stand_in.Mock = _mock  # type: ignore[attr-defined]
    sys.modules["unittest.mock"] = stand_in
    return stand_in


def _restore_mock(stand_in) -> None:
    if stand_in is not None and sys.modules.get("unittest.mock") is stand_in:
        del sys.modules["unittest.mock"]


def main() -> None:
    # The cyclic garbage collector has nothing to find among start-up's objects (modules, classes, Invoke's
    # parser: they live as long as the process), but walks them all, again and again while they are made and
    # once more at exit: off until they are made, then frozen out of its way. ~15 ms off every command.
    gc.disable()
    try:
        _defer_yaml()
        stand_in = _defer_mock()
        try:
            __import__("invoke")  # with the stand-in in place
        finally:
            _restore_mock(stand_in)
        from .program import program

        gc.freeze()
        gc.enable()
        program.run()
        sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(130)
    except BrokenPipeError:  # whoever read our stdout went away (`| head`): stop quietly, as a pipeline would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
