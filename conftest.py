"""Test session set-up: a headless Scipion in scratch folders, before pyworkflow is imported.

``import orientlearn`` changes nothing in the environment; the headless set-up (hosts.conf,
SCIPION_DOMAIN, PATH for the protocol subprocesses) is this explicit call, see
``orientlearn/scipion_env.py``.
"""
import os
import tempfile

from orientlearn.scipion_env import setup_scipion_environment

_scratch = os.environ.get("ORIENTLEARN_TEST_DIR") or tempfile.mkdtemp(prefix="orientlearn-tests-")
os.environ["SCIPION_USER_DATA"] = os.path.join(_scratch, "ScipionUserData")
os.environ["SCIPION_HOME"] = os.path.join(_scratch, "scipion-home")
setup_scipion_environment()
