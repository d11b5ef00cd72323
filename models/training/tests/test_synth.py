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
