"""Tiny atomic models made in the tests (no download): PDB files written with gemmi."""
import gzip

import gemmi
import numpy as np


def write_pdb(path, positions, elements, cell=None):
    """A one-chain PDB file with one atom per residue at ``positions`` (A, x y z)."""
    st = gemmi.Structure()
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    for k, (p, el) in enumerate(zip(positions, elements)):
        res = gemmi.Residue()
        res.name = "ALA"
        res.seqid = gemmi.SeqId(k + 1, " ")
        atom = gemmi.Atom()
        atom.name = "CA" if el == "C" else el
        atom.element = gemmi.Element(el)
        atom.pos = gemmi.Position(*p)
        atom.b_iso = 10.0
        atom.occ = 1.0
        res.add_atom(atom)
        chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    if cell is not None:
        st.cell = gemmi.UnitCell(*cell)
    st.setup_entities()
    text = st.make_pdb_string()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        with open(path, "w") as f:
            f.write(text)
    return path


def tiny_protein(seed=0, n=60):
    """Carbon atoms in an elongated cloud (semi-axes 14, 8, 5 A) far from the origin."""
    rng = np.random.default_rng(seed)
    pts = rng.standard_normal((n, 3)) * np.array([7.0, 4.0, 2.5])
    return pts + np.array([30.0, -12.0, 55.0])


def make_structure(positions, elements, name="tiny"):
    """A ``gemmi.Structure`` with one atom per residue at ``positions`` (A, x y z)."""
    st = gemmi.Structure()
    st.name = name
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    for k, (p, el) in enumerate(zip(positions, elements)):
        res = gemmi.Residue()
        res.name = "ALA"
        res.seqid = gemmi.SeqId(k + 1, " ")
        atom = gemmi.Atom()
        atom.name = "CA"
        atom.element = gemmi.Element(el)
        atom.pos = gemmi.Position(*p)
        atom.b_iso = 10.0
        atom.occ = 1.0
        res.add_atom(atom)
        chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    return st


def pseudo_protein(seed, n_atoms=150):
    """An asymmetric three-lobed pseudo-protein (~50 A across): lobes of different sizes at
    the ends of an L with unequal arms, each lobe and arm perturbed by ``seed``. Proteins
    of different seeds share the plan but differ in detail."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [22.0, 0.0, 0.0], [0.0, 13.0, 8.0]])
    centres += rng.normal(0, 2.0, centres.shape)
    sizes = np.array([6.0, 4.5, 3.0]) * rng.uniform(0.85, 1.15, 3)
    counts = rng.multinomial(n_atoms, [0.5, 0.3, 0.2])
    pts = np.concatenate([c + rng.normal(0, s, (k, 3)) for c, s, k in zip(centres, sizes, counts)])
    return make_structure(pts, ["C"] * len(pts), name=f"pseudo{seed}")
