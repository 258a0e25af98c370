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
    python_requires=">=3.9,<3.12",
    packages=find_packages(),
    include_package_data=True,
    package_data={"orientlearn": ["data/*.mrc", "templates/*.json.template", "*.bib",
                                  "protocols.conf"]},
    install_requires=[
        "scipion-pyworkflow==3.11.7",
        "scipion-em==3.11.1",
        "numpy==1.26.1",
        "scipy>=1.10,<1.15",
        "matplotlib>=3.7",
        "mrcfile>=1.4",
        "tensorflow-cpu>=2.18,<2.19",
        "astra-toolbox==2.5.0",
    ],
    extras_require={
        # CUDA TensorFlow in place of the CPU build (uninstall tensorflow-cpu first).
        "gpu": ["tensorflow[and-cuda]>=2.18,<2.19"],
        # scipion-em-relion: its star converter checks our ALIGN_PROJ convention in
        # tests/test_convert.py (skipped without it); pure Python, leaves numpy alone.
        "test": ["pytest>=7", "scipion-em-relion>=5.0.2,<6"],
        # ASPIRE in the plugin's env, for the 'common lines (ASPIRE)' protocol: 0.14.x
        # declares numpy>=1.25 and runs with numpy 1.26.1 / scipy 1.10 (checked). Without
        # it the protocol uses a separate env: python -m orientlearn.core.peer_aspire create
        "aspire": ["aspire>=0.14.3,<0.15; python_version>='3.10'"],
    },
    entry_points={
        "pyworkflow.plugin": "orientlearn = orientlearn",
        "console_scripts": ["orientlearn-demo = orientlearn.demo:main"],
    },
    classifiers=["Programming Language :: Python :: 3", "Topic :: Scientific/Engineering"],
)
