"""The shipped MD example runs (shortened) and writes what its README promises."""

import shutil
from pathlib import Path

from mmtp_hpc.cli import main
from mmtp_hpc.dynamics.settings import load_settings
from mmtp_hpc.io.trajectory import read_trajectory

EXAMPLE = Path(__file__).resolve().parents[1] / "inputs" / "md_fe_nvt"
MPI_EXAMPLE = EXAMPLE.parent / "md_fe_mpi"


def test_example_input_is_valid():
    s = load_settings(EXAMPLE / "input.toml")
    assert s.path(s.potential.file).is_file()
    assert s.md.ensemble == "nvt" and s.moments.mode == "mc" and s.output.trajectory


def test_example_runs(tmp_path, capsys):
    text = (EXAMPLE / "input.toml").read_text()
    potential = (EXAMPLE / "../potentials/fe_bcc_analytic_l16.almtp").resolve()
    assert '"../potentials/fe_bcc_analytic_l16.almtp"' in text
    (tmp_path / "input.toml").write_text(text.replace('"../potentials/fe_bcc_analytic_l16.almtp"', f'"{potential}"'))
    assert main(["md", str(tmp_path / "input.toml"), "--steps", "60"]) == 0
    out = capsys.readouterr().out
    assert "250 atoms" in out and "mmtp md summary: 60 steps" in out and "moment MC:" in out
    assert "extrapolation: 2 grades" in out
    # the first log line of the README's expected output
    assert "0     0.000    298.8    -4.24000" in out
    traj = read_trajectory(tmp_path / "trajectory.h5")
    # frames every 4 fs: close enough for the VACF/DOS (mmtp post vdos warns above 5 fs)
    assert traj["step"].tolist() == list(range(0, 61, 4)) and traj["magmoms"].shape == (16, 250)
    assert (tmp_path / "checkpoint.h5").is_file()


def test_mpi_example_fits_2_and_4_ranks_with_monte_carlo():
    """inputs/md_fe_mpi: subdomains ≥ 4 cutoffs thick for the parallel MC on 2 and 4 ranks."""
    import numpy as np

    from mmtp_hpc.errors import InputError
    from mmtp_hpc.parallel.decomposition import choose_grid
    from mmtp_hpc.potentials.mtp.mlip_io import load_potential

    s = load_settings(MPI_EXAMPLE / "input.toml")
    assert s.moments.mode == "mc" and s.system.lattice == "bcc"
    cutoff = load_potential(s.path(s.potential.file)).cutoff
    repeat = np.broadcast_to(np.asarray(s.system.repeat), 3)
    cell = np.diag(s.system.a * repeat.astype(float))
    halo = 4.0 * cutoff
    pbc = np.ones(3, dtype=bool)
    assert choose_grid(2, cell, pbc, halo) == [2, 1, 1]
    assert choose_grid(4, cell, pbc, halo) == [2, 2, 1]
    try:
        choose_grid(3, cell, pbc, halo)
    except InputError as exc:      # 3 ranks do not fit, and the message says how many do
        assert "at most 2 rank(s)" in str(exc) or "at most 4 rank(s)" in str(exc)
