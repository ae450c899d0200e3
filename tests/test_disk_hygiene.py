"""The suite cleans up after itself as it goes (pyproject.toml and ``conftest.py``): a CI
machine's disk once filled up with the models and checkpoints that passed tests had left."""

import tomllib
from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).with_name("conftest.py")
PYPROJECT = CONFTEST.parent.parent / "pyproject.toml"
SHARED = '''
import pytest

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("{name}")
'''


def test_passed_tests_and_passed_modules_leave_no_folders_a_failed_test_keeps_its(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    ini = tomllib.loads(PYPROJECT.read_text())["tool"]["pytest"]["ini_options"]
    pytester.makeini(f"[pytest]\ntmp_path_retention_policy = {ini['tmp_path_retention_policy']}\n")
    pytester.makepyfile(
        test_a=SHARED.format(name="shared_a") + """
FOLDERS = []

def test_one(tmp_path, shared):
    (tmp_path / "model.bin").write_bytes(bytes(1024))
    (shared / "index.bin").write_bytes(bytes(1024))
    FOLDERS.append(tmp_path)

def test_two(tmp_path, shared):
    assert not FOLDERS[0].exists()  # the passed test's folder went when it ended
    assert (shared / "index.bin").is_file()  # the module's folder lives while it runs
""",
        test_b=SHARED.format(name="shared_b") + """
def test_fails(tmp_path, shared):
    (tmp_path / "kept.bin").write_bytes(bytes(1024))
    assert False
""")
    basetemp = pytester.path / "basetemp"
    result = pytester.runpytest_subprocess(f"--basetemp={basetemp}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    left = list(basetemp.iterdir())
    assert sorted(p.name for p in left if not p.is_symlink()) == ["shared_b0", "test_fails0"]
    assert all(p.exists() for p in left)  # no dangling ``<name>current`` links either
    assert (basetemp / "test_fails0" / "kept.bin").is_file()
