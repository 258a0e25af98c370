"""Install resolution checks (pip --dry-run --report; PyPI must be reachable).

1. The README's install (`pip install -e ".[test]"` in a fresh environment) resolves to
   numpy 1.26.1 and TensorFlow 2.18 (TensorFlow >= 2.19 breaks this stack).
2. Installing the plugin where the oldest Scipion it declares support for is installed
   (scipion-pyworkflow / scipion-em at setup.py's lower bounds) keeps those releases:
   the resolution with them pinned succeeds and contains them unchanged.

    python .ci/check_install.py        # from the repository root; exit 1 on failure
"""
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lower_bound(name):
    """The ``>=`` bound of ``name`` in setup.py's install_requires."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        match = re.search(rf'"{re.escape(name)}>=([0-9.]+)"', f.read())
    if not match:
        raise SystemExit(f"setup.py declares no lower bound for {name}")
    return match.group(1)


def resolve(*requirements):
    """``{name: version}`` that pip would install for ``requirements`` in an empty env."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--quiet", "--report", report, *requirements]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"FAILED to resolve {requirements}:\n{out.stderr[-3000:]}")
        with open(report) as f:
            items = json.load(f)["install"]
    return {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
            for i in items}


def check(label, versions, expected):
    bad = {name: (versions.get(name), want) for name, want in expected.items()
           if not re.fullmatch(want, versions.get(name) or "")}
    status = "ok" if not bad else f"FAILED {bad}"
    print(f"{label}: " + ", ".join(f"{n} {versions.get(n)}" for n in expected) + f" -> {status}")
    return not bad


def main():
    ok = check("README install (-e .[test])", resolve("-e", ".[test]"),
               {"numpy": r"1\.26\.1", "tensorflow-cpu": r"2\.18\..*"})
    pw, em = lower_bound("scipion-pyworkflow"), lower_bound("scipion-em")
    oldest = resolve("-e", ".", f"scipion-pyworkflow=={pw}", f"scipion-em=={em}")
    ok &= check(f"oldest Scipion declared (pyworkflow {pw}, em {em})", oldest,
                {"scipion-pyworkflow": re.escape(pw), "scipion-em": re.escape(em),
                 "numpy": r"1\.26\.1", "tensorflow-cpu": r"2\.18\..*"})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
