"""Run a module of pytest-style tests from ``scipion3 tests`` (unittest's loader).

Scipion's test runner loads ``orientlearn.tests.<module>`` with unittest, which sees only
``TestCase`` classes. A module written as pytest functions gets one line after its
imports::

    load_tests = pytest_load_tests(__name__)   # scipion3 tests orientlearn.tests.<module>

and unittest then runs the whole module under pytest, in a child process (fixtures,
parametrisation and markers as under pytest), failing with pytest's report. Under pytest
itself nothing changes: pytest ignores ``load_tests``.
"""
import importlib.util
import os
import subprocess
import sys
import unittest


def pytest_load_tests(module_name):
    """A unittest ``load_tests`` hook that runs module ``module_name`` under pytest."""
    def load_tests(loader, standard_tests, pattern):
        suite = unittest.TestSuite()
        suite.addTest(_pytest_case(module_name)("test_module_under_pytest"))
        return suite
    return load_tests


def _pytest_case(module_name):
    module_file = sys.modules[module_name].__file__
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(module_file)))

    class PytestModule(unittest.TestCase):
        def test_module_under_pytest(self):
            if importlib.util.find_spec("pytest") is None:
                self.skipTest("pytest is missing: pip install 'scipion-em-orientlearn[test]'")
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                [package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
            out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                  module_file], cwd=package_root, env=env,
                                 capture_output=True, text=True)
            print(out.stdout[-5000:])
            # pytest exit 5: no test collected (all deselected) is not a failure.
            self.assertIn(out.returncode, (0, 5), out.stdout[-8000:] + out.stderr[-2000:])

    PytestModule.__name__ = PytestModule.__qualname__ = "PytestModule"
    PytestModule.__module__ = module_name
    return PytestModule
