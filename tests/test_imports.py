"""The runtime must import without the calibration stack (docs/design.md, "Layout")."""

import json
import subprocess
import sys

HEAVY = ["sklearn", "optuna", "duckdb", "sqlalchemy", "matplotlib", "duckdb_engine", "pandas"]


def test_runtime_imports_none_of_the_calibration_stack():
    code = (
        "import sys, json; import sencache, policies; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_every_package_declares_all():
    import calibration
    import policies
    import sencache
    import store

    for module in (sencache, policies, store, calibration):
        assert isinstance(module.__all__, list)
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name}"
