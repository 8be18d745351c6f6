"""`import tensorizer` (and `tensorizer.<anything>`) answered by
tensorizer_rs, and `import runai_model_streamer` by
tensorizer_rs.runai_model_streamer: a meta-path finder, so the alias costs
nothing until the name is imported, and every submodule is one object
under both names.

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

# Each name another package is imported by, and what answers it.
ALIASES = {
    "tensorizer": "tensorizer_rs",
    "runai_model_streamer": "tensorizer_rs.runai_model_streamer",
}


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
        for alias, target_name in ALIASES.items():
            if fullname == alias or fullname.startswith(alias + "."):
                real = target_name + fullname[len(alias):]
                if importlib.util.find_spec(real) is None:
                    return None
                spec = importlib.util.find_spec(real)
                return importlib.machinery.ModuleSpec(
                    fullname, _AliasLoader(real),
                    is_package=spec.submodule_search_locations is not None)
        return None


def install():
    """Puts the alias first on sys.meta_path (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())


