"""`import tensorizer` (and `tensorizer.<anything>`) answered by
tensorizer_rs: a meta-path finder, so the alias costs nothing until
`tensorizer` is imported, and every submodule is one object under both
names.

Installed by `tensorizer_rs.install_as_tensorizer()`, or at interpreter
start by the wheel's `tensorizer_rs.pth` when the environment has
TENSORIZER_RS=1. This module imports nothing heavy: the .pth runs it in
every Python process of the environment.
"""

import importlib
import importlib.abc
import importlib.util
import importlib.machinery
import sys

ALIAS = "tensorizer"
TARGET = "tensorizer_rs"


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target):
        self.target = target
        self.spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        # The module ran under its own name already; keep its own spec.
        module.__spec__ = self.spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real = TARGET + fullname[len(ALIAS):]
        if importlib.util.find_spec(real) is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real),
                                              is_package=fullname == ALIAS)


def install():
    """Puts the alias first on sys.meta_path (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())


