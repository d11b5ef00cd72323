"""Instrument variants of the evaluation grid (model 0.3, issue 13).

All start from evaluate.SHIFTED (NA 0.77, 0.235 µm/px, λ 620/530/470 nm, axial colour R +0.30 / B -0.30 µm, spherical
aberration +0.22 waves: the training family, with values that are not the training defaults) and change one thing:

  matching         the training family
  mirrored         both asymmetries reversed: optically identical to z -> -z (an inverted z axis)
  sa_reversed      spherical aberration reversed (cover glass / mounting medium on the other side of nominal)
  colour_reversed  axial colour reversed (an objective whose red focuses in front of blue)
  no_colour        no axial colour (an apochromat): only spherical aberration is left as a sign cue
  strong_sa        spherical aberration 0.35 waves
  lower_na         NA 0.65

`colour` / `sa` are the signs of the two cues relative to the training convention (R behind G behind B, SA > 0);
tests/test_instruments.py checks on the PSFs that each variant really has them.
"""
from __future__ import annotations

from dataclasses import replace

import optics as O

BASE = O.Optics(na=0.77, n=1.0, pixel_um=0.235, wavelengths_um=(0.62, 0.53, 0.47), chroma_um=(0.3, 0.0, -0.3), sa_waves=0.22)

VARIANTS: dict[str, O.Optics] = {
    "matching": BASE,
    "mirrored": replace(BASE, chroma_um=(-0.3, 0.0, 0.3), sa_waves=-0.22),
    "sa_reversed": replace(BASE, sa_waves=-0.22),
    "colour_reversed": replace(BASE, chroma_um=(-0.3, 0.0, 0.3)),
    "no_colour": replace(BASE, chroma_um=(0.0, 0.0, 0.0)),
    "strong_sa": replace(BASE, sa_waves=0.35),
    "lower_na": replace(BASE, na=0.65),
}

# Not in the standard grid (tests pin its 7 variants); eval_grid.py --variants accepts these too.
#   no_colour_sa_reversed  an apochromat with SA reversed: spherical aberration is the only cue and it points the other
#                          way (the counterpart of no_colour: a model reading SA is confidently wrong here)
#   no_aberration          neither cue (the virtual scanner's `none` instrument): the sign cannot be read at all, only
#                          |z|; mag_head.py's magnitude head is measured here
EXTRA_VARIANTS: dict[str, O.Optics] = {
    "no_colour_sa_reversed": replace(BASE, chroma_um=(0.0, 0.0, 0.0), sa_waves=-0.22),
    "no_aberration": replace(BASE, chroma_um=(0.0, 0.0, 0.0), sa_waves=0.0),
}

# sign of each cue relative to the training convention (0 = absent)
CUES: dict[str, dict[str, int]] = {
    "matching": {"colour": 1, "sa": 1},
    "mirrored": {"colour": -1, "sa": -1},
    "sa_reversed": {"colour": 1, "sa": -1},
    "colour_reversed": {"colour": -1, "sa": 1},
    "no_colour": {"colour": 0, "sa": 1},
    "strong_sa": {"colour": 1, "sa": 1},
    "lower_na": {"colour": 1, "sa": 1},
    "no_colour_sa_reversed": {"colour": 0, "sa": -1},
    "no_aberration": {"colour": 0, "sa": 0},
}
