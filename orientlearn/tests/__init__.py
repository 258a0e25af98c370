"""orientlearn's tests: pytest (``python -m pytest -q``) and Scipion's runner
(``scipion3 tests orientlearn.tests.<module>``).

Scipion's runner loads a module with unittest, which sees only ``TestCase`` classes. A
module of pytest functions is run whole under pytest by one unittest case
(``unittest_bridge``): through its own ``load_tests`` line, or, for a module without one,
through the fallback below, which applies only to modules of this package that unittest
finds no test in (pytest never uses unittest's loader, so it is unaffected).
"""
import unittest

from .unittest_bridge import pytest_load_tests

_load_tests_from_module = unittest.TestLoader.loadTestsFromModule


def _load_tests_from_module_or_pytest(self, module, *args, **kwargs):
    suite = _load_tests_from_module(self, module, *args, **kwargs)
    if (module.__name__.startswith(__name__ + ".") and suite.countTestCases() == 0
            and any(name.startswith("test_") and callable(value)
                    for name, value in vars(module).items())):
        return pytest_load_tests(module.__name__)(self, suite, kwargs.get("pattern"))
    return suite


unittest.TestLoader.loadTestsFromModule = _load_tests_from_module_or_pytest
