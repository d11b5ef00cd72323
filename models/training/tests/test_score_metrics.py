"""score_metrics.py: the model card's daemon-path numbers from `focusd score` JSON lines."""
import json
import os
import sys
import tempfile
import unittest
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import score_metrics as M  # noqa: E402


def row(name, d, verdict, conf):
    return {"file": f"/x/{name}", "defocus_um": d, "verdict": verdict, "sign_confidence": conf}


class TestScoreMetrics(unittest.TestCase):
    def setUp(self):
        # z: 0 (in), +1 (in, at the tolerance), -3 (out), +4 (out), glass, rim
        self.truth = [{"file": f, "z": z, "source": s, "stain": "x"} for f, z, s in (
            ("a.png", 0.0, "src"), ("b.png", 1.0, "src"), ("c.png", -3.0, "src"), ("d.png", 4.0, "src"),
            ("g.png", float("nan"), "glass"), ("r.png", float("nan"), "rim"))]

    def test_verdict_errors_are_counted_by_kind(self):
        scored = {r["file"].split("/")[-1]: r for r in (
            row("a.png", 0.2, "in_focus", 0.9), row("b.png", 1.3, "out_of_focus", 0.9),  # needless re-acquisition
            row("c.png", 0.8, "in_focus", 0.9),  # missed (and wrong sign)
            row("d.png", 4.1, "out_of_focus", 0.95), row("g.png", None, "no_tissue", None), row("r.png", 0.3, "in_focus", 0.6))}
        m = M.scorer_metrics(self.truth, scored)
        self.assertEqual(m["false_out_of_focus"], 1)
        self.assertEqual(m["missed_out_of_focus"], 1)
        self.assertAlmostEqual(m["verdict_acc"], 0.5)
        self.assertAlmostEqual(m["verdict_acc_away_from_tolerance"], 2 / 3, places=3)
        self.assertEqual(m["glass_no_tissue_rate"], 1.0)
        self.assertEqual(m["rim_no_tissue_rate"], 0.0)
        self.assertTrue(m["has_sign"])
        self.assertAlmostEqual(m["sign_acc_abs_z_ge_1"], 2 / 3, places=3)
        # b, c, d have |z| >= 1, all with confidence >= 0.8: c's wrong sign would move the stage the wrong way
        self.assertEqual(m["sign_confident_share_abs_z_ge_1"], 1.0)
        self.assertEqual(m["wrong_sign_confident"], 1)

    def test_a_scorer_without_a_sign_has_no_sign_accuracy(self):
        scored = {r["file"].split("/")[-1]: r for r in (
            row("a.png", 0.2, "in_focus", 0.5), row("b.png", 0.9, "in_focus", 0.5), row("c.png", 3.1, "out_of_focus", 0.5),
            row("d.png", 3.8, "out_of_focus", 0.5), row("g.png", None, "no_tissue", None), row("r.png", None, "no_tissue", None))}
        m = M.scorer_metrics(self.truth, scored)
        self.assertFalse(m["has_sign"])
        self.assertIsNone(m["sign_acc_abs_z_ge_1"])
        self.assertEqual(m["verdict_acc"], 1.0)

    def test_a_tile_without_a_score_is_an_error_not_a_gap(self):
        with self.assertRaises(SystemExit):
            M.scorer_metrics(self.truth, {"a.png": row("a.png", 0.1, "in_focus", 0.9)})

    def test_cli_reads_the_manifest_and_json_lines(self):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "manifest.csv").write_text("file,z_um,source,stain\na.png,0.0,src,x\nc.png,-3.0,src,x\n")
            Path(d, "s.jsonl").write_text("\n".join(json.dumps(r) for r in (
                row("a.png", 0.1, "in_focus", 0.8), row("c.png", -2.9, "out_of_focus", 0.9))) + "\n")
            out = Path(d, "m.json")
            M.main(["--tiles", d, "--scored", f"cnn={d}/s.jsonl", "--out", str(out)])
            res = json.loads(out.read_text())
            self.assertEqual(res["cnn"]["verdict_acc"], 1.0)
            self.assertEqual(res["cnn"]["n_tiles"], 2)


if __name__ == "__main__":
    unittest.main()
