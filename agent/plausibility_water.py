"""Water properties for heat-meter plausibility: IAPWS-IF97 region 1, pure.

The heat a meter counts is ``Q = integral of k(theta_f, theta_r) * (theta_f - theta_r) dV``
(EN 1434-1), with the heat coefficient

    k = rho(theta_s) * (h(theta_f) - h(theta_r)) / (theta_f - theta_r)

where ``rho`` is the density at the temperature ``theta_s`` of the pipe the volume is
measured in (the flow sensor's pipe: return or supply) and ``h`` the specific enthalpy.
``rho`` and ``h`` come from the Gibbs free energy of IAPWS-IF97 region 1 (compressed
liquid water, 0..350 C), evaluated at a nominal pressure (``PRESSURE_MPA``; a district
heating substation runs at 0.3-1.6 MPa, which moves ``k`` by less than 0.1 %).

``water_table()`` tabulates rho and h every 0.25 K from 0 to 200 C once (linear
interpolation error below 1e-6 relative), so the per-reading cost is a lookup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

R_KJ_KGK = 0.461526  # specific gas constant of water (IF97)
P_STAR_MPA = 16.53
T_STAR_K = 1386.0
PRESSURE_MPA = 1.0
T0_K = 273.15

# IF97 region 1: (I, J, n), table 2 of the IAPWS release (1997/2007).
_R1: tuple[tuple[int, int, float], ...] = (
    (0, -2, 0.14632971213167), (0, -1, -0.84548187169114), (0, 0, -0.37563603672040e1),
    (0, 1, 0.33855169168385e1), (0, 2, -0.95791963387872), (0, 3, 0.15772038513228),
    (0, 4, -0.16616417199501e-1), (0, 5, 0.81214629983568e-3), (1, -9, 0.28319080123804e-3),
    (1, -7, -0.60706301565874e-3), (1, -1, -0.18990068218419e-1),
    (1, 0, -0.32529748770505e-1), (1, 1, -0.21841717175414e-1),
    (1, 3, -0.52838357969930e-4), (2, -3, -0.47184321073267e-3),
    (2, 0, -0.30001780793026e-3), (2, 1, 0.47661393906987e-4),
    (2, 3, -0.44141845330846e-5), (2, 17, -0.72694996297594e-15),
    (3, -4, -0.31679644845054e-4), (3, 0, -0.28270797985312e-5),
    (3, 6, -0.85205128120103e-9), (4, -5, -0.22425281908000e-5),
    (4, -2, -0.65171222895601e-6), (4, 10, -0.14341729937924e-12),
    (5, -8, -0.40516996860117e-6), (8, -11, -0.12734301741641e-8),
    (8, -6, -0.17424871230634e-9), (21, -29, -0.68762131295531e-18),
    (23, -31, 0.14478307828521e-19), (29, -38, 0.26335781662795e-22),
    (30, -39, -0.11947622640071e-22), (31, -40, 0.18228094581404e-23),
    (32, -41, -0.93537087292458e-25),
)  # fmt: skip


def if97_v_h(t_k: float, p_mpa: float) -> tuple[float, float]:
    """Specific volume (m3/kg) and specific enthalpy (kJ/kg) of liquid water, IF97
    region 1, at temperature ``t_k`` (K) and pressure ``p_mpa`` (MPa)."""
    pi = p_mpa / P_STAR_MPA
    tau = T_STAR_K / t_k
    a, b = 7.1 - pi, tau - 1.222
    g_pi = 0.0
    g_tau = 0.0
    for i, j, n in _R1:
        g_pi -= n * i * a ** (i - 1) * b**j if i else 0.0
        g_tau += n * a**i * j * b ** (j - 1)
    v = R_KJ_KGK * t_k / p_mpa * pi * g_pi / 1000.0  # kJ/(kg MPa) -> m3/kg
    h = R_KJ_KGK * t_k * tau * g_tau
    return v, h


@dataclass(frozen=True)
class WaterTable:
    """rho (kg/m3) and h (kJ/kg) every ``step`` K from ``lo_c``, at one pressure."""

    lo_c: float
    step: float
    rho: tuple[float, ...]
    h: tuple[float, ...]

    def _at(self, col: tuple[float, ...], t_c: float) -> float:
        x = (t_c - self.lo_c) / self.step
        i = min(max(math.floor(x), 0), len(col) - 2)
        f = x - i
        return col[i] + (col[i + 1] - col[i]) * f

    def density(self, t_c: float) -> float:
        return self._at(self.rho, t_c)

    def enthalpy(self, t_c: float) -> float:
        return self._at(self.h, t_c)


@lru_cache(maxsize=4)
def water_table(p_mpa: float = PRESSURE_MPA, lo_c: float = 0.0, hi_c: float = 200.0) -> WaterTable:
    step = 0.25
    n = round((hi_c - lo_c) / step) + 1
    rho: list[float] = []
    h: list[float] = []
    for k in range(n):
        v, hh = if97_v_h(lo_c + k * step + T0_K, p_mpa)
        rho.append(1.0 / v)
        h.append(hh)
    return WaterTable(lo_c, step, tuple(rho), tuple(h))


def heat_coefficient(supply_c: float, return_c: float, sensor: str = "return") -> float:
    """EN 1434 heat coefficient k (kJ/(m3 K)) for a volume measured in the ``sensor``
    pipe ("return" or "supply"). At equal temperatures: rho * cp."""
    w = water_table()
    rho = w.density(return_c if sensor == "return" else supply_c)
    dt = supply_c - return_c
    if abs(dt) < 1e-3:
        d = 0.05
        return rho * (w.enthalpy(supply_c + d) - w.enthalpy(supply_c - d)) / (2 * d)
    return rho * (w.enthalpy(supply_c) - w.enthalpy(return_c)) / dt


def heat_kwh(volume_m3: float, supply_c: float, return_c: float, sensor: str = "return") -> float:
    """Heat (kWh) carried by ``volume_m3`` cooled from ``supply_c`` to ``return_c``."""
    return volume_m3 * heat_coefficient(supply_c, return_c, sensor) * (supply_c - return_c) / 3600.0
