"""The layering (which package may import which), checked with import-linter's contracts in pyproject.toml."""

import os
import shutil
import subprocess
import sys

from conftest import REPO


def test_import_contracts_kept():
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
    assert exe, "import-linter is not installed in this environment (pip install -e '.[dev]')"
    r = subprocess.run([exe, "--config", os.path.join(REPO, "pyproject.toml")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "broken" not in r.stdout.lower() or "0 broken" in r.stdout.lower()
