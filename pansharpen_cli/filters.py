"""Filters of the pansharpening toolbox: the 23-tap interpolator, sensor MTF kernels, decimation.

All arrays are band-first: (B, H, W).
"""

from __future__ import annotations

import numpy as np

#: Half of the symmetric 23-tap half-band interpolation kernel of the toolbox's ``interp23tap``
#: (centre tap first, odd taps zero); the full kernel is ``HALFBAND_23TAP``.
_CDF23_HALF = 2.0 * np.array(
    [0.5, 0.305334091185, 0.0, -0.072698593239, 0.0, 0.021809577942, 0.0, -0.005192756653, 0.0,
     0.000807762146, 0.0, -0.000060081482]
)
HALFBAND_23TAP: np.ndarray = np.concatenate([_CDF23_HALF[:0:-1], _CDF23_HALF])
