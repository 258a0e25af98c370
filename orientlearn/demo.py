"""The main job: a whole orientlearn workflow on the bundled 5j0n map, headless.

    orientlearn-demo                     # ab initio with no map and no model (~15 min, 2 CPUs)
    orientlearn-demo --same-protein      # train on the map, then recover (~8 min)
    orientlearn-demo --paper             # the paper's setting (same protein, 116 px)
    python -m orientlearn.demo --help

The default workflow is what a scientist without a map does: particles of 5j0n are
simulated (CTF, offsets up to 4 px, noise at the paper's SNR 1/16) and the ab initio
protocol finds their orientations, offsets and a map from the particles alone (class
averages + common lines -> first map -> a distance model trained on it -> orientations
-> local refinement); the map is used only to simulate the particles and to score the
result. ``--same-protein`` runs the paper's benchmark instead: a model trained on
projections of the very map it then recovers.

Creates a Scipion project from the workflow's template (in the Scipion data folder, or
``--location``), runs it with progress on the terminal, then prints a table (orientation
and offset errors, FSC resolutions, time per step) and the paths of the figures and the
map. The project opens in the Scipion GUI like any other.
"""
import argparse
import dataclasses
import os
import sys
import threading
import time


@dataclasses.dataclass(frozen=True)
class Workflow:
    """A demo workflow: its template, the labels of its protocols (in order) and the
    defaults of the template's values (``--paper``: ``paper``)."""
    template: str
    steps: tuple
    laptop: dict
    paper: dict = None


NO_MAP = Workflow(
    "orientlearn_ab_initio_no_map_simulated.json.template",
    ("import density map", "simulate particles", "ab initio (no map, no model)",
     "compare with ground truth", "reconstruct (ab initio, aligned to truth)",
     "reconstruct (true orientations)"),
    # sigma^2 5.5 on these 64 px images (the 76 px map box, 4.35 A/px) is the paper's
    # sigma^2 = 16 on its 116 px images at 3.667 A/px: the same noise on the same signal,
    # cropped to the map's box and Fourier-downsampled (README, "The main job").
    laptop=dict(ntest=1000, size=64, epochs=60, modelsize=48, classes=200, rsteps=1500,
                maxshift=4.0, sigma2=5.5))
SAME_PROTEIN = Workflow(
    "orientlearn_ab_initio_simulated.json.template",
    ("import density map", "simulate training particles", "simulate test particles",
     "train distance", "recover orientations", "compare with ground truth",
     "reconstruct (aligned to truth)", "reconstruct (as recovered)"),
    laptop=dict(ntrain=3000, ntest=1000, size=64, testsize=64, epochs=40, steps=0,
                features=64, rsteps=1500, sigma2=0.0),
    paper=dict(ntrain=3350, ntest=1650, size=116, testsize=116, epochs=60, steps=0,
               features=512, rsteps=3000, sigma2=0.0))
# The default workflow's names, kept for scripts that import them.
TEMPLATE, STEPS = NO_MAP.template, list(NO_MAP.steps)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="orientlearn-demo", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--same-protein", action="store_true",
                    help="the paper's workflow: train a distance model on projections of "
                         "the map, then recover the orientations of other projections")
    ap.add_argument("--paper", action="store_true",
                    help="the paper's full setting (implies --same-protein; slow on a CPU)")
    ap.add_argument("--name", default=None, help="project name (default: timestamped)")
    ap.add_argument("--location", default=None,
                    help="folder for the project (default: SCIPION_USER_DATA/projects)")
    ap.add_argument("--map", default=None, help="density map (.mrc); default: bundled 5j0n")
    ap.add_argument("--pixel", type=float, default=None, help="pixel size of --map (A)")
    ap.add_argument("--diameter", type=float, default=240.0,
                    help="particle diameter (A) the ab initio protocol is given (5j0n: 240)")
    for key, help_ in [("ntrain", "training particles (--same-protein)"),
                       ("ntest", "particles (--same-protein: test particles)"),
                       ("size", "image size (px)"),
                       ("epochs", "training epochs (default workflow: of the model trained "
                                  "on the first map)"),
                       ("steps", "training steps per epoch (0: one pass; --same-protein)"),
                       ("features", "feature dimension (--same-protein)"),
                       ("modelsize", "box (px) of the model trained on the first map"),
                       ("classes", "class averages oriented by common lines"),
                       ("rsteps", "recovery steps")]:
        ap.add_argument(f"--{key}", type=int, default=None, help=help_)
    ap.add_argument("--maxshift", type=float, default=None,
                    help="largest particle offset (px; default workflow: 4)")
    ap.add_argument("--sigma2", type=float, default=None,
                    help="noise variance of the particles, relative to unit-variance "
                         "clean images of --size px (default workflow: 5.5, the paper's "
                         "sigma^2 16 at its 116 px; --same-protein: 0)")
    ap.add_argument("--figures", default=None,
                    help="folder for the PNG figures (default: <project>/figures)")
    ap.add_argument("--quiet", action="store_true", help="do not echo protocol logs")
    args = ap.parse_args(argv)
    args.same_protein = args.same_protein or args.paper
    return args


def workflow_of(args):
    return SAME_PROTEIN if args.same_protein else NO_MAP


def _tail(path, stop, echo):
    """Echo new lines of a log file until ``stop`` is set."""
    pos = 0
    while not stop.is_set():
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                f.seek(pos)
                for line in f:
                    if echo and any(k in line for k in ("ETA", "Epoch", "FSC", "L_OR", "rad",
                                                        "Simulating", "ERROR", "Error",
                                                        "Stage", "common lines")):
                        print("    " + line.rstrip()[-150:], flush=True)
                pos = f.tell()
        stop.wait(1.0)


def run_workflow(args):
    import orientlearn

    from .scipion_env import setup_scipion_environment
    setup_scipion_environment()   # headless Scipion, before pyworkflow reads its config
    from pyworkflow.project import Manager
    from pyworkflow.template import LocalTemplate

    flow = workflow_of(args)
    values = dict(flow.paper if args.paper else flow.laptop)
    for key in values:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    params = dict(values, map=os.path.abspath(args.map or orientlearn.Plugin.getDemoMap()),
                  pixel=args.pixel or 3.667)
    if flow is SAME_PROTEIN:
        values["testsize"] = params["testsize"] = values["size"]
        params["trainsigma2"] = values["sigma2"]
    else:
        params.update(diameter=args.diameter, maxshift_search=values["maxshift"] + 1)
    template = LocalTemplate("orientlearn", os.path.join(
        os.path.dirname(orientlearn.__file__), "templates", flow.template))
    template.replaceEnvVariables()
    template.parseContent()
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
    if len(runs) != len(flow.steps):
        raise RuntimeError(f"The template gave {len(runs)} protocols, expected "
                           f"{len(flow.steps)}.")
    for prot, label in zip(runs, flow.steps):
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
    same_protein = "train distance" in runs
    lines = (_same_protein_table(runs, values) if same_protein
             else _no_map_table(runs, values))
    lines += ["", f"{'step':<44}{'time (s)':>8}"]
    lines += [f"  {label:<42}{t:>8.0f}" for label, t in timings]
    lines.append(f"  {'total':<42}{sum(t for _, t in timings):>8.0f}")
    figures_dir = figures_dir or os.path.join(project.getPath(), "figures")
    paths = []
    for label, prot in runs.items():
        kind = ("_truth_" if "aligned to truth" in label
                else "_free_" if "as recovered" in label
                else "_true_" if "true orientations" in label else "_")
        prefix = label.split(" (")[0].replace(" ", "_") + kind
        paths += save_protocol_figures(prot, figures_dir, prefix=prefix)
    vol_run = runs["reconstruct (as recovered)" if same_protein
                   else "ab initio (no map, no model)"]
    vol = vol_run.outputVolume.getFileName()
    lines += ["", f"figures: {figures_dir}"] + [f"  {os.path.basename(p)}" for p in paths]
    lines += [f"map (no ground truth used): {os.path.abspath(vol)}",
              f"project: {project.getPath()}  (open it with: scipion3 project "
              f"{os.path.basename(project.getPath())})"]
    text = "\n".join(lines)
    print(text, flush=True)
    with open(os.path.join(figures_dir, "results.txt"), "w") as f:
        f.write(text + "\n")
    return text, paths


def _error_lines(res, keys):
    return [f"{'orientation error (vs truth)':<42}{'median':>10}{'mean':>10}",
            *(f"{label:<42}{res[key + '_median']:>10.3f}{res[key + '_mean']:>10.3f}"
              for label, key in keys)]


def _resolution_line(label, pair):
    return f"{label:<42}{pair[0]:>10.1f}{pair[1]:>10.1f}"


def _same_protein_table(runs, values):
    res = runs["compare with ground truth"].getResults()
    rec_truth = runs["reconstruct (aligned to truth)"].getResolutions()
    rec_free = runs["reconstruct (as recovered)"].getResolutions()
    lines = [f"orientlearn demo (same protein): 5j0n, {values['ntrain']} training / "
             f"{values['ntest']} test particles at {values['size']} px", "",
             *_error_lines(res, (("  aligned by O(4) (paper E_OR), rad", "o4"),
                                 ("  aligned by rotation+handedness, rad", "rot"),
                                 ("  (unrelated orientations), rad", "random"))),
             "", f"{'resolution':<42}{'FSC0.5':>10}{'FSC0.143':>10}"]
    if "fsc_ref" in rec_truth:
        lines.append(_resolution_line("  vs true map (aligned orientations), A",
                                      rec_truth["fsc_ref"]))
    for label, res_ in (("  half maps, aligned to truth, A", rec_truth),
                        ("  half maps, as recovered (no truth), A", rec_free)):
        if "fsc_half" in res_:
            lines.append(_resolution_line(label, res_["fsc_half"]))
    return lines


def _no_map_table(runs, values):
    """The ab initio stages as a user sees them (half maps, no truth), then the truth's
    verdict (errors, FSC against the map next to the FSC from the true orientations)."""
    ab = runs["ab initio (no map, no model)"]
    records = ab.getHistory().get("records", [])
    parts = runs["simulate particles"].outputParticles
    px = parts.getSamplingRate()
    lines = [f"orientlearn demo: ab initio with no map and no model on {parts.getSize()} "
             f"particles of 5j0n at {values['size']} px ({px:.2f} A/px), noise sigma^2 "
             f"{values['sigma2']:g}, CTF, offsets <= {values['maxshift']:g} px "
             "(the map only simulates them and scores the result)", "",
             f"{'ab initio stages: half maps, no truth (A)':<42}{'FSC0.5':>10}"
             f"{'FSC0.143':>10}{'time (s)':>10}"]
    first = records[0] if records else {}
    if "common_lines_seconds" in first:
        label = f"  first map: {first.get('common_lines_classes', '')} class averages"
        lines.append(f"{label:<42}{'-':>10}{'-':>10}{first['common_lines_seconds']:>10.0f}")
    if "volume_training_seconds" in first:
        lines.append(f"{'  distance model trained on it':<42}{'-':>10}{'-':>10}"
                     f"{first['volume_training_seconds']:>10.0f}")
    names = {"recover": "  orientations from the model",
             "refine": "  + local refinement",
             "all particles": "  all particles", "all particles, refined":
             "  all particles, refined"}
    for rec in records:
        label = names.get(rec["stage"], "  " + rec["stage"])
        lines.append(f"{label:<42}{rec['resolution_05']:>10.1f}"
                     f"{rec['resolution']:>10.1f}{rec['seconds']:>10.0f}")
    res = runs["compare with ground truth"].getResults()
    lines += ["", *_error_lines(res, (("  rotation + handedness, rad", "rot"),
                                      ("  (unrelated orientations), rad", "random")))]
    if "shift_median" in res:
        lines.append(f"{'  offsets, after the frame translation, px':<42}"
                     f"{res['shift_median']:>10.2f}{res['shift_mean']:>10.2f}")
    lines += ["", f"{'resolution vs the true map':<42}{'FSC0.5':>10}{'FSC0.143':>10}"]
    for label, name in (("  ab initio orientations + offsets, A",
                         "reconstruct (ab initio, aligned to truth)"),
                        ("  true orientations + offsets, A", "reconstruct (true orientations)")):
        r = runs[name].getResolutions()
        if "fsc_ref" in r:
            lines.append(_resolution_line(label, r["fsc_ref"]))
    return lines


def main(argv=None):
    args = parse_args(argv)
    project, runs, timings, values = run_workflow(args)
    report(project, runs, timings, values, args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
