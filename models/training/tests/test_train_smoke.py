"""A tiny training run lowers the loss; the generator and exporter run end to end on a synthetic source."""
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import nets  # noqa: E402
import synth as S  # noqa: E402
import train as T  # noqa: E402


def synthetic_source(seed=0, size=480):
    """Tissue-like texture (blobs + fine grain), generated: tests never read /work/shared."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.3 * torch.rand(1, 3, size, size, generator=g)
    x = (x - x.min()) / (x.max() - x.min())
    img = (torch.tensor([0.9, 0.55, 0.8]).view(1, 3, 1, 1) * (0.35 + 0.65 * x)).clamp(0, 1)
    return S.Source("synthetic", "synthetic", "none", "train", (img[0] * 255).round().to(torch.uint8))


class TestTrainSmoke(unittest.TestCase):
    def test_short_run_lowers_loss(self):
        torch.manual_seed(0)
        model = nets.build("focusnet", width=4)
        res = T.train(model, [synthetic_source()], steps=25, batch=4, lr=3e-3, device="cpu", seed=0,
                      fixed_batch=True, log_every=0)
        h = [x["loss"] for x in res["history"]]
        first, last = sum(h[:3]) / 3, sum(h[-3:]) / 3
        self.assertLess(last, 0.8 * first, h)

    def test_export_writes_bundle_with_manifest_and_sha(self):
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run([sys.executable, os.path.join(HERE, "..", "export_onnx.py"), "--random-init", "--width", "4",
                                "--out", d], capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            m = json.loads(Path(d, "manifest.json").read_text())
            import hashlib
            sha = hashlib.sha256(Path(d, "model.onnx").read_bytes()).hexdigest()
            self.assertEqual(m["sha256"], sha)
            self.assertEqual(m["input"]["name"], "input")
            self.assertEqual(m["outputs"], {"abs_um": "abs_um", "sign_logit": "sign_logit", "log_var": "log_var"})
            import onnx
            model = onnx.load(os.path.join(d, "model.onnx"))
            self.assertGreaterEqual(model.opset_import[0].version, 13)
            self.assertEqual(model.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch")


if __name__ == "__main__":
    unittest.main()


class TestBoundaryWeight(unittest.TestCase):
    def test_weight_counts_errors_in_the_band_more_and_zero_is_the_old_loss(self):
        z = torch.tensor([0.2, 1.0, -1.2, 5.0])
        # the same |d| error (0.3 µm) everywhere except a large one on the tile at 1.0 µm (in the band)
        abs_p = (z.abs() + torch.tensor([0.3, 0.9, 0.3, 0.3]))[:, None]
        out = (abs_p, torch.zeros(4, 1), torch.zeros(4, 1))
        l0, p0 = T.loss_fn(out, z)
        l_same, p_same = T.loss_fn(out, z, 0.0)
        self.assertEqual(p0["abs"], p_same["abs"])
        old = torch.nn.functional.smooth_l1_loss(abs_p, z.abs()[:, None], beta=0.5).item()
        self.assertAlmostEqual(p0["abs"], old, places=6)
        _, p4 = T.loss_fn(out, z, 4.0)
        self.assertGreater(p4["abs"], p0["abs"])  # the in-band error weighs more

    def test_cli_refuses_out_of_range_values(self):
        for bad in (["--boundary-frac", "1.5"], ["--boundary-weight=-1"]):
            r = subprocess.run([sys.executable, os.path.join(HERE, "..", "train.py"), *bad, "--out", "/nonexistent/x"],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("must be within", r.stderr)
