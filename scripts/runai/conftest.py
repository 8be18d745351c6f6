"""pytest plugin for running Run:ai Model Streamer 0.17.0's own tests
(copied next to them as conftest.py by `cargo xtask runai-test`; the test
files stay as the wheel ships them).

RUNAI_TEST_SIDE picks what `import runai_model_streamer` loads:
  reference      the real package (installed in the same venv);
  tensorizer_rs  this project's, through tensorizer_rs's import alias.
Each test's outcome goes to the JSON file RUNAI_TEST_RESULTS.
"""

import json
import os

SIDE = os.environ["RUNAI_TEST_SIDE"]

# Under dist_run.py: this process is one rank of a gloo group on loopback.
if os.environ.get("RUNAI_TEST_DIST_RANK") is not None:
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group(
        "gloo", rank=int(os.environ["RUNAI_TEST_DIST_RANK"]),
        world_size=int(os.environ["RUNAI_TEST_DIST_WORLD"]), timeout=timedelta(seconds=60))
if SIDE == "tensorizer_rs":
    import tensorizer_rs._alias

    tensorizer_rs._alias.install()
import runai_model_streamer  # noqa: E402

_where = os.path.dirname(runai_model_streamer.__file__)
if SIDE == "tensorizer_rs":
    assert "tensorizer_rs" in _where, f"runai_model_streamer resolved to {_where}"
else:
    assert "tensorizer_rs" not in _where, f"runai_model_streamer resolved to {_where}"

_results = {}


def pytest_runtest_logreport(report):
    nodeid = report.nodeid
    if report.when == "call" or report.outcome != "passed":
        if _results.get(nodeid) in ("failed", "error"):
            return
        outcome = report.outcome
        if report.when != "call" and outcome == "failed":
            outcome = "error"
        _results[nodeid] = outcome
        if outcome != "passed" and report.longrepr is not None:
            _results.setdefault("__why__", {})[nodeid] = str(report.longrepr)[-2000:]


def pytest_collectreport(report):
    # A test file that does not import (a name the package lacks) counts.
    if report.outcome == "failed":
        _results[report.nodeid] = "error"
        _results.setdefault("__why__", {})[report.nodeid] = str(report.longrepr)[-2000:]


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("RUNAI_TEST_RESULTS")
    if out:
        with open(out, "w") as f:
            json.dump(_results, f, indent=1, sort_keys=True)
