"""interpolate.py: weight-space interpolation of two checkpoints of one network (WiSE-FT)."""
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import interpolate as W  # noqa: E402
import nets  # noqa: E402


def checkpoint(seed, width=4):
    torch.manual_seed(seed)
    m = nets.build("focusnet", width=width, depth=1)
    for mod in m.modules():  # running statistics that differ between the two ends
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.num_batches_tracked.fill_(seed)
    return {"arch": "focusnet", "kw": {"width": width, "depth": 1}, "state_dict": m.state_dict(), "args": {"seed": seed},
            "steps": seed, "patches": 10 * seed, "lineage": []}


class TestInterpolate(unittest.TestCase):
    def test_the_ends_are_the_checkpoints_and_the_middle_is_the_mean(self):
        a, b = checkpoint(1), checkpoint(2)
        for alpha, want in ((0.0, a), (1.0, b)):
            got = W.interpolate(a, b, alpha, ("a", "b"))["state_dict"]
            for k, t in got.items():
                if t.is_floating_point():
                    self.assertTrue(torch.allclose(t, want["state_dict"][k]), k)
        mid = W.interpolate(a, b, 0.5, ("a", "b"))
        k = "stem.0.weight" if "stem.0.weight" in mid["state_dict"] else next(iter(mid["state_dict"]))
        self.assertTrue(torch.allclose(mid["state_dict"][k], (a["state_dict"][k] + b["state_dict"][k]) / 2))
        ints = [k for k, t in mid["state_dict"].items() if not t.is_floating_point()]
        self.assertTrue(ints)
        for k in ints:  # counters are not averaged
            self.assertTrue(torch.equal(mid["state_dict"][k], b["state_dict"][k]))
        self.assertEqual(mid["interpolation"]["alpha"], 0.5)
        self.assertEqual(len(mid["lineage"]), 1)  # b's lineage plus b

    def test_the_interpolated_network_runs_and_alpha_zero_answers_as_a(self):
        a, b = checkpoint(1), checkpoint(2)
        x = torch.rand(2, 3, 64, 64)

        def run(ck):
            m = nets.build(ck["arch"], **ck["kw"])
            m.load_state_dict(ck["state_dict"])
            return m.eval()(x)[0]

        with torch.no_grad():
            self.assertTrue(torch.allclose(run(W.interpolate(a, b, 0.0, ("a", "b"))), run(a)))
            mid = run(W.interpolate(a, b, 0.5, ("a", "b")))
            self.assertTrue(torch.isfinite(mid).all())

    def test_different_networks_and_bad_alphas_are_refused(self):
        with self.assertRaises(ValueError):
            W.interpolate(checkpoint(1, width=4), checkpoint(2, width=8), 0.5, ("a", "b"))
        with self.assertRaises(ValueError):
            W.interpolate(checkpoint(1), checkpoint(2), 1.5, ("a", "b"))
        with tempfile.TemporaryDirectory() as d:
            for name, ck in (("a.pt", checkpoint(1)), ("b.pt", checkpoint(2))):
                torch.save(ck, Path(d) / name)
            r = subprocess.run([sys.executable, os.path.join(HERE, "..", "interpolate.py"), "--a", f"{d}/a.pt", "--b", f"{d}/b.pt",
                                "--alpha", "-0.5", "--out", f"{d}/w.pt"], capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("not within 0..1", r.stderr)
            self.assertFalse((Path(d) / "w.pt").exists())
            ok = subprocess.run([sys.executable, os.path.join(HERE, "..", "interpolate.py"), "--a", f"{d}/a.pt", "--b", f"{d}/b.pt",
                                 "--alpha", "0.25", "--out", f"{d}/w.pt"], capture_output=True, text=True)
            self.assertEqual(ok.returncode, 0, ok.stderr)
            self.assertEqual(nets.load_file(Path(d) / "w.pt")["interpolation"]["alpha"], 0.25)


if __name__ == "__main__":
    unittest.main()
