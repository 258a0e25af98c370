"""Importing orientlearn changes no environment variable and writes no file.

Each check runs a fresh interpreter with a bare environment (HOME and the working folder in
a scratch folder, no SCIPION_* variable, so ``~/ScipionUserData`` would land there too),
snapshots ``os.environ`` and every file under the scratch folder, imports, and compares.

* ``orientlearn`` and every module of ``orientlearn.core``: nothing changes, and neither
  pyworkflow nor pwem is imported; the core imports even where they cannot be imported
  (an import hook refuses them), i.e. on a machine where Scipion was never installed.
* The Scipion side (``orientlearn.Plugin``, protocols, viewers, wizards): no environment
  variable changes; the only files are matplotlib's config/cache folders, which importing
  pwem alone creates in the same bare HOME (Scipion's own import, not ours).
"""
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
import unittest

import orientlearn.core

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORE_MODULES = sorted("orientlearn.core." + m.name
                      for m in pkgutil.iter_modules(orientlearn.core.__path__))

PROBE = r"""
import importlib, json, os, sys

def tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, dirs, files in os.walk(root) for f in files + dirs)

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not importable here (test)")
        return None

root = sys.argv[1]
modules, attrs, BLOCKED = (json.loads(a) for a in sys.argv[2:5])
sys.meta_path.insert(0, Refuse())
env0, files0 = dict(os.environ), tree(root)
for m in modules:
    mod = importlib.import_module(m)
for m, a in attrs:
    getattr(importlib.import_module(m), a)
env1, files1 = dict(os.environ), tree(root)
print(json.dumps({
    "env_changed": sorted(k for k in set(env0) | set(env1) if env0.get(k) != env1.get(k)),
    "new_files": sorted(set(files1) - set(files0)),
    "scipion_imported": sorted(m for m in ("pyworkflow", "pwem") if m in sys.modules),
}))
"""


def probe(modules, attrs=(), blocked=()):
    """Import ``modules`` (then read ``attrs``, pairs (module, attribute)) in a bare
    interpreter; returns the probe's report (changed variables, new files, Scipion
    modules imported)."""
    with tempfile.TemporaryDirectory() as scratch:
        home, cwd = os.path.join(scratch, "home"), os.path.join(scratch, "cwd")
        os.makedirs(home)
        os.makedirs(cwd)
        env = {"HOME": home, "PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, "LANG": "C.UTF-8"}
        out = subprocess.run([sys.executable, "-c", PROBE, scratch, json.dumps(modules),
                              json.dumps(list(attrs)), json.dumps(list(blocked))],
                             env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
        if out.returncode:
            raise AssertionError(f"import failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


class TestImportSideEffects(unittest.TestCase):
    def test_package_import_changes_nothing(self):
        report = probe(["orientlearn", "orientlearn.constants", "orientlearn.scipion_env"])
        self.assertEqual(report["env_changed"], [])
        self.assertEqual(report["new_files"], [])
        self.assertEqual(report["scipion_imported"], [])

    def test_core_imports_without_scipion(self):
        self.assertGreater(len(CORE_MODULES), 3)
        report = probe(CORE_MODULES, blocked=["pyworkflow", "pwem"])
        self.assertEqual(report["env_changed"], [])
        self.assertEqual(report["new_files"], [])

    def test_scipion_side_changes_no_variable(self):
        modules = ["orientlearn.protocols", "orientlearn.viewers", "orientlearn.wizards",
                   "orientlearn.convert", "orientlearn.objects"]
        report = probe(modules, attrs=[("orientlearn", "Plugin")])
        self.assertEqual(report["env_changed"], [])
        # Whatever files appear, importing pwem alone makes them too (matplotlib's).
        scipion_alone = probe(["pwem", "pwem.objects", "pwem.protocols"])
        self.assertEqual(set(report["new_files"]) - set(scipion_alone["new_files"]), set())

    def test_path_unchanged(self):
        """The issue's check: ``import orientlearn`` leaves PATH alone."""
        env = {"HOME": tempfile.gettempdir(), "PATH": "/usr/bin:/bin", "PYTHONPATH": REPO}
        out = subprocess.run([sys.executable, "-c",
                              "import orientlearn, os; print(os.environ.get('PATH'))"],
                             env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(out.stdout.strip(), "/usr/bin:/bin", out.stderr[-2000:])
