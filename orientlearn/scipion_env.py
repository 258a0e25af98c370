"""Headless Scipion environment for scripts, the demo and the tests.

Scipion reads its configuration from environment variables when ``pyworkflow`` is first
imported, and runs protocols in a subprocess that calls ``python``. Call
``setup_scipion_environment`` before importing ``pyworkflow`` so that a plain pip install
(no Scipion launcher) can create projects and run protocols.
"""
import os
import sys

HOSTS_CONF = ("[localhost]\n"
              "PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d --map-by node %_(COMMAND)s\n")


def setup_scipion_environment(user_data=None, scipion_home=None, override=False):
    """Set the variables pyworkflow needs; returns the SCIPION_USER_DATA folder.

    Values already in the environment are kept unless ``override``. ``scipion_home``
    defaults to a folder under ``user_data`` holding only ``config/hosts.conf``.
    """
    def put(name, value):
        if override or not os.environ.get(name):
            os.environ[name] = value
        return os.environ[name]

    user_data = put("SCIPION_USER_DATA", os.path.abspath(os.path.expanduser(
        user_data or os.path.join("~", "ScipionUserData"))))
    home = put("SCIPION_HOME", os.path.abspath(
        scipion_home or os.path.join(user_data, "orientlearn-scipion-home")))
    hosts = os.path.join(home, "config", "hosts.conf")
    if not os.path.exists(hosts):
        os.makedirs(os.path.dirname(hosts), exist_ok=True)
        with open(hosts, "w") as f:
            f.write(HOSTS_CONF)
    put("SCIPION_DOMAIN", "pwem")
    # Default of the workflow templates' map (templates expand %(VAR)s from the environment).
    os.environ.setdefault("ORIENTLEARN_DEMO_MAP", os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "data", "5j0n.mrc"))
    put("SCIPION_TESTS", os.path.join(home, "data", "tests"))
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Protocols run in a subprocess started as `python`: make it this interpreter.
    bindir = os.path.dirname(sys.executable)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    return user_data
