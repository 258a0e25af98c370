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
