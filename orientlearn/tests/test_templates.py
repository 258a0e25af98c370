"""Workflow templates: found by Scipion, parse, resolve to protocol classes, and the
first one runs end to end (a tiny version of the demo) in a real Scipion project."""
import importlib.util
import json
import os

import numpy as np
import pytest
from pyworkflow.template import TemplateList

from orientlearn import demo
from orientlearn.tests.unittest_bridge import pytest_load_tests

load_tests = pytest_load_tests(__name__)  # scipion3 tests orientlearn.tests.<module>

TEMPLATE_IDS = {"orientlearn_ab_initio_simulated", "orientlearn_ab_initio_trained_model",
                "orientlearn_ab_initio_from_particles", "orientlearn_ab_initio_no_map_simulated",
                "orientlearn_ab_initio_then_relion_refine"}


def plugin_templates():
    tl = TemplateList()
    tl.addPluginTemplates()
    return {t.getObjId().split("-")[-1]: t for t in tl.templates
            if t.getObjId().split("-")[0] == "orientlearn"}


def test_scipion_finds_every_template():
    found = plugin_templates()
    assert TEMPLATE_IDS <= set(found), found.keys()


@pytest.mark.parametrize("template_id", sorted(TEMPLATE_IDS))
def test_template_parses_and_resolves_to_protocol_classes(template_id, tmp_path):
    from pwem import Domain
    template = plugin_templates()[template_id]
    template.replaceEnvVariables()
    template.parseContent()
    aliases = {p.getAlias() for p in template.getParams().values()}
    assert aliases, "a template exposes its user values as parameters"
    for p in template.getParams().values():
        # Defaults are valid values of their declared types; paths exist where the
        # template points at bundled data (the demo map), not at the user's own files.
        if p.getType() != 2 or template_id.endswith("simulated"):
            assert p.validate() is None, (p.getAlias(), p.getValue(), p.validate())
    path = template.createTemplateFile()
    try:
        with open(path) as f:
            protocols = json.load(f)
    finally:
        os.remove(path)
    classes = {p["object.id"]: Domain.findClass(p["object.className"]) for p in protocols}
    for p in protocols:
        cls = classes[p["object.id"]]
        assert cls is not None and hasattr(cls, "_defineParams"), p["object.className"]
        # Pointers "N.outputX" refer to a protocol of the same template and an output
        # that protocol declares.
        for key, value in p.items():
            if isinstance(value, str) and "." in value and value.split(".")[0].isdigit():
                src, attr = value.split(".", 1)
                assert src in classes, (key, value)
                names = output_names(classes[src])
                assert names is None or attr in names, (value, names)


def output_names(cls):
    """Names of a protocol class's declared outputs (dict or Enum), None if undeclared."""
    possible = getattr(cls, "_possibleOutputs", None)
    if possible is None:
        return None
    return set(possible) if isinstance(possible, dict) else {m.name for m in possible}


@pytest.mark.slow
def test_tiny_same_protein_demo_runs_end_to_end(tmp_path, capsys):
    cwd = os.getcwd()
    try:
        args = demo.parse_args(["--same-protein", "--location", str(tmp_path),
                                "--name", "tinydemo",
                                "--ntrain", "160", "--ntest", "60", "--size", "32",
                                "--epochs", "2", "--steps", "4", "--features", "8",
                                "--rsteps", "60", "--quiet",
                                "--figures", str(tmp_path / "figures")])
        project, runs, timings, values = demo.run_workflow(args)
        text, paths = demo.report(project, runs, timings, values, args.figures)
        # Protocols resolve their files from the project folder (the demo's cwd).
        res = runs["compare with ground truth"].getResults()
        volume = os.path.abspath(runs["reconstruct (as recovered)"].outputVolume.getFileName())
        finished = {label: prot.isFinished() for label, prot in runs.items()}
        from orientlearn.viewers.figures import protocol_figures
        # Pixel sizes (h, w) of every figure the viewers make, at the demo's 100 dpi.
        expected_sizes = {tuple(int(round(v * 100)) for v in fig.get_size_inches()[::-1])
                          for prot in runs.values() for fig in protocol_figures(prot).values()}
    finally:
        os.chdir(cwd)
    assert [label for label, _ in timings] == list(demo.SAME_PROTEIN.steps)
    assert all(finished.values()), finished
    for key in ("o4_median", "o4_mean", "rot_median", "rot_mean"):
        assert 0.0 <= res[key] <= np.pi, (key, res[key])
    assert res["n_particles"] == 60
    assert "aligned by O(4)" in text and "FSC0.5" in text
    assert os.path.getsize(volume) > 32 ** 3 * 4
    assert len(paths) >= 10
    assert all(p.endswith(".png") and os.path.getsize(p) > 1000 for p in paths)
    import matplotlib.image as mpimg
    for p in paths:
        img = mpimg.imread(p)
        assert img.shape[:2] in expected_sizes, (p, img.shape)
        assert img[..., :3].std() > 0.01, f"{p} is blank"
    assert (tmp_path / "figures" / "results.txt").read_text().strip() == text.strip()


def test_demo_flags_pick_the_workflow():
    assert demo.workflow_of(demo.parse_args([])) is demo.NO_MAP
    assert demo.workflow_of(demo.parse_args(["--same-protein"])) is demo.SAME_PROTEIN
    # The paper's setting is the same-protein benchmark.
    assert demo.workflow_of(demo.parse_args(["--paper"])) is demo.SAME_PROTEIN


@pytest.mark.slow
@pytest.mark.skipif(not importlib.util.find_spec("aspire"), reason="needs ASPIRE")
def test_tiny_no_map_demo_runs_end_to_end(tmp_path):
    """The default demo, tiny: simulated particles -> ab initio with no map and no model
    (common lines, a model trained on the first map, recovery, refinement) -> compared
    with the truth and reconstructed."""
    cwd = os.getcwd()
    try:
        args = demo.parse_args(["--location", str(tmp_path), "--name", "tinynomap",
                                "--ntest", "300", "--size", "32", "--epochs", "2",
                                "--modelsize", "24", "--classes", "40", "--rsteps", "100",
                                "--sigma2", "0", "--maxshift", "1", "--quiet",
                                "--figures", str(tmp_path / "figures")])
        project, runs, timings, values = demo.run_workflow(args)
        text, paths = demo.report(project, runs, timings, values, args.figures)
        res = runs["compare with ground truth"].getResults()
        finished = {label: prot.isFinished() for label, prot in runs.items()}
        first_map = runs["ab initio (no map, no model)"].getCommonLinesMap()
    finally:
        os.chdir(cwd)
    assert [label for label, _ in timings] == list(demo.NO_MAP.steps)
    assert all(finished.values()), finished
    assert res["n_particles"] == 300
    assert first_map is not None
    for needle in ("first map: 40 class averages", "orientations from the model",
                   "+ local refinement", "offsets, after the frame translation",
                   "true orientations + offsets"):
        assert needle in text, needle
    assert any("first_map" in os.path.basename(p) or "common_lines" in os.path.basename(p)
               for p in paths), paths
