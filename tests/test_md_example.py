"""The shipped MD example runs (shortened) and writes what its README promises."""

import shutil
from pathlib import Path

from mmtp_hpc.cli import main
from mmtp_hpc.dynamics.settings import load_settings
from mmtp_hpc.io.trajectory import read_trajectory

EXAMPLE = Path(__file__).resolve().parents[1] / "inputs" / "md_fe_nvt"


def test_example_input_is_valid():
    s = load_settings(EXAMPLE / "input.toml")
    assert s.path(s.potential.file).is_file()
    assert s.md.ensemble == "nvt" and s.moments.mode == "mc" and s.output.trajectory


def test_example_runs(tmp_path, capsys):
    text = (EXAMPLE / "input.toml").read_text()
    potential = (EXAMPLE / "../potentials/fe_bcc_l16.almtp").resolve()
    assert '"../potentials/fe_bcc_l16.almtp"' in text
    (tmp_path / "input.toml").write_text(text.replace('"../potentials/fe_bcc_l16.almtp"', f'"{potential}"'))
    assert main(["md", str(tmp_path / "input.toml"), "--steps", "60"]) == 0
    out = capsys.readouterr().out
    assert "250 atoms" in out and "mmtp md summary: 60 steps" in out and "moment MC:" in out
    assert "extrapolation: 2 grades" in out
    # the first log line of the README's expected output
    assert "0     0.000    298.8    -4.24000" in out
    traj = read_trajectory(tmp_path / "trajectory.h5")
    assert traj["step"].tolist() == [0, 20, 40, 60] and traj["magmoms"].shape == (4, 250)
    assert (tmp_path / "checkpoint.h5").is_file()
