"""mag_head.py: the network whose sign is untouched, the head fitted on a tiny synthetic feature set (learns |z| from
a feature that carries it), and the report's blind / false-alarm shares."""
import os
import sys
import unittest

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nets  # noqa: E402
import mag_head as M  # noqa: E402
import sign_head as H  # noqa: E402


class TestMagHead(unittest.TestCase):
    def test_magnitude_branch_network_keeps_the_sign_bit_for_bit(self):
        torch.manual_seed(0)
        base = nets.build("focusnet", width=4, depth=2).eval()
        mb = {"hidden": 4, "d_in": 2 * (4 + 4 + 4 + 8 + 8 + 16 + 16 + 24 + 24 + 32 + 32)}
        net = nets.build("focusnet", width=4, depth=2, mag_branch=mb).eval()
        net.base.load_state_dict(base.state_dict())
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            _a0, s0, _v0 = base(x)
            a1, s1, v1 = net(x)
            f = H.encoder_features(base, x)
            a2, v2 = net.branch(f["stages"])
        self.assertTrue(torch.equal(s0, s1))
        self.assertTrue(torch.allclose(a1, a2) and torch.allclose(v1, v2))
        self.assertTrue(bool((a1 >= 0).all()))
        self.assertIn("magnitude branch", nets.describe("focusnet", width=4, depth=2, mag_branch=mb))

    def test_head_learns_the_magnitude_from_the_feature_that_carries_it(self):
        g = torch.Generator().manual_seed(1)
        n = 3000
        z = (torch.rand(n, generator=g) * 2 - 1) * 6
        # feature 0 ~ |z| whatever the sign (what blur does), feature 1 ~ sign(z) (useless for |z|), 2-3 noise
        x = torch.stack([z.abs(), torch.sign(z), torch.zeros(n), torch.zeros(n)], 1) + 0.2 * torch.randn(n, 4, generator=g)
        head, fit = M.fit_mag(x[:2500], z[:2500], hidden=8, epochs=40, val=(x[2500:], z[2500:]))
        with torch.no_grad():
            a, _v = head(x[2500:])
        self.assertLess(float((a[:, 0] - z[2500:].abs()).abs().mean()), 0.3)
        self.assertGreaterEqual(fit["best_epoch"], 0)

    def test_report_counts_blind_and_false_alarm_patches(self):
        z = torch.tensor([0.2, -0.3, 2.0, -3.0, 4.0, 1.0])
        feats = {"z": z, "sa": torch.tensor([0.2, -0.2, 0.2, -0.2, 0.0, 0.2]), "chroma": torch.tensor([[0.3, 0, -0.3]] * 6)}
        pred = torch.tensor([1.5, 0.1, 0.5, 3.1, 3.9, 1.0])  # one false alarm (0.2 read 1.5), one blind (2.0 read 0.5)
        r = M.mag_report(pred, feats, torch.ones(6, dtype=torch.bool))
        self.assertAlmostEqual(r["all"]["false_alarm"], 0.5)  # 1 of the 2 patches with |z| <= 0.5
        self.assertAlmostEqual(r["all"]["blind"], 1 / 3)  # 1 of the 3 patches with 1.5 <= |z| <= 5
        self.assertEqual(r["sa-"]["n"], 2)


if __name__ == "__main__":
    unittest.main()
