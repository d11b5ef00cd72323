"""Radial OTF of the training optics (optics.psf_kernels), for the cross-implementation test.

    /usr/bin/python3 models/training/optics_mtf.py [--z=-3,-1,0,1,3] [--nf 48] [--pixel 0.22]

Prints JSON: the Optics() defaults and, per z and channel, the OTF along the x axis at f = 0.5*q/nf cycles/px
(q = 0..nf), i.e. the same frequencies as channelMtf() in imaging/optics.ts. The OTF is the Fourier transform of
the pixel-integrated kernel the training blur uses. The kernel is computed on a grid `--sub` times finer than the
camera pixel (pixel integration then applied as the pixel's sinc), so the number is the continuous OTF and not
one aliased by sampling the PSF at the camera pitch (channelMtf has no aliasing either).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import optics as O  # noqa: E402


def otf_x(z_list, o: O.Optics, nf: int, sub: int, size_px: int):
    fine = O.Optics(**{**o.to_dict(), "pixel_um": o.pixel_um / sub})
    z = torch.tensor(z_list, dtype=torch.float64)
    k = O.psf_kernels(z, O.OpticsBatch.fixed(fine, len(z_list)), size_px=size_px * sub, oversample=3)
    k = k.to(torch.float64)
    c = (size_px * sub) // 2
    x = (torch.arange(size_px * sub, dtype=torch.float64) - c)  # fine samples
    line = k.sum(dim=-2)  # [B,3,X]: marginal along x -> OTF(fx, 0)
    out = []
    for q in range(nf + 1):
        fpx = 0.5 * q / nf
        f_fine = fpx / sub  # cycles per fine sample
        v = (line * torch.cos(2 * math.pi * f_fine * x)).sum(-1)
        # the fine kernel is integrated over a fine pixel (sinc(f_fine)); replace that by the camera pixel's sinc
        s_fine = 1.0 if q == 0 else math.sin(math.pi * f_fine) / (math.pi * f_fine)
        s_pix = 1.0 if q == 0 else math.sin(math.pi * fpx) / (math.pi * fpx)
        out.append(v * s_pix / s_fine)
    return torch.stack(out, -1)  # [B,3,nf+1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--z", default="-3,-1,0,1,3")
    ap.add_argument("--nf", type=int, default=48)
    ap.add_argument("--pixel", type=float, default=0.22)
    ap.add_argument("--sub", type=int, default=3)
    ap.add_argument("--size", type=int, default=96, help="kernel support in camera pixels")
    a = ap.parse_args()
    o = O.Optics(pixel_um=a.pixel)
    zs = [float(v) for v in a.z.split(",")]
    otf = otf_x(zs, o, a.nf, a.sub, a.size)
    print(json.dumps({
        "optics": o.to_dict(),
        "f": [0.5 * q / a.nf for q in range(a.nf + 1)],
        "z": zs,
        "otf": [[[round(float(v), 6) for v in otf[i, c]] for c in range(3)] for i in range(len(zs))],
    }))


if __name__ == "__main__":
    main()
