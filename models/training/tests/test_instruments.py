"""Model 0.3 (issue 13): instrument variants, training over instruments, and the fast CPU generator.

PSF asymmetries per variant: which channel blurs more on which side of focus (axial colour), and on which side the
green PSF keeps a brighter core (spherical aberration)."""
import math
import os
import sys
import unittest

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import instruments as I  # noqa: E402
import optics as O  # noqa: E402
import psf_bank as PB  # noqa: E402
import synth as S  # noqa: E402

P = 64  # |z| = 2 µm fits in 64 px at NA <= 0.77, 0.235 µm/px
Z = 2.0


def r50(k):
    """radius (px) holding half the energy, [..., 3]."""
    yy, xx = torch.meshgrid(torch.arange(P) - P // 2, torch.arange(P) - P // 2, indexing="ij")
    r = (yy ** 2 + xx ** 2).float().sqrt().flatten()
    order = torch.argsort(r)
    kk = k.flatten(-2)[..., order].cumsum(-1)
    return r[order][(kk < 0.5).sum(-1).clamp(max=len(r) - 1)]


def cues(o: O.Optics):
    """(colour cue, SA cue) of one optics.
    colour: (r50_B - r50_R) above focus minus the same below: > 0 when blue blurs more than red above focus (z > 0)
            and red more than blue below (the training convention: R focuses behind, B in front).
    sa:     log(peak_G(+z) / peak_G(-z)): > 0 when the green PSF keeps the brighter core above focus (SA > 0)."""
    k = O.psf_kernels(torch.tensor([Z, -Z], dtype=torch.float64), O.OpticsBatch.fixed(o, 2), P, 3, fast=True)
    r = r50(k)
    colour = float((r[0, 2] - r[0, 0]) - (r[1, 2] - r[1, 0]))
    pk = k.amax(dim=(-2, -1))
    return colour, math.log(float(pk[0, 1] / pk[1, 1]))


class TestVariantAsymmetries(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cues = {name: cues(o) for name, o in {**I.VARIANTS, **I.EXTRA_VARIANTS}.items()}

    def test_every_variant_has_the_cues_it_claims(self):
        self.assertEqual(set(I.VARIANTS), {"matching", "mirrored", "sa_reversed", "colour_reversed", "no_colour", "strong_sa", "lower_na"})
        for name, (colour, sa) in self.cues.items():
            want = I.CUES[name]
            with self.subTest(variant=name, colour=colour, sa=sa):
                if want["colour"] == 0:
                    self.assertLess(abs(colour), 0.6)  # a fraction of a pixel: wavelength only, no focus shift
                else:
                    self.assertGreater(want["colour"] * colour, 2.0)  # px of r50 difference, ~2.9 px here
                if want["sa"] == 0:
                    self.assertLess(abs(sa), 0.05)  # above- and below-focus PSFs alike
                else:
                    self.assertGreater(want["sa"] * sa, 0.3)

    def test_which_channel_blurs_more_on_which_side(self):
        # matching: above focus (z > 0) blue is the blurrier channel, below focus red; colour_reversed: the opposite
        for name, above, below in (("matching", 2, 0), ("colour_reversed", 0, 2), ("sa_reversed", 2, 0), ("mirrored", 0, 2)):
            k = O.psf_kernels(torch.tensor([Z, -Z], dtype=torch.float64), O.OpticsBatch.fixed(I.VARIANTS[name], 2), P, 3, fast=True)
            r = r50(k)
            with self.subTest(variant=name):
                self.assertEqual(int(r[0, [0, 2]].argmax()), 0 if above == 0 else 1)
                self.assertEqual(int(r[1, [0, 2]].argmax()), 0 if below == 0 else 1)

    def test_mirrored_instrument_is_the_matching_one_at_minus_z(self):
        # PSF(z, SA, colour) == PSF(-z, -SA, -colour) exactly (the pupil phase changes sign: the intensity PSF is its
        # point reflection, and a circular pupil's PSF is point-symmetric). Hence no image can tell the sign of z if
        # both asymmetries' signs are unknown: the 0.3 training fixes the colour's sign (optics.INSTRUMENT_RANGES).
        zs = torch.tensor([-3.0, -1.0, 0.5, 2.0], dtype=torch.float64)
        a = O.psf_kernels(zs, O.OpticsBatch.fixed(I.VARIANTS["matching"], 4), P)
        b = O.psf_kernels(-zs, O.OpticsBatch.fixed(I.VARIANTS["mirrored"], 4), P)
        self.assertLess(float((a - b).abs().max()), 1e-6 * float(a.max()))


class TestInstrumentRanges(unittest.TestCase):
    def test_training_over_instruments_draws_both_sa_signs_and_near_zero_colour(self):
        ob = O.OpticsBatch.sample(O.INSTRUMENT_RANGES, 4000, torch.Generator().manual_seed(0))
        neg = float((ob.sa < 0).double().mean())
        self.assertAlmostEqual(neg, 0.5, delta=0.04)
        self.assertLessEqual(float(ob.sa.abs().max()), 0.4)
        # the colour keeps the convention's sign (R behind, B in front), with ~20 % near zero (apochromats)
        self.assertTrue(bool((ob.chroma[:, 0] >= 0).all() and (ob.chroma[:, 2] <= 0).all()))
        near = float(((ob.chroma[:, 0] < 0.08) & (ob.chroma[:, 2] > -0.08)).double().mean())
        self.assertGreater(near, 0.15)
        self.assertLess(near, 0.3)
        self.assertTrue(0.6 <= float(ob.na.min()) and float(ob.na.max()) <= 0.85)

    def test_old_ranges_keep_their_random_stream(self):
        # the 0.1/0.2 ranges draw exactly what they drew before the sign/near-zero fields existed
        g = torch.Generator().manual_seed(3)
        ob = O.OpticsBatch.sample(O.OpticsRanges(), 8, g)
        g2 = torch.Generator().manual_seed(3)
        u = lambda lo, hi: lo + (hi - lo) * torch.rand(8, generator=g2, dtype=torch.float64)
        torch.testing.assert_close(ob.na, u(0.75, 0.85))
        self.assertTrue(bool((ob.sa >= 0).all()))


class TestFastGenerator(unittest.TestCase):
    def test_complex64_psf_matches_complex128(self):
        ob = O.OpticsBatch.fixed(I.VARIANTS["strong_sa"], 3)
        zs = torch.tensor([-7.5, 0.3, 4.0])
        a = O.psf_kernels(zs, ob, 128)
        b = O.psf_kernels(zs, ob, 128, fast=True)
        self.assertLess(float((a - b).abs().max()), 1e-4 * float(a.max()))

    def test_bank_is_exact_on_the_grid_and_close_between(self):
        ob1 = O.OpticsBatch.fixed(I.VARIANTS["matching"], 1)
        bank = PB.PsfBank.__new__(PB.PsfBank)
        zg = PB.default_z_grid()
        self.assertLessEqual(float((zg[1:] - zg[:-1]).max()), 0.5 + 1e-9)
        self.assertLessEqual(float((zg[1:] - zg[:-1])[(zg[1:].abs() <= 4.0) & (zg[:-1].abs() <= 4.0)].max()), 0.2 + 1e-9)
        bank.zg = zg[(zg == -8.0) | (zg == -7.5) | (zg == 0.4) | (zg == 0.6) | (zg == 3.0) | (zg == 3.2)]  # fast subset
        bank.draws = [(ob1, PB.grid_kernels(ob1, bank.zg))]
        zs = torch.tensor([-8.0, 3.2, -7.75, 0.5, 3.1], dtype=torch.float64)
        ex = O.psf_kernels(zs, ob1.take(torch.zeros(5, dtype=torch.long)), S.KERNEL)
        ip = bank.kernels(zs, torch.zeros(5, dtype=torch.long))
        l1 = (ex - ip).abs().sum(dim=(-2, -1)).amax(1)
        self.assertLess(float(l1[:2].max()), 1e-4)  # on the grid, 128 px kernels: the exact PSF
        self.assertLess(float(l1[2:].max()), 0.1)  # between grid points / 96 px kernels near focus: a few % L1

    def test_fast_render_equals_exact_render_but_for_rare_one_code_steps(self):
        g = torch.Generator().manual_seed(0)
        crop = torch.rand(2, 3, S.CROP, S.CROP, generator=g) * 0.8 + 0.1
        ob = O.OpticsBatch.fixed(I.VARIANTS["matching"], 2)
        z = torch.tensor([1.0, -2.0])
        k = O.psf_kernels(z, ob, S.KERNEL)
        torch.manual_seed(2)  # render's read noise draws from torch's global generator
        a = S.render(crop, z, ob, torch.Generator().manual_seed(1), S.Variation(), kernels=k)
        od = -torch.log(O.srgb_to_linear(crop).clamp_min(1e-3))
        torch.manual_seed(2)
        b = S.render_od(od, z, ob, torch.Generator().manual_seed(1), S.Variation(), kernels=k, fast=True)
        d = (a - b).abs()
        self.assertLessEqual(float(d.max()), 1.0)
        self.assertLess(float((d > 0).double().mean()), 1e-3)

    def test_convolve_places_the_kernel_centre_at_the_origin(self):
        img = torch.zeros(1, 3, 40, 40)
        img[..., 20, 20] = 1.0
        k = torch.rand(1, 3, 8, 8)
        out = O.convolve(img, k)
        torch.testing.assert_close(out[..., 16:24, 16:24], k, atol=1e-5, rtol=1e-4)

    def test_bank_batch_over_instruments(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_train_smoke import synthetic_source
        g = torch.Generator().manual_seed(0)
        bank = PB.PsfBank.__new__(PB.PsfBank)
        bank.zg = torch.tensor([-8.5, -2.0, 0.0, 2.0, 8.5], dtype=torch.float64)
        bank.draws = [(ob, PB.grid_kernels(ob, bank.zg)) for ob in
                      (O.OpticsBatch.sample(O.INSTRUMENT_RANGES, 1, g) for _ in range(2))]
        bank.n_draws, bank.refresh_every, bank.batches = 2, 0, 0
        x8, z, ob = PB.bank_batch(bank, S.with_od([synthetic_source()]), 3, g, 8.0, S.INSTRUMENT_VARIATION, sparse_frac=0.5, patch_px=128)
        self.assertEqual(tuple(x8.shape), (3, 3, 128, 128))
        self.assertTrue(torch.equal(x8, x8.round()) and float(x8.min()) >= 0 and float(x8.max()) <= 255)
        self.assertEqual(tuple(ob.chroma.shape), (3, 3))


if __name__ == "__main__":
    unittest.main()
