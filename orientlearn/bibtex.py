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
"""
