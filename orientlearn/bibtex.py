r"""
@inproceedings{Banjac2021,
title = {Learning to recover orientations from projections in single-particle cryo-EM},
author = {Banjac, Jelena and Donati, Laur\`ene and Defferrard, Micha\"el},
booktitle = {arXiv preprint},
year = {2021},
doi = {10.48550/arXiv.2104.06237},
url = {https://arxiv.org/abs/2104.06237}
}

@article{vanAarle2016,
title = {Fast and flexible X-ray tomography using the ASTRA toolbox},
author = {van Aarle, Wim and Palenstijn, Willem Jan and Cant, Jeroen and Janssens, Eline and Bleichrodt, Folkert and Dabravolski, Andrei and De Beenhouwer, Jan and Batenburg, K. Joost and Sijbers, Jan},
journal = {Optics Express},
volume = {24},
number = {22},
pages = {25129--25147},
year = {2016},
doi = {10.1364/OE.24.025129}
}
@article{Wojdyr2022,
title = {{GEMMI}: A library for structural biology},
author = {Wojdyr, Marcin},
journal = {Journal of Open Source Software},
volume = {7},
number = {73},
pages = {4200},
year = {2022},
doi = {10.21105/joss.04200}
}
@misc{ASPIRE,
title = {{ASPIRE}: Algorithms for Single Particle Reconstruction (ASPIRE-Python)},
author = {{ComputationalCryoEM}},
howpublished = {Software, https://github.com/ComputationalCryoEM/ASPIRE-Python},
year = {2024},
note = {Concept DOI for all versions; cite the version used},
doi = {10.5281/zenodo.5657281},
url = {https://doi.org/10.5281/zenodo.5657281}
}

@article{Shkolnisky2012,
title = {Viewing Direction Estimation in Cryo-EM Using Synchronization},
author = {Shkolnisky, Yoel and Singer, Amit},
journal = {SIAM Journal on Imaging Sciences},
volume = {5},
number = {3},
pages = {1088--1110},
year = {2012},
doi = {10.1137/120863642}
}

@article{Zhao2014,
title = {Rotationally Invariant Image Representation for Viewing Direction Classification in Cryo-EM},
author = {Zhao, Zhizhen and Shkolnisky, Yoel and Singer, Amit},
journal = {Journal of Structural Biology},
volume = {186},
number = {1},
pages = {153--166},
year = {2014},
doi = {10.1016/j.jsb.2014.03.003}
}

@article{Singer2010,
title = {Detecting consistent common lines in cryo-EM by voting},
author = {Singer, Amit and Coifman, Ronald R. and Sigworth, Fred J. and Chester, David W. and Shkolnisky, Yoel},
journal = {Journal of Structural Biology},
volume = {169},
number = {3},
pages = {312--322},
year = {2010},
doi = {10.1016/j.jsb.2009.11.003}
}

@article{Henderson2012,
title = {Outcome of the first electron microscopy validation task force meeting},
author = {Henderson, Richard and Sali, Andrej and Baker, Matthew L. and Carragher, Bridget and Devkota, Batsal and Downing, Kenneth H. and Egelman, Edward H. and Feng, Zukang and Frank, Joachim and Grigorieff, Nikolaus and others},
journal = {Structure},
volume = {20},
number = {2},
pages = {205--214},
year = {2012},
doi = {10.1016/j.str.2011.12.014}
}

@article{Rosenthal2003,
title = {Optimal determination of particle orientation, absolute hand, and contrast loss in single-particle electron cryomicroscopy},
author = {Rosenthal, Peter B. and Henderson, Richard},
journal = {Journal of Molecular Biology},
volume = {333},
number = {4},
pages = {721--745},
year = {2003},
doi = {10.1016/j.jmb.2003.07.013}
}

@article{Scheres2012,
title = {{RELION}: implementation of a Bayesian approach to cryo-EM structure determination},
author = {Scheres, Sjors H. W.},
journal = {Journal of Structural Biology},
volume = {180},
number = {3},
pages = {519--530},
year = {2012},
doi = {10.1016/j.jsb.2012.09.006}
}
"""
