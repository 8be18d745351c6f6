"""pytest plugin for running tensorizer 2.12.1's own tests (copied next to
them as conftest.py by `cargo xtask python-test`; the test files stay as
PyPI ships them).

TENSORIZER_UPSTREAM_SIDE picks what `import tensorizer` loads:
  reference      the real library (installed in the same venv);
  tensorizer_rs  this project's package, through install_as_tensorizer().
Each test's outcome goes to the JSON file TENSORIZER_UPSTREAM_RESULTS.
"""

import json
import os

SIDE = os.environ["TENSORIZER_UPSTREAM_SIDE"]
if SIDE == "tensorizer_rs":
    import tensorizer_rs

    tensorizer_rs.install_as_tensorizer()
import tensorizer  # noqa: E402

_where = os.path.dirname(tensorizer.__file__)
if SIDE == "tensorizer_rs":
    assert "tensorizer_rs" in _where, f"tensorizer resolved to {_where}, not tensorizer_rs"
else:
    assert "tensorizer_rs" not in _where, f"tensorizer resolved to {_where}"

_results = {}


def pytest_runtest_logreport(report):
    nodeid = report.nodeid
    if report.when == "call" or report.outcome != "passed":
        previous = _results.get(nodeid)
        if previous in ("failed", "error"):
            return
        outcome = report.outcome
        if report.when != "call" and outcome == "failed":
            outcome = "error"
        _results[nodeid] = outcome
        if outcome != "passed" and report.longrepr is not None:
            _results.setdefault("__why__", {})[nodeid] = str(report.longrepr)[-2000:]


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("TENSORIZER_UPSTREAM_RESULTS")
    if out:
        with open(out, "w") as f:
            json.dump(_results, f, indent=1, sort_keys=True)
