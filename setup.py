"""orientlearn: ab initio particle orientations by learning, as a Scipion plugin."""
from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="scipion-em-orientlearn",
    version="0.1.0",
    description="Scipion plugin: learn the distance between particle orientations from "
                "projections and recover orientations from it (Banjac et al. 2021).",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="GPLv3",
    # Scipion 3 runs on Python 3.8-3.12; TensorFlow 2.18 and numpy 1.26 need >= 3.9.
    python_requires=">=3.9,<3.13",
    packages=find_packages(),
    include_package_data=True,
    package_data={"orientlearn": ["data/*.mrc", "templates/*.json.template", "*.bib",
                                  "protocols.conf"]},
    install_requires=[
        # Lower bounds only: installing the plugin never changes the user's Scipion.
        # 3.9.0 is the first pyworkflow whose _insertFunctionStep takes needsGPU; with
        # scipion-em 3.9.0 this resolves and leaves both alone (.ci/check_install.py).
        "scipion-pyworkflow>=3.9.0",
        "scipion-em>=3.9.0",
        # numpy: Scipion's pyworkflow pins it (1.26.1 for Python >= 3.9); TensorFlow 2.18
        # needs >= 1.26. No pin of our own.
        "numpy>=1.26,<2",
        "scipy>=1.10,<1.15",
        "matplotlib>=3.7",
        "mrcfile>=1.4",
        "threadpoolctl>=3.1",
        # density maps from atomic models (simulate from PDB/mmCIF, core/atoms.py)
        "gemmi>=0.6",
        # CPU TensorFlow in Scipion's Python, so that a plain install runs everything.
        # Bounded: 2.19 breaks this stack. GPUs: the plugin's own environment
        # (scipion3 installb orientlearn, see README), or the 'gpu' extra.
        "tensorflow-cpu>=2.18,<2.19",
    ],
    extras_require={
        # CUDA TensorFlow and ASTRA (GPU projector / CGLS) in place of the CPU build
        # (uninstall tensorflow-cpu first).
        "gpu": ["tensorflow[and-cuda]>=2.18,<2.19", "astra-toolbox>=2.1"],
        # ASTRA alone (its 3-D algorithms need a CUDA GPU; everything has a CPU path).
        "astra": ["astra-toolbox>=2.1"],
        # scipion-em-relion: its star converter checks our ALIGN_PROJ convention in
        # tests/test_convert.py (skipped without it); pure Python, leaves numpy alone.
        "test": ["pytest>=7", "scipion-em-relion>=5.0.2,<6", "ruff>=0.5",
                 # ASPIRE: the common-lines tests (class averages, the no-map start) run
                 # instead of being skipped
                 "aspire>=0.14.3,<0.15; python_version>='3.10'"],
        # ASPIRE in the plugin's env, for the 'common lines (ASPIRE)' protocol: 0.14.x
        # declares numpy>=1.25 and runs with numpy 1.26.1 / scipy 1.10 (checked). Without
        # it the protocol uses a separate env: python -m orientlearn.core.peer_aspire create
        # the PDB files the generalist is trained and tested on (benchmarks/generalist.py,
        # benchmarks/unseen.py); never needed at run time
        "benchmarks": ["MDAnalysisTests>=2.0"],
        "aspire": ["aspire>=0.14.3,<0.15; python_version>='3.10'"],
    },
    entry_points={
        "pyworkflow.plugin": "orientlearn = orientlearn",
        "console_scripts": ["orientlearn = orientlearn.core.commands:main",
                            "orientlearn-demo = orientlearn.demo:main"],
    },
    classifiers=["Programming Language :: Python :: 3",
                 "Programming Language :: Python :: 3.9",
                 "Programming Language :: Python :: 3.10",
                 "Programming Language :: Python :: 3.11",
                 "Programming Language :: Python :: 3.12",
                 "Topic :: Scientific/Engineering"],
)
