"""The physical defocus model: energy, growth of blur with |z|, best focus, chromatic shift, spherical asymmetry."""
import os
import sys
import unittest

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import optics as O  # noqa: E402
import synth as S  # noqa: E402

P = 64  # small kernels keep the tests fast; |z| <= 3 µm fits in 64 px at 0.22 µm/px


def kernels(zs, **kw):
    o = O.Optics(**kw)
    z = torch.tensor(zs, dtype=torch.float64)
    return O.psf_kernels(z, O.OpticsBatch.fixed(o, len(zs)), size_px=P)


def peak(k):
    return k.amax(dim=(-2, -1))  # [B,3]


def radius50(k):
    """radius (px) that holds half the energy, per sample and channel."""
    yy, xx = torch.meshgrid(torch.arange(P) - P // 2, torch.arange(P) - P // 2, indexing="ij")
    r = (yy ** 2 + xx ** 2).float().sqrt().flatten()
    order = torch.argsort(r)
    kk = k.flatten(-2)[..., order].cumsum(-1)
    return r[order][(kk < 0.5).sum(-1).clamp(max=len(r) - 1)]


class TestPsf(unittest.TestCase):
    def test_energy_conserved(self):
        raw = O.psf_kernels(torch.tensor([-3.0, -1, 0, 1.5, 3]), O.OpticsBatch.fixed(O.Optics(), 5), size_px=P, normalise=False)
        s = raw.sum(dim=(-2, -1))
        self.assertTrue(torch.allclose(s, torch.ones_like(s), atol=1e-3), s)
        # and the blur does not change the mean of a (linear-light) image
        img = torch.rand(5, 3, 96, 96)
        out = O.convolve(img, raw / raw.sum(dim=(-2, -1), keepdim=True))
        self.assertTrue(torch.allclose(out.mean(dim=(-2, -1)), img.mean(dim=(-2, -1)), atol=1e-4))

    def test_blur_grows_with_abs_z_and_zero_is_sharpest(self):
        zs = [-3, -2, -1, -0.5, 0, 0.5, 1, 2, 3]
        k = kernels(zs, sa_waves=0.0, chroma_um=(0, 0, 0))
        pk = peak(k)
        self.assertEqual(int(pk[:, 1].argmax()), zs.index(0))
        for side in (1, -1):
            seq = [pk[zs.index(side * a), 1] for a in (0, 0.5, 1, 2, 3)]
            self.assertTrue(all(a > b for a, b in zip(seq, seq[1:])), seq)
        r = radius50(k)[:, 1]
        self.assertGreater(r[zs.index(3)], r[zs.index(1)])
        self.assertGreater(r[zs.index(1)], r[zs.index(0)] - 1e-6)
        # without aberrations a defocus of +z and -z gives the same PSF
        self.assertTrue(torch.allclose(k[zs.index(2)], k[zs.index(-2)], atol=1e-5))

    def test_non_paraxial_defocus_is_stronger_than_paraxial_at_high_na(self):
        # exact W = z(n - sqrt(n^2 - NA^2 rho^2)) exceeds the paraxial z NA^2 rho^2 / (2n): at NA 0.8 the blur disc of
        # the exact model is larger than a paraxial one would be; checked via the geometric blur radius z*tan(asin NA).
        k = kernels([3.0], sa_waves=0.0, chroma_um=(0, 0, 0))
        r = float(radius50(k)[0, 1])
        geom_px = 3.0 * 0.8 / (1 - 0.8 ** 2) ** 0.5 / 0.22  # exact marginal-ray radius (18 px)
        parax_px = 3.0 * 0.8 / 0.22  # paraxial z*NA radius (10.9 px)
        # half the energy of a uniform disc lies within R/sqrt(2)
        self.assertGreater(r, parax_px / 2 ** 0.5)
        self.assertLess(abs(r - geom_px / 2 ** 0.5), 0.25 * geom_px)

    def test_chromatic_shift_moves_each_channels_best_focus(self):
        zs = [round(-1 + 0.1 * i, 2) for i in range(21)]
        k = kernels(zs, sa_waves=0.0, chroma_um=(0.5, 0.0, -0.5))
        best = [zs[int(peak(k)[:, c].argmax())] for c in range(3)]
        self.assertAlmostEqual(best[0], 0.5, delta=0.11)
        self.assertAlmostEqual(best[1], 0.0, delta=0.11)
        self.assertAlmostEqual(best[2], -0.5, delta=0.11)

    def test_spherical_aberration_makes_plus_minus_z_differ(self):
        k = kernels([-2.0, 2.0], sa_waves=0.3, chroma_um=(0, 0, 0))
        diff = (k[0] - k[1]).abs().sum(dim=(-2, -1))
        self.assertTrue(bool((diff > 0.2).all()), diff)
        k0 = kernels([-2.0, 2.0], sa_waves=0.0, chroma_um=(0, 0, 0))
        self.assertLess(float((k0[0] - k0[1]).abs().sum(dim=(-2, -1)).max()), 1e-3)


class TestRender(unittest.TestCase):
    def test_blur_is_applied_in_linear_light(self):
        # a black/white edge: energy (linear mean) is kept, the sRGB mean is not
        crop = torch.zeros(1, 3, S.CROP, S.CROP)
        crop[..., :, S.CROP // 2:] = 1.0
        g = torch.Generator().manual_seed(0)
        ob = O.OpticsBatch.fixed(O.Optics(sa_waves=0.0, chroma_um=(0, 0, 0)), 1)
        out = S.render(crop, torch.tensor([4.0]), ob, g, S.NO_VARIATION) / 255.0
        row = out[0, 1, S.PATCH // 2]
        mid = float(row[S.PATCH // 2 - 1: S.PATCH // 2 + 1].mean())
        # linear 0.5 at the edge encodes to sRGB ~0.735; blurring sRGB values would give ~0.5
        self.assertGreater(mid, 0.66)
        self.assertLess(mid, 0.8)
        self.assertTrue(((out >= 0) & (out <= 1)).all())
        self.assertTrue(torch.equal(out * 255, torch.round(out * 255)))  # 8-bit


if __name__ == "__main__":
    unittest.main()
