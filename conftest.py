"""Test session set-up: scratch Scipion folders, set before pyworkflow is imported.

``import orientlearn`` fills in the rest (hosts.conf, SCIPION_DOMAIN, PATH for the
protocol subprocesses); see ``orientlearn/scipion_env.py``.
"""
import os
import tempfile

_scratch = os.environ.get("ORIENTLEARN_TEST_DIR") or tempfile.mkdtemp(prefix="orientlearn-tests-")
os.environ["SCIPION_USER_DATA"] = os.path.join(_scratch, "ScipionUserData")
os.environ["SCIPION_HOME"] = os.path.join(_scratch, "scipion-home")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
