"""Agreement with values computed by MLIP-3 itself (shared/data/mlip3/reference).

Energies to relative 1e-10; forces, PlusStress and ∂E/∂m to absolute 1e-8;
basis values and ∂E/∂θ of configuration 0 likewise. Both the NumPy reference and
the Cython engine are checked.
"""

import numpy as np
import pytest

from mmtp_hpc.io.cfg import read_cfg
from mmtp_hpc.potentials.mtp import reference
from mmtp_hpc.potentials.mtp.engine import MTPEngine
from mmtp_hpc.potentials.mtp.mlip_io import read_mtp

CASES = {
    "alfe_magnetic": ("magnetic/al_fe_mag.mtpr", "magnetic/al_fe_mag.cfg", "alfe"),
    "li06": ("reference/li06_pot.almtp", "reference/li06_input.cfg", "li06"),
}


def load(shared_data, case):
    pot_file, cfg_file, tag = CASES[case]
    pot = read_mtp(shared_data / "mlip3" / pot_file)
    cfgs = read_cfg(shared_data / "mlip3" / cfg_file)
    refs = read_cfg(shared_data / "mlip3" / "reference" / f"ref_{tag}_efs.cfg")
    return pot, cfgs, refs, tag


def evaluators(pot):
    engine = MTPEngine(pot)
    return {
        "numpy": lambda cfg, **kw: reference.evaluate(pot, cfg, **kw),
        "cython": lambda cfg, **kw: {**engine.evaluate(cfg, basis=True),
                                     **(engine.param_gradients(cfg) if kw.get("param_grad") else {})},
    }


@pytest.mark.parametrize("engine_name", ["numpy", "cython"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_efs_matches_mlip3(shared_data, case, engine_name):
    pot, cfgs, refs, _ = load(shared_data, case)
    assert len(cfgs) == len(refs) > 0
    evaluate = evaluators(pot)[engine_name]
    # the NumPy reference is slow: check a few configurations with it, all with Cython
    chosen = range(len(cfgs)) if engine_name == "cython" else range(min(3, len(cfgs)))
    for k in chosen:
        cfg, ref = cfgs[k], refs[k]
        np.testing.assert_array_equal(cfg.positions, ref.positions)
        out = evaluate(cfg)
        assert out["energy"] == pytest.approx(ref.energy, rel=1e-10, abs=1e-12)
        np.testing.assert_allclose(out["site_energies"], ref.site_energies, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(out["forces"], ref.forces, rtol=0, atol=1e-8)
        np.testing.assert_allclose(out["virial"], ref.virial, rtol=0, atol=1e-8)
        if pot.magnetic:
            assert ref.magnetic_gradient is not None
            np.testing.assert_allclose(out["magnetic_gradient"], ref.magnetic_gradient, rtol=0, atol=1e-8)


def read_basis(path):
    rows = {}
    for line in path.read_text().splitlines():
        tok = line.split()
        # "cfg C atom A nneigh N 1 B_0 ... B_{n-1}" (the leading 1 is MLIP-3's constant term)
        rows[(int(tok[1]), int(tok[3]))] = (int(tok[5]), np.array(tok[6:], dtype=float))
    return rows


@pytest.mark.parametrize("engine_name", ["numpy", "cython"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_basis_and_param_gradient_match_mlip3(shared_data, case, engine_name):
    pot, cfgs, _, tag = load(shared_data, case)
    evaluate = evaluators(pot)[engine_name]
    rows = read_basis(shared_data / "mlip3" / "reference" / f"ref_{tag}_basis.txt")
    cache = {}
    for (c, a), (nneigh, values) in rows.items():
        if engine_name == "numpy" and c > 1:
            continue
        if c not in cache:
            cache[c] = evaluate(cfgs[c], param_grad=True)
        assert values[0] == 1.0
        np.testing.assert_allclose(cache[c]["basis"][a], values[1:], rtol=1e-10, atol=1e-12)
    nb = reference.brute_force_neighborhoods(cfgs[0], pot.cutoff)
    assert [len(nb[a].index) for (c, a) in sorted(rows) if c == 0] == \
        [rows[(c, a)][0] for (c, a) in sorted(rows) if c == 0]
    grad_file = shared_data / "mlip3" / "reference" / f"ref_{tag}_grad_cfg0.txt"
    grad = np.array([float(line.split()[1]) for line in grad_file.read_text().splitlines()
                     if not line.startswith("#")])
    ours = cache[0]["energy_param_grad"]
    assert ours.shape == grad.shape == (pot.n_params,)
    np.testing.assert_allclose(ours, grad, rtol=1e-10, atol=1e-10)
