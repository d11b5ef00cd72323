"""Stain augmentation: physically possible stains only (non-negative OD mixing), off by default."""
import os
import sys
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import synth as S  # noqa: E402


class TestStainMatrices(unittest.TestCase):
    def test_rows_are_non_negative_mixes_that_keep_the_density_scale(self):
        m = S.stain_matrices(64, torch.Generator().manual_seed(0), S.STAIN_AUG_VARIATION)
        self.assertEqual(tuple(m.shape), (64, 3, 3))
        self.assertGreaterEqual(float(m.min()), 0.0)
        torch.testing.assert_close(m.sum(dim=2), torch.ones(64, 3))
        # the dominant source channel of each output channel is a permutation of (0, 1, 2)
        for row in m.argmax(dim=2):
            self.assertEqual(sorted(row.tolist()), [0, 1, 2])
        # with permute probability 0.5, some (not all) matrices are permuted
        permuted = sum(int(row.tolist() != [0, 1, 2]) for row in m.argmax(dim=2))
        self.assertTrue(5 < permuted < 60, permuted)

    def test_without_augmentation_the_matrix_is_the_identity(self):
        m = S.stain_matrices(4, torch.Generator().manual_seed(0), S.Variation())
        torch.testing.assert_close(m, torch.eye(3).expand(4, 3, 3))

    def test_default_training_variation_keeps_the_source_colours(self):
        self.assertEqual(S.Variation().stain_mix, 0.0)
        self.assertEqual(S.Variation().stain_permute, 0.0)


if __name__ == "__main__":
    unittest.main()


class TestBoundarySampling(unittest.TestCase):
    """--boundary-frac: a share of z where the daemon's in/out verdict is decided, the rest as before."""

    def test_without_it_the_draws_are_those_of_the_0_2_generator(self):
        a = S.sample_z(4096, torch.Generator().manual_seed(5), 8.0)
        b = S.sample_z(4096, torch.Generator().manual_seed(5), 8.0, boundary_frac=0.0)
        self.assertTrue(torch.equal(a, b))

    def test_the_share_lands_in_the_band_with_both_signs(self):
        lo, hi = S.BOUNDARY_UM
        z = S.sample_z(20000, torch.Generator().manual_seed(5), 8.0, boundary_frac=0.5)
        base = S.sample_z(20000, torch.Generator().manual_seed(5), 8.0)
        inband = ((z.abs() >= lo) & (z.abs() <= hi)).float().mean().item()
        inband0 = ((base.abs() >= lo) & (base.abs() <= hi)).float().mean().item()
        # half the draws in the band plus the band's share of the other half
        self.assertAlmostEqual(inband, 0.5 + 0.5 * inband0, delta=0.02)
        band = z[(z.abs() >= lo) & (z.abs() <= hi)]
        self.assertAlmostEqual((band > 0).float().mean().item(), 0.5, delta=0.03)
        self.assertLessEqual(z.abs().max().item(), 8.0)
