"""Units of the MD engine and the conversions between them.

Lengths Å, time fs, energy eV, mass amu (atomic mass units), moments μB, temperature K,
pressure GPa. Velocities are in Å/fs. With masses in amu and energies in eV the only
non-trivial factor is :data:`MVV2E`: ½ m v² [amu·Å²/fs²] × MVV2E = kinetic energy in eV,
and an acceleration is F/m [eV/(Å·amu)] / MVV2E in Å/fs².
"""

from __future__ import annotations

from mmtp_hpc.system.configuration import EV_PER_A3_TO_GPA

KB_EV_PER_K = 8.617333262e-5          # Boltzmann constant, eV/K (CODATA 2018, exact)
_AMU_KG = 1.66053906660e-27          # CODATA 2018
_EV_J = 1.602176634e-19              # exact
MVV2E = _AMU_KG * 1e-20 / 1e-30 / _EV_J
"""1 amu·Å²/fs² in eV (≈ 103.6427)."""
GPA_PER_EV_A3 = EV_PER_A3_TO_GPA
"""1 eV/Å³ in GPa (≈ 160.2177)."""

__all__ = ["KB_EV_PER_K", "MVV2E", "GPA_PER_EV_A3"]
