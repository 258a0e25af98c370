"""The plugin as Scipion loads it: discovery, menus from protocols.conf, base classes,
pointer conditions, parallel sections, declared outputs, installation checks.

Runs under pytest and as ``scipion3 tests orientlearn.tests.test_scipion_plugin``.
"""
import ast
import glob
import json
import os
import subprocess
import sys
import time
import unittest

import pwem.protocols as emprot
from pwem import Domain
from pyworkflow.tests import BaseTest

import orientlearn
from orientlearn import protocols as olprot

# Where each protocol must be in the "Protocols SPA" view (one path per place), and the
# semantic base class other plugins' filters and wizards look for.
MENU_PLACES = {
    "OrientLearnProtRecover": [("3D", "Initial volume")],
    "OrientLearnProtAspire": [("3D", "Initial volume")],
    "OrientLearnProtTrain": [("3D", "Initial volume", "more")],
    "OrientLearnProtSimulate": [("3D", "Initial volume", "more")],
    "OrientLearnProtImportModel": [("Imports", "more"), ("3D", "Initial volume", "more")],
    "OrientLearnProtReconstruct": [("3D", "Reconstruct")],
    "OrientLearnProtCompare": [("3D", "Analysis", "Validation")],
    "OrientLearnProtRefine": [("3D", "Refine")],
    "OrientLearnProtAbInitio": [("3D", "Initial volume")],
}
BASE_CLASSES = {
    "OrientLearnProtRecover": emprot.ProtInitialVolume,
    "OrientLearnProtAspire": emprot.ProtInitialVolume,
    "OrientLearnProtTrain": emprot.Prot3D,
    "OrientLearnProtSimulate": emprot.ProtParticles,
    "OrientLearnProtImportModel": emprot.ProtImport,
    "OrientLearnProtReconstruct": emprot.ProtReconstruct3D,
    "OrientLearnProtCompare": emprot.ProtAnalysis3D,
    "OrientLearnProtRefine": emprot.ProtRefine3D,
    "OrientLearnProtAbInitio": emprot.ProtInitialVolume,
}
# Inputs that must carry 3-D orientations (the GUI offers only such sets).
NEEDS_ORIENTATIONS = {
    "OrientLearnProtTrain": ["inputParticles"],
    "OrientLearnProtReconstruct": ["inputParticles"],
    "OrientLearnProtCompare": ["inputParticles", "referenceParticles"],
}
# Protocols whose heavy steps get a 'Threads' field (parallel section).
WITH_THREADS = {"OrientLearnProtSimulate", "OrientLearnProtTrain", "OrientLearnProtRecover",
                "OrientLearnProtReconstruct", "OrientLearnProtAspire", "OrientLearnProtRefine",
                "OrientLearnProtAbInitio"}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def our_protocols():
    """Final protocol classes of the plugin, as Scipion's Domain discovers them."""
    return {name: cls for name, cls in Domain.getProtocols().items()
            if cls.__module__.startswith("orientlearn.") and cls._label}


def menu_places(view):
    """``{class name: [path of section texts]}`` of every protocol in a menu view."""
    places = {}

    def walk(node, path):
        for child in node.childs:
            if child.tag.startswith("protocol") and child.tag != "protocol_group" \
                    and child.value:
                places.setdefault(child.value, []).append(tuple(path))
            else:
                walk(child, path + [str(child.text)])
    walk(view, [])
    return places


class TestScipionPlugin(BaseTest):
    @classmethod
    def setUpClass(cls):
        from pyworkflow import Config
        from pyworkflow.gui.project.viewprotocols_extra import ProtocolTreeConfig
        cls.plugin_module = Domain.getPluginModule("orientlearn")
        # What the project window does: the base protocols.conf, then every plugin's.
        cls.views = ProtocolTreeConfig.load(Domain, Config.SCIPION_PROTOCOLS)

    def test_discovered_as_plugin(self):
        self.assertIs(self.plugin_module, orientlearn)
        self.assertTrue(issubclass(orientlearn.Plugin, __import__("pwem").Plugin))
        self.assertEqual(orientlearn._pluginInstance.getName(), "orientlearn")
        self.assertEqual(orientlearn._pluginInstance.getPath(),
                         os.path.dirname(orientlearn.__file__))
        self.assertGreaterEqual(len(our_protocols()), 7)

    def test_every_protocol_in_its_menu_place(self):
        places = menu_places(self.views["Protocols SPA"])
        for name in our_protocols():
            self.assertIn(name, MENU_PLACES, f"{name}: give it a place in protocols.conf "
                                              "and in MENU_PLACES")
            self.assertEqual(sorted(places.get(name, [])), sorted(MENU_PLACES[name]),
                             f"{name} is not where protocols.conf should put it")
        # The tree view of the plugin (All -> orientlearn) lists them all too.
        all_places = menu_places(self.views["All"])
        for name in our_protocols():
            self.assertIn(("orientlearn",), all_places.get(name, []))

    def test_semantic_base_classes(self):
        for name, cls in our_protocols().items():
            self.assertTrue(issubclass(cls, BASE_CLASSES[name]),
                            f"{name} should derive from {BASE_CLASSES[name].__name__}")
            self.assertTrue(issubclass(cls, olprot.OrientLearnProtBase))

    def test_pointer_conditions(self):
        for name, params in NEEDS_ORIENTATIONS.items():
            form = our_protocols()[name]().getDefinition()
            for param in params:
                self.assertEqual(form.getParam(param).pointerCondition.get(),
                                 "hasAlignmentProj", f"{name}.{param}")
        recover = olprot.OrientLearnProtRecover().getDefinition()
        self.assertFalse(recover.getParam("inputParticles").pointerCondition.get())

    def test_parallel_sections(self):
        for name, cls in our_protocols().items():
            prot = cls()
            self.assertEqual(prot.allowThreads, name in WITH_THREADS, name)
            if name in WITH_THREADS:
                self.assertEqual(prot.getDefinition().getParam("numberOfMpi"), None)

    def test_gpu_list_and_use_gpu_set_cuda_visible_devices(self):
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            prot = olprot.OrientLearnProtRecover(gpuList="1 2")
            from orientlearn.core import resources
            resources.limit_gpus([7])
            prot._threadCount = lambda: None   # GPUs only here (threads: test_protocols)
            prot._configureDevices()
            self.assertEqual(os.environ["CUDA_VISIBLE_DEVICES"], "1,2")
            prot.setAttributeValue("useGpu", False)
            prot._configureDevices()
            self.assertEqual(os.environ["CUDA_VISIBLE_DEVICES"], "")
        finally:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved

    def test_orientlearn_gpu_variable_is_the_default_gpu_list(self):
        saved = orientlearn.Plugin.getVar("ORIENTLEARN_GPU")
        try:
            orientlearn.Plugin._vars["ORIENTLEARN_GPU"] = "3,4"
            self.assertEqual(olprot.OrientLearnProtTrain().gpuList.get(), "3,4")
            orientlearn.Plugin._vars["ORIENTLEARN_GPU"] = ""
            self.assertEqual(olprot.OrientLearnProtTrain().gpuList.get(), "0")
        finally:
            orientlearn.Plugin._vars["ORIENTLEARN_GPU"] = saved

    def test_possible_outputs_complete(self):
        """Every name given to _defineOutputs in a protocol's source is declared."""
        declared = {name: set(cls._possibleOutputs or {})
                    for name, cls in our_protocols().items()}
        for path in glob.glob(os.path.join(os.path.dirname(olprot.__file__), "protocol_*.py")):
            with open(path) as f:
                tree = ast.parse(f.read())
            for cls_node in [n for n in tree.body if isinstance(n, ast.ClassDef)]:
                if cls_node.name not in declared:
                    continue
                for call in ast.walk(cls_node):
                    if isinstance(call, ast.Call) and getattr(call.func, "attr", "") \
                            == "_defineOutputs":
                        for kw in call.keywords:
                            self.assertIn(kw.arg, declared[cls_node.name],
                                          f"{cls_node.name}._possibleOutputs lacks {kw.arg}")
        for name, outputs in declared.items():
            self.assertTrue(outputs, f"{name} declares no output")

    def test_binaries_define_the_plugin_environment(self):
        recorded = []

        class Env:
            def addPackage(self, name, **kwargs):
                recorded.append((name, kwargs))
        orientlearn.Plugin.defineBinaries(Env())
        self.assertEqual(len(recorded), 1)
        name, kwargs = recorded[0]
        self.assertEqual(name, "orientlearn")
        command, targets = kwargs["commands"][0]
        self.assertIn("tensorflow[and-cuda]>=2.18,<2.19", command)
        self.assertIn("--no-deps", command)
        self.assertIn("env/bin/python", targets)
        self.assertTrue(orientlearn.Plugin.getProgram().endswith("env/bin/orientlearn"))


RUN_IN_ENVIRONMENT = r"""
import json, os, sys
from pwem import Domain
plugin = Domain.getPluginModule("orientlearn").Plugin
from orientlearn.protocols import OrientLearnProtReconstruct
home = sys.argv[1]
prot = OrientLearnProtReconstruct(numberOfThreads=2, gpuList="1")
calls = []
prot.runJob = lambda program, args, **kw: calls.append(
    {"program": program, "args": args, "pythonpath": "PYTHONPATH" in kw["env"],
     "threads": kw["env"].get("OMP_NUM_THREADS"), "tf": kw["env"].get("TF_NUM_INTRAOP_THREADS"),
     "gpus": kw["env"].get("CUDA_VISIBLE_DEVICES")})
plugin._vars["ORIENTLEARN_HOME"] = "/nonexistent/orientlearn-home"
without = prot._runOrientlearn("reconstruct", ["a.star"])
plugin._vars["ORIENTLEARN_HOME"] = home
with_env = prot._runOrientlearn("reconstruct", ["in put.star", "-o", "out.mrc"])
print(json.dumps({"without": without, "with": with_env, "calls": calls,
                  "program": plugin.getProgram()}))
"""


class TestPluginEnvironment(unittest.TestCase):
    def test_run_orientlearn_through_runjob_when_installed(self):
        """With the plugin's environment present, a step's command line goes to runJob
        with that environment's program, the run's threads and GPUs, and no PYTHONPATH;
        without it nothing runs (the step computes in Scipion's Python)."""
        import tempfile
        with tempfile.TemporaryDirectory() as home:
            program = os.path.join(home, "env", "bin", "orientlearn")
            os.makedirs(os.path.dirname(program))
            with open(program, "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(program, 0o755)
            env = dict(os.environ, PYTHONPATH=REPO)
            out = subprocess.run([sys.executable, "-c", RUN_IN_ENVIRONMENT, home], env=env,
                                 capture_output=True, text=True, timeout=120)
            self.assertEqual(out.returncode, 0, out.stderr[-3000:])
            report = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertFalse(report["without"])
        self.assertTrue(report["with"])
        self.assertEqual(len(report["calls"]), 1)
        call = report["calls"][0]
        self.assertEqual(call["program"], program)
        self.assertEqual(call["args"], "reconstruct 'in put.star' -o out.mrc")
        self.assertFalse(call["pythonpath"])
        self.assertEqual((call["threads"], call["tf"], call["gpus"]), ("2", "2", "1"))


class TestScipionTestDiscovery(unittest.TestCase):
    """``scipion3 tests orientlearn.tests.<module>`` loads modules with unittest."""
    def test_every_test_module_has_tests_for_unittest(self):
        loader = unittest.TestLoader()
        names = sorted(os.path.basename(p)[:-3] for p in glob.glob(
            os.path.join(os.path.dirname(__file__), "test_*.py")))
        self.assertGreater(len(names), 10)
        for name in names:
            suite = loader.loadTestsFromName(f"orientlearn.tests.{name}")
            self.assertGreater(suite.countTestCases(), 0,
                               f"scipion3 tests orientlearn.tests.{name} would run nothing: "
                               "add TestCase classes or the unittest_bridge line")

    def test_pytest_module_runs_through_unittest(self):
        """A pytest-function module run as Scipion runs it: one unittest case, which
        runs the module's tests under pytest and passes."""
        import io
        suite = unittest.TestLoader().loadTestsFromName("orientlearn.tests.test_scale")
        result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(suite)
        self.assertEqual(result.testsRun, 1)
        self.assertTrue(result.wasSuccessful(), result.failures + result.errors)


class TestValidateInstallation(unittest.TestCase):
    def test_fast_and_without_tensorflow(self):
        """Import the plugin as Scipion does, then validateInstallation: path checks only."""
        # CPU time of this process: what the import and the check cost, whatever else
        # the (shared) machine is doing.
        code = ("import sys, time, json\n"
                "t0 = time.process_time()\n"
                "from pwem import Domain\n"
                "m = Domain.getPluginModule('orientlearn')\n"
                "t1 = time.process_time()\n"
                "errors = m.Plugin.validateInstallation()\n"
                "t2 = time.process_time()\n"
                "print(json.dumps({'import': t1 - t0, 'validate': t2 - t1, 'errors': errors,"
                " 'tf': 'tensorflow' in sys.modules}))\n")
        env = dict(os.environ, PYTHONPATH=REPO)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr[-2000:])
        report = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertFalse(report["tf"], "validateInstallation imported TensorFlow")
        self.assertEqual(report["errors"], [])
        self.assertLess(report["validate"], 0.05)
        # Importing Scipion's pwem is nearly all of it (orientlearn's part: ~10 ms).
        self.assertLess(report["import"] + report["validate"], 1.0)

    def test_refuses_without_tensorflow_or_environment(self):
        code = ("import importlib.util, json\n"
                "real = importlib.util.find_spec\n"
                "importlib.util.find_spec = lambda n, *a: None if n == 'tensorflow' "
                "else real(n, *a)\n"
                "from pwem import Domain\n"
                "m = Domain.getPluginModule('orientlearn')\n"
                "print(json.dumps(m.Plugin.validateInstallation()))\n")
        env = dict(os.environ, PYTHONPATH=REPO, ORIENTLEARN_HOME="/nonexistent/orientlearn")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr[-2000:])
        errors = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual(len(errors), 1)
        self.assertIn("scipion3 installb orientlearn", errors[0])


if __name__ == "__main__":
    start = time.time()
    unittest.main()
