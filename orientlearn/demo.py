"""The main job: a whole orientlearn workflow on the bundled 5j0n map, headless.

    orientlearn-demo                     # laptop-sized defaults (~10 min on 2 CPU cores)
    orientlearn-demo --paper             # the paper's setting (5,000 particles, 116 px)
    python -m orientlearn.demo --help

Creates a Scipion project from the template "orientlearn ab initio on simulated data"
(in the Scipion data folder, or ``--location``), runs it with progress on the terminal,
then prints a table (orientation errors both ways, FSC resolutions, time per step) and
the paths of the figures and the map. The project opens in the Scipion GUI like any other.
"""
import argparse
import os
import sys
import threading
import time

TEMPLATE = "orientlearn_ab_initio_simulated.json.template"
# The template's protocols, in order (their labels in the project).
STEPS = ["import density map", "simulate training particles", "simulate test particles",
         "train distance", "recover orientations", "compare with ground truth",
         "reconstruct (aligned to truth)", "reconstruct (as recovered)"]

LAPTOP = dict(ntrain=3000, ntest=1000, size=64, testsize=64, epochs=40, steps=0,
              features=64, rsteps=1500)
PAPER = dict(ntrain=3350, ntest=1650, size=116, testsize=116, epochs=60, steps=0,
             features=512, rsteps=3000)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="orientlearn-demo", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--paper", action="store_true",
                    help="the paper's full setting (slow on a CPU; use a GPU)")
    ap.add_argument("--name", default=None, help="project name (default: timestamped)")
    ap.add_argument("--location", default=None,
                    help="folder for the project (default: SCIPION_USER_DATA/projects)")
    ap.add_argument("--map", default=None, help="density map (.mrc); default: bundled 5j0n")
    ap.add_argument("--pixel", type=float, default=None, help="pixel size of --map (A)")
    for key, help_ in [("ntrain", "training particles"), ("ntest", "test particles"),
                       ("size", "image size (px)"), ("epochs", "training epochs"),
                       ("steps", "training steps per epoch (0: one pass)"),
                       ("features", "feature dimension"), ("rsteps", "recovery steps")]:
        ap.add_argument(f"--{key}", type=int, default=None, help=help_)
    ap.add_argument("--sigma2", type=float, default=0.0,
                    help="noise variance of the particles (paper: 0 and 16)")
    ap.add_argument("--figures", default=None,
                    help="folder for the PNG figures (default: <project>/figures)")
    ap.add_argument("--quiet", action="store_true", help="do not echo protocol logs")
    return ap.parse_args(argv)


def _tail(path, stop, echo):
    """Echo new lines of a log file until ``stop`` is set."""
    pos = 0
    while not stop.is_set():
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                f.seek(pos)
                for line in f:
                    if echo and any(k in line for k in ("ETA", "Epoch", "FSC", "L_OR", "rad",
                                                        "Simulating", "ERROR", "Error")):
                        print("    " + line.rstrip()[-150:], flush=True)
                pos = f.tell()
        stop.wait(1.0)


def run_workflow(args):
    import orientlearn

    from .scipion_env import setup_scipion_environment
    setup_scipion_environment()   # headless Scipion, before pyworkflow reads its config
    from pyworkflow.project import Manager
    from pyworkflow.template import LocalTemplate

    values = dict(PAPER if args.paper else LAPTOP)
    for key in values:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    values["testsize"] = values["size"]
    template = LocalTemplate("orientlearn", os.path.join(
        os.path.dirname(orientlearn.__file__), "templates", TEMPLATE))
    template.replaceEnvVariables()
    template.parseContent()
    params = dict(values, sigma2=args.sigma2, trainsigma2=args.sigma2,
                  map=os.path.abspath(args.map or orientlearn.Plugin.getDemoMap()),
                  pixel=args.pixel or 3.667)
    for alias, value in params.items():
        template.setParamValue(alias, str(value))
    json_path = template.createTemplateFile()

    name = args.name or time.strftime("orientlearn-demo-%Y%m%d-%H%M%S")
    manager = Manager()
    os.makedirs(manager.PROJECTS, exist_ok=True)   # a --location project is linked here
    location = None
    if args.location:
        location = os.path.abspath(args.location)
        os.makedirs(location, exist_ok=True)
    if args.figures:
        args.figures = os.path.abspath(args.figures)   # the run changes directory
    project = manager.createProject(name, location=location)
    project.loadProtocols(json_path)
    os.remove(json_path)
    os.chdir(project.getPath())   # pyworkflow resolves the project's files from here
    print(f"Project {name} in {project.getPath()}", flush=True)
    runs = sorted(project.getRuns(), key=lambda r: r.getObjId())
    if len(runs) != len(STEPS):
        raise RuntimeError(f"The template gave {len(runs)} protocols, expected {len(STEPS)}.")
    for prot, label in zip(runs, STEPS):
        prot.setObjLabel(label)
        project.saveProtocol(prot)
    timings = []
    for prot in runs:
        label = prot.getObjLabel()
        print(f"==> {label}", flush=True)
        stop = threading.Event()
        t0 = time.time()
        tail = threading.Thread(target=_tail, args=(prot.getLogPaths()[0], stop, not args.quiet),
                                daemon=True)
        tail.start()
        project.launchProtocol(prot, wait=True)
        stop.set()
        tail.join()
        prot = project.getProtocol(prot.getObjId())
        timings.append((label, time.time() - t0))
        if not prot.isFinished():
            print(f"FAILED: {label}. Last log lines:", flush=True)
            for line in open(prot.getLogPaths()[1] if os.path.exists(prot.getLogPaths()[1])
                             else prot.getLogPaths()[0]).readlines()[-30:]:
                print("   ", line.rstrip())
            raise SystemExit(1)
        print(f"    done in {timings[-1][1]:.0f} s", flush=True)
    runs = {r.getObjLabel(): project.getProtocol(r.getObjId()) for r in runs}
    return project, runs, timings, values


def report(project, runs, timings, values, figures_dir=None):
    """Print the result table and write the figures; returns (table text, figure paths)."""
    from .viewers.figures import save_protocol_figures
    cmp_ = runs["compare with ground truth"]
    res = cmp_.getResults()
    rec_truth = runs["reconstruct (aligned to truth)"].getResolutions()
    rec_free = runs["reconstruct (as recovered)"].getResolutions()
    lines = [f"orientlearn demo: 5j0n, {values['ntrain']} training / {values['ntest']} test "
             f"particles at {values['size']} px",
             "",
             f"{'orientation error (test particles)':<42}{'median':>10}{'mean':>10}",
             *(f"{label:<42}{res[key + '_median']:>10.3f}{res[key + '_mean']:>10.3f}"
               for label, key in (("  aligned by O(4) (paper E_OR), rad", "o4"),
                                  ("  aligned by rotation+handedness, rad", "rot"),
                                  ("  (unrelated orientations), rad", "random"))),
             "",
             f"{'resolution':<42}{'FSC0.5':>10}{'FSC0.143':>10}"]
    if "fsc_ref" in rec_truth:
        r = rec_truth["fsc_ref"]
        lines.append(f"{'  vs true map (aligned orientations), A':<42}{r[0]:>10.1f}{r[1]:>10.1f}")
    for label, res_ in (("  half maps, aligned to truth, A", rec_truth),
                        ("  half maps, as recovered (no truth), A", rec_free)):
        if "fsc_half" in res_:
            r = res_["fsc_half"]
            lines.append(f"{label:<42}{r[0]:>10.1f}{r[1]:>10.1f}")
    lines += ["", f"{'step':<42}{'time (s)':>10}"]
    lines += [f"  {label:<40}{t:>10.0f}" for label, t in timings]
    lines.append(f"  {'total':<40}{sum(t for _, t in timings):>10.0f}")
    figures_dir = figures_dir or os.path.join(project.getPath(), "figures")
    paths = []
    for label, prot in runs.items():
        kind = ("_truth_" if "aligned to truth" in label
                else "_free_" if "as recovered" in label else "_")
        prefix = label.split(" (")[0].replace(" ", "_") + kind
        paths += save_protocol_figures(prot, figures_dir, prefix=prefix)
    vol = runs["reconstruct (as recovered)"].outputVolume.getFileName()
    lines += ["", f"figures: {figures_dir}"] + [f"  {os.path.basename(p)}" for p in paths]
    lines += [f"map (no ground truth used): {os.path.abspath(vol)}",
              f"project: {project.getPath()}  (open it with: scipion3 project "
              f"{os.path.basename(project.getPath())})"]
    text = "\n".join(lines)
    print(text, flush=True)
    with open(os.path.join(figures_dir, "results.txt"), "w") as f:
        f.write(text + "\n")
    return text, paths


def main(argv=None):
    args = parse_args(argv)
    project, runs, timings, values = run_workflow(args)
    report(project, runs, timings, values, args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
