"""Runs at interpreter start (the wheel's tensorizer_rs.pth imports it).

With TENSORIZER_RS=1 (or true, yes, on) in the environment, `import
tensorizer` anywhere in the process loads tensorizer_rs instead: vLLM's
`--load-format tensorizer`, a user's script, without code changes.
Without it, this does nothing. Either way it imports nothing heavy: the
alias module is loaded by path, without importing the tensorizer_rs
package (which imports torch) until `tensorizer` itself is imported.
"""

import os

if os.environ.get("TENSORIZER_RS", "").strip().lower() in ("1", "true", "yes", "on"):
    import importlib.util
    import sys

    _spec = importlib.util.find_spec("tensorizer_rs")
    if _spec is not None and _spec.submodule_search_locations:
        _path = os.path.join(list(_spec.submodule_search_locations)[0], "_alias.py")
        _alias_spec = importlib.util.spec_from_file_location("tensorizer_rs._alias", _path)
        _alias = importlib.util.module_from_spec(_alias_spec)
        sys.modules["tensorizer_rs._alias"] = _alias
        _alias_spec.loader.exec_module(_alias)
        _alias.install()
