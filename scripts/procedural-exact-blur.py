"""Procedural tiles defocused by the TRAINING optics (exact PSF, models/training/optics.py) instead of the
Gaussian-sum approximation sim/procedural.ts uses: separates "the procedural texture is foreign to the CNN" from
"the TS blur approximation loses the sign cue".

    npx tsx scripts/eval-procedural.ts --write-sharp DIR        # noise-free in-focus procedural tiles (PNG)
    /usr/bin/python3 scripts/procedural-exact-blur.py DIR OUT [--z -5:5:1]
    npx tsx scripts/eval-procedural.ts --png OUT                # score them (z from the file name)

Each in-focus tile is decoded to linear light, blurred per channel with optics.psf_kernels (training default
optics, 128-px kernels, circular FFT convolution: the tile edges wrap by 64 px), given Poisson-Gaussian noise
(3 000 e- full well, 6 e- read noise, as sim/procedural.ts) and written as 8-bit sRGB PNG named <stem>_z<z>.png.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models" / "training"))
import optics as O  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--z", default="-5:5:1")
    a = ap.parse_args()
    z0, z1, dz = (float(v) for v in a.z.split(":"))
    zs = [round(z0 + i * dz, 3) for i in range(int(round((z1 - z0) / dz)) + 1)]
    os.makedirs(a.out, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    o = O.Optics()
    kern = O.psf_kernels(torch.tensor(zs, dtype=torch.float64), O.OpticsBatch.fixed(o, len(zs)), 128, 3)
    for p in sorted(Path(a.src).glob("*.png")):
        srgb = torch.from_numpy(np.asarray(Image.open(p).convert("RGB")).copy()).permute(2, 0, 1).float()[None] / 255
        lin = O.srgb_to_linear(srgb).to(torch.float32)
        for i, z in enumerate(zs):
            b = O.convolve(lin, kern[i:i + 1]).clamp(0, 1)
            e = torch.poisson(b * 3000, generator=gen) + 6 * torch.randn(b.shape, generator=gen)
            out = torch.round(O.linear_to_srgb(e / 3000) * 255).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
            Image.fromarray(out).save(Path(a.out) / f"{p.stem}_z{z:+.2f}.png", compress_level=1)
        print(p.name, flush=True)


if __name__ == "__main__":
    main()
