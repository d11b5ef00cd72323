"""Fast CPU training data: PSF banks (model 0.3).

The exact per-patch PSF (optics.psf_kernels: a 384x384 pupil FFT per channel) costs ~0.3 s per patch on one CPU core,
more than rendering and training together. A bank holds a few optics draws ("instruments"), each with its PSFs
precomputed on a z grid (0.2 µm steps for |z| <= 4 µm, where the PSF changes fastest, 0.5 µm beyond); a patch at a
continuous z gets the linear interpolation of the two neighbouring grid PSFs of its instrument, i.e. a PSF between
those of z ± 0.1 µm (± 0.25 µm beyond 4 µm; tests: L1 distance to the exact PSF < 0.1). For |z| <= 2.6 µm the
kernels are computed on 96 px (the blur is small; the cut sidelobes hold ~1-3 % of the energy) and zero-padded.
One instrument is replaced after every `refresh_every` batches, so the optics keep changing during training.
"""
from __future__ import annotations

import time

import numpy as np
import torch

import optics as O
import synth as S

SMALL_PX = 96
SMALL_Z = 2.6


def default_z_grid(z_max: float = 8.0) -> torch.Tensor:
    near = np.round(np.arange(-SMALL_Z, SMALL_Z + 1e-9, 0.2), 4)
    far = np.round(np.concatenate([np.arange(2.8, 4.0 + 1e-9, 0.2), np.arange(4.5, z_max + 0.5 + 1e-9, 0.5)]), 4)
    return torch.tensor(np.concatenate([-far[::-1], near, far]), dtype=torch.float64)


def grid_kernels(ob1: O.OpticsBatch, zg: torch.Tensor, size: int = S.KERNEL, oversample: int = 3, chunk: int = 8) -> torch.Tensor:
    """PSFs of one instrument (ob1 with batch 1) at every z of the grid: [G,3,size,size] float32."""
    out = torch.zeros(len(zg), 3, size, size)
    for small in (True, False):
        idx = torch.nonzero((zg.abs() <= SMALL_Z + 1e-9) == small).flatten()
        px = SMALL_PX if small else size
        lo = (size - px) // 2
        for i in range(0, len(idx), chunk):
            j = idx[i:i + chunk]
            ob = ob1.take(torch.zeros(len(j), dtype=torch.long))
            out[j, :, lo:lo + px, lo:lo + px] = O.psf_kernels(zg[j], ob, px, oversample, fast=True)
    return out


class PsfBank:
    def __init__(self, ranges: O.OpticsRanges, n_draws: int, gen: torch.Generator, z_max: float = 8.0,
                 refresh_every: int = 2, oversample: int = 3):
        self.ranges, self.gen, self.oversample = ranges, gen, oversample
        self.zg = default_z_grid(z_max)
        self.refresh_every = refresh_every
        self.draws: list[tuple[O.OpticsBatch, torch.Tensor]] = []
        self.next_replace = 0
        self.batches = 0
        self.seconds_building = 0.0
        self.n_draws = n_draws
        for _ in range(min(n_draws, 2)):  # start small (fast start), grow to n_draws in step()
            self.draws.append(self._draw())

    def _draw(self):
        t = time.time()
        ob = O.OpticsBatch.sample(self.ranges, 1, self.gen)
        k = grid_kernels(ob, self.zg, oversample=self.oversample)
        self.seconds_building += time.time() - t
        return ob, k

    def kernels(self, z: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """Interpolated PSFs for z [B] (clamped to the grid) of instruments `which` [B]: [B,3,KERNEL,KERNEL]."""
        zg = self.zg
        zc = z.to(torch.float64).clamp(float(zg[0]), float(zg[-1]))
        i = (torch.searchsorted(zg, zc, right=True) - 1).clamp(0, len(zg) - 2)
        w = ((zc - zg[i]) / (zg[i + 1] - zg[i])).float().view(-1, 1, 1, 1)
        out = []
        for b in range(len(z)):
            k = self.draws[int(which[b])][1]
            out.append((1 - w[b]) * k[i[b]] + w[b] * k[i[b] + 1])
        return torch.stack(out)

    def optics(self, which: torch.Tensor) -> O.OpticsBatch:
        obs = [self.draws[int(i)][0] for i in which]
        cat = lambda f: torch.cat([getattr(o, f) for o in obs])
        return O.OpticsBatch(cat("na"), cat("n"), cat("pixel_um"), cat("wl"), cat("chroma"), cat("sa"))

    def step(self):
        """Call once per batch: replaces one instrument every refresh_every batches."""
        self.batches += 1
        if len(self.draws) < self.n_draws:
            self.draws.append(self._draw())
        elif self.refresh_every and self.batches % self.refresh_every == 0:
            self.draws[self.next_replace] = self._draw()
            self.next_replace = (self.next_replace + 1) % len(self.draws)


def bank_batch(bank: PsfBank, sources, b, gen, z_max, var, sparse_frac=0.0, patch_px: int = S.PATCH, boundary_frac: float = 0.0):
    """Like train.make_batch, with PSFs from the bank: (uint8-valued float [B,3,patch_px,patch_px], z [B], optics).
    patch_px < PATCH: smaller training patches (the network pools globally), cheaper to render and to train on."""
    z = S.sample_z(b, gen, z_max, boundary_frac=boundary_frac)
    which = torch.randint(0, len(bank.draws), (b,), generator=gen)
    od = S.random_crops(sources, b, gen, var, "cpu", size=patch_px + 2 * S.MARGIN, od=True)  # sources from S.with_od
    if sparse_frac > 0:
        pick = torch.nonzero(torch.rand(b, generator=gen) < sparse_frac).flatten()
        if len(pick):
            od[pick] = S.on_glass_od(od[pick], S.sparse_tissue_masks(len(pick), gen, patch_px=patch_px))
    ob = bank.optics(which)
    x8 = S.render_od(od, z, ob, gen, var, kernels=bank.kernels(z, which), fast=True)
    bank.step()
    return x8, z, ob
