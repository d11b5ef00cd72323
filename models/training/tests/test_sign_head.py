"""sign_head.py: the cue-absent labels, the head trained on a tiny synthetic feature set (reads the colour cue, ignores
the SA nuisance, says ~0.5 where there is no cue), the temperature fit, and the network whose magnitude is untouched."""
import math
import os
import sys
import unittest

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import nets  # noqa: E402
import sign_head as H  # noqa: E402


def synthetic_features(n, seed):
    """Features of patches at z with SA of random sign and axial colour dc (0 in a quarter of them): feature 0 carries
    sign(z) * dc (the colour cue), feature 1 sign(z) * sign(SA) (the nuisance 0.2.0 learnt to use), 2-3 noise."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(n, generator=g) * 2 - 1) * 6
    sa = torch.where(torch.rand(n, generator=g) < 0.5, -0.2, 0.2)
    dc = torch.where(torch.rand(n, generator=g) < 0.25, torch.zeros(n), 0.3 + 0.4 * torch.rand(n, generator=g))
    chroma = torch.stack([dc / 2, torch.zeros(n), -dc / 2], 1)
    s = torch.sign(z)
    x = torch.stack([s * dc * 3, s * torch.sign(sa), torch.zeros(n), torch.zeros(n)], 1) + 0.5 * torch.randn(n, 4, generator=g)
    return x, z, sa, chroma


class TestSignHead(unittest.TestCase):
    def test_cue_absent_target(self):
        z = torch.tensor([2.0, -2.0, 2.0, -2.0, 2.0, -3.0])
        dc = torch.tensor([0.6, 0.6, 0.0, 0.0, 0.2, 0.2])  # chroma_R - chroma_B
        chroma = torch.stack([dc / 2, torch.zeros(6), -dc / 2], 1)
        t = H.cue_absent_target(z, chroma, lo=0.1, hi=0.3)
        self.assertEqual(t[:4].tolist(), [1.0, 0.0, 0.5, 0.5])
        self.assertAlmostEqual(float(t[4]), 0.75, places=5)  # halfway up the ramp
        self.assertAlmostEqual(float(t[5]), 0.25, places=5)
        self.assertEqual(H.near_focus_weight(torch.tensor([0.0, 0.25, -0.5, 3.0])).tolist(), [0.0, 0.5, 1.0, 1.0])

    def test_head_reads_the_colour_not_the_sa_and_abstains_without_colour(self):
        x, z, sa, chroma = synthetic_features(3000, 0)
        head = H.fit_head(x, H.cue_absent_target(z, chroma), H.near_focus_weight(z), hidden=8, epochs=15, seed=0)
        xt, zt, sat, ct = synthetic_features(2000, 1)
        with torch.no_grad():
            p = torch.sigmoid(head(xt)[:, 0])
        cue = (ct[:, 0] - ct[:, 2]) > 0.2
        far = zt.abs() >= 1
        for sgn in (1, -1):  # right on both signs of the nuisance
            m = cue & far & (torch.sign(sat) == sgn)
            self.assertGreater(float(((p[m] > 0.5) == (zt[m] > 0)).float().mean()), 0.95)
        conf_no_cue = torch.maximum(p, 1 - p)[~cue & far]
        self.assertLess(float(conf_no_cue.mean()), 0.65)  # near 0.5 where only the nuisance is left

    def test_temperature_fit_recovers_a_known_scale(self):
        g = torch.Generator().manual_seed(3)
        true_logit = torch.randn(4000, generator=g) * 2
        y = (torch.rand(4000, generator=g) < torch.sigmoid(true_logit)).float()
        s = H.fit_temperature(true_logit * 4, y, torch.ones(4000))  # over-confident by 4x
        self.assertAlmostEqual(s, 0.25, delta=0.03)

    def test_sign_branch_network_keeps_the_magnitude_bit_for_bit(self):
        torch.manual_seed(0)
        base = nets.build("focusnet", width=4, depth=2).eval()
        sb = {"features": "stages", "hidden": 4, "d_in": 2 * (4 + 4 + 4 + 8 + 8 + 16 + 16 + 24 + 24 + 32 + 32)}
        net = nets.build("focusnet", width=4, depth=2, sign_branch=sb).eval()
        net.base.load_state_dict(base.state_dict())
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            a0, s0, v0 = base(x)
            a1, s1, v1 = net(x)
            f = H.encoder_features(base, x)
        self.assertTrue(torch.equal(a0, a1) and torch.equal(v0, v1))
        self.assertEqual(f["stages"].shape[1], sb["d_in"])
        self.assertTrue(torch.allclose(f["logit"], s0[:, 0]))
        self.assertTrue(torch.allclose(net.branch(f["stages"]), s1))
        self.assertIn("sign branch", nets.describe("focusnet", width=4, depth=2, sign_branch=sb))


if __name__ == "__main__":
    unittest.main()
