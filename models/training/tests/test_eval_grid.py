"""eval_grid.py: the metrics (ECE, sign accuracy at confidence >= 0.8, the calibrate emulation, the per-variant table)
on small fixed inputs."""
import os
import sys
import unittest

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import eval_grid as G  # noqa: E402


class TestSignMetrics(unittest.TestCase):
    def test_ece_of_a_calibrated_and_an_overconfident_predictor(self):
        # 10 patches at confidence 0.9 of which 9 right: calibrated (ECE 0); at 0.99 with 9 right: ECE 0.09
        z = np.array([2.0] * 10)
        p = np.array([0.9] * 9 + [0.1])
        e, rows = G.ece(p, z)
        self.assertAlmostEqual(e, 0.0, places=9)
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0]["n"], 10)
        self.assertAlmostEqual(rows[0]["accuracy"], 0.9)
        e2, _ = G.ece(np.array([0.99] * 9 + [0.01]), z)
        self.assertAlmostEqual(e2, 0.09, places=9)
        # confidence is max(p, 1-p): p = 0.2 at z < 0 is a right sign at confidence 0.8
        e3, rows3 = G.ece(np.array([0.2, 0.2]), np.array([-1.0, -3.0]))
        self.assertAlmostEqual(e3, 0.2, places=9)
        self.assertAlmostEqual(rows3[0]["confidence"], 0.8)

    def test_ece_ignores_the_focal_zone_and_weights_bins_by_count(self):
        z = np.array([0.0, 0.25, 1.0, 1.0, 1.0, -2.0])
        p = np.array([0.99, 0.99, 0.55, 0.55, 0.55, 0.05])  # the first two (|z| < 0.5) do not count
        e, rows = G.ece(p, z)
        # bin [0.5,0.55]: n 3, conf 0.55, acc 1 -> 0.45; bin [0.95,1]: n 1, conf 0.95, acc 1 -> 0.05
        self.assertAlmostEqual(e, (3 * 0.45 + 1 * 0.05) / 4, places=9)
        self.assertEqual([r["n"] for r in rows], [3, 1])

    def test_sign_accuracy_at_confidence_0_8(self):
        z = np.array([1.0, 2.0, -3.0, -4.0, 5.0, 0.5, 7.0])
        p = np.array([0.9, 0.1, 0.05, 0.6, 0.85, 0.99, 0.99])  # 0.5 and 7.0 are outside 1 <= |z| <= 6
        share, acc = G.sign_at_confidence(p, z)
        self.assertAlmostEqual(share, 4 / 5)
        self.assertAlmostEqual(acc, 3 / 4)
        self.assertEqual(G.sign_at_confidence(np.full(3, 0.5), np.array([1.0, -2, 3])), (0.0, None))

    def test_grid_metrics_of_a_perfect_and_an_inverted_predictor(self):
        z = np.round(np.arange(-6, 6.01, 0.5), 3)
        m = G.grid_metrics(z, z, np.abs(z), np.where(z > 0, 0.999, 0.001))
        self.assertAlmostEqual(m["mae_signed"], 0.0)
        self.assertAlmostEqual(m["r2"], 1.0)
        self.assertAlmostEqual(m["slope"], 1.0)
        self.assertAlmostEqual(m["sign_acc"], 1.0)
        self.assertAlmostEqual(m["conf80_acc"], 1.0)
        self.assertLess(m["ece"], 0.002)
        inv = G.grid_metrics(z, -z, np.abs(z), np.where(z > 0, 0.001, 0.999))
        self.assertAlmostEqual(inv["sign_acc"], 0.0)
        self.assertAlmostEqual(inv["slope"], -1.0)
        self.assertAlmostEqual(inv["abs_mae"], 0.0)  # the magnitude is still right
        self.assertGreater(inv["ece"], 0.99)
        self.assertAlmostEqual(m["conf80_wrong"], 0.0)
        self.assertAlmostEqual(inv["conf80_wrong"], 1.0)  # every 1 <= |z| <= 6 patch confident and wrong

    def test_comparison_table_has_a_row_per_variant_and_when(self):
        z = np.round(np.arange(-6, 6.01, 0.5), 3)
        good = G.grid_metrics(z, z, np.abs(z), np.where(z > 0, 0.999, 0.001))
        bad = G.grid_metrics(z, -z, np.abs(z), np.where(z > 0, 0.001, 0.999))
        cal = [{"sign": "model"}, {"sign": "inverted"}]
        grid = lambda m: {"variants": {"matching": {"before": m, "after": m, "after_true_focus": m, "calibrations": cal,
                                                    "calibrations_true_focus": cal}}}
        md = G.compare_markdown(grid(bad), grid(good), "old", "new")
        self.assertEqual(md.count("| matching |"), 3)
        self.assertIn("0.0 → 100.0 %", md)  # sign accuracy old → new
        self.assertIn("100.0 → 0.0 %", md)  # confident and wrong
        self.assertIn("MI → MI", md)


class TestBoundary(unittest.TestCase):
    """|d| at the tolerance: what the closed loop needs from a model (docs/simulator.md, the oracle)."""

    def test_an_under_read_near_the_tolerance_is_a_negative_bias_and_missed_tiles(self):
        z = np.round(np.arange(-6, 6.01, 0.5), 3)
        exact = G.boundary_metrics(z, np.abs(z))
        self.assertAlmostEqual(exact["bias"], 0.0)
        self.assertAlmostEqual(exact["sd"], 0.0)
        self.assertEqual(exact["read_in_beyond"], 0.0)
        self.assertEqual(exact["read_out_within"], 0.0)
        self.assertEqual(exact["n"], 6)  # ±0.5, ±1.0, ±1.5
        under = G.boundary_metrics(z, 0.6 * np.abs(z))  # 1.5 µm read 0.9: in focus
        self.assertAlmostEqual(under["bias_by_abs_z"]["1.5"], -0.6)
        self.assertAlmostEqual(under["bias"], np.mean([-0.2, -0.4, -0.6]))
        self.assertEqual(under["read_in_beyond"], 1.0)
        over = G.boundary_metrics(z, np.abs(z) + 0.6)  # 0.5 µm read 1.1: retaken for nothing
        self.assertEqual(over["read_out_within"], 1.0)
        self.assertEqual(over["read_in_beyond"], 0.0)
        self.assertIsNone(G.boundary_metrics(np.array([3.0, -4.0]), np.array([3.0, 4.0])))

    def test_grid_metrics_carry_it_and_the_tables_show_it(self):
        z = np.round(np.arange(-6, 6.01, 0.5), 3)
        good = G.grid_metrics(z, z, np.abs(z), np.where(z > 0, 0.999, 0.001))
        under = G.grid_metrics(z, 0.6 * z, 0.6 * np.abs(z), np.where(z > 0, 0.999, 0.001))
        self.assertEqual(good["boundary"]["read_in_beyond"], 0.0)
        cal = [{"sign": "model"}]
        grid = lambda m: {"variants": {"none": {"before": m, "after": m, "after_true_focus": m, "calibrations": cal,
                                                "calibrations_true_focus": cal}}}
        self.assertIn("-0.40 ± 0.16 / 100 % / 0 % → +0.00 ± 0.00 / 0 % / 0 %", G.compare_markdown(grid(under), grid(good), "a", "b"))
        md = G.markdown(grid(under))
        self.assertIn("| none | -0.40 ± 0.16 / 100 % / 0 % | -0.40 ± 0.16 / 100 % / 0 % | -0.40 ± 0.16 / 100 % / 0 % |", md)
        old = {**under}
        old.pop("boundary")  # a grid written before the metric existed still renders
        self.assertIn("| none | — |", G.markdown(grid(old)))


class TestMerge(unittest.TestCase):
    """Grid runs split by --variants over processes come back as one grid, paired runs checkpoint by checkpoint."""

    def grid(self, names, bias):
        z = np.round(np.arange(-6, 6.01, 0.5), 3)
        m = G.grid_metrics(z, z, np.abs(z) + bias, np.where(z > 0, 0.999, 0.001))
        cal = [{"sign": "model"}]
        return {"seconds": 10.0, "variants": {n: {"before": m, "after": m, "after_true_focus": m, "calibrations": cal,
                                                  "calibrations_true_focus": cal} for n in names}}

    def test_paired_parts_merge_per_checkpoint_in_the_variants_order(self):
        a = {"checkpoints": {"base.pt": self.grid(["no_colour"], -0.3), "new.pt": self.grid(["no_colour"], 0.0)}, "paired": True}
        b = {"checkpoints": {"base.pt": self.grid(["matching"], -0.3), "new.pt": self.grid(["matching"], 0.0)}, "paired": True}
        res = G.merge_grids([a, b], ["a.json", "b.json"])
        self.assertTrue(res["paired"])
        self.assertEqual(list(res["checkpoints"]["new.pt"]["variants"]), ["matching", "no_colour"])
        self.assertEqual(res["checkpoints"]["base.pt"]["seconds"], 20.0)
        md = G.grids_markdown(res)
        self.assertIn("## base.pt vs new.pt", md)
        self.assertEqual(md.count("-0.30 ± 0.00 / 0 % / 0 % → +0.00 ± 0.00 / 0 % / 0 %"), 6)  # 2 variants × 3 tables

    def test_parts_that_do_not_belong_together_are_refused(self):
        single = self.grid(["no_colour"], 0.0)
        paired = {"checkpoints": {"x.pt": self.grid(["matching"], 0.0)}, "paired": True}
        other = {"checkpoints": {"y.pt": self.grid(["mirrored"], 0.0)}, "paired": True}
        with self.assertRaises(SystemExit):
            G.merge_grids([single, paired], ["a", "b"])
        with self.assertRaises(SystemExit):
            G.merge_grids([paired, other], ["a", "b"])
        self.assertEqual(list(G.merge_grids([single, self.grid(["mirrored"], 0.0)], ["a", "b"])["variants"]), ["mirrored", "no_colour"])


class TestImages(unittest.TestCase):
    """--images: the held-out images (the grid's test data) or the training images held back for calibration."""

    def fake_root(self, d):
        from pathlib import Path
        from PIL import Image
        import synth as S
        for rel, *_ in S.SOURCES:
            p = Path(d) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (200, 150, 180)).save(p)
        return Path(d)

    def test_heldout_and_calibration_images_are_disjoint_and_named(self):
        import tempfile
        import synth as S
        from sign_head import CALIBRATION_IMAGES
        with tempfile.TemporaryDirectory() as d:
            root = self.fake_root(d)
            held = G.grid_images(root, "heldout")
            cal = G.grid_images(root, "calibration")
        self.assertEqual(sorted(s.path for s in cal), sorted(CALIBRATION_IMAGES))
        self.assertTrue(all(s.split == "train" for s in cal))
        self.assertTrue(all(s.split in G.HELD_OUT for s in held))
        self.assertEqual(len(held), sum(1 for *_, split in S.SOURCES if split in G.HELD_OUT))
        self.assertFalse({s.path for s in held} & {s.path for s in cal})

    def test_a_missing_calibration_image_is_refused(self):
        import tempfile
        from sign_head import CALIBRATION_IMAGES
        with tempfile.TemporaryDirectory() as d:
            root = self.fake_root(d)
            (root / CALIBRATION_IMAGES[0]).unlink()
            with self.assertRaises((SystemExit, FileNotFoundError)):
                G.grid_images(root, "calibration")


class TestCalibrateEmulation(unittest.TestCase):
    def test_binomial_tail_matches_calibration_ts(self):
        self.assertAlmostEqual(G.binomial_tail_half(11, 12), 13 / 4096)
        self.assertEqual(G.binomial_tail_half(0, 5), 1.0)
        self.assertEqual(G.binomial_tail_half(6, 5), 0.0)

    def test_sign_decisions_and_fit(self):
        zr = np.arange(-6.0, 6.01, 1.0)
        absu = 0.8 * np.abs(zr)
        # model right: 'model', slope 1/0.8
        cal = G.fit_calibration(zr, absu, np.sign(zr) * 3)
        self.assertEqual(cal["sign"], "model")
        self.assertAlmostEqual(cal["slope"], 1.25)
        self.assertAlmostEqual(cal["intercept"], 0.0, places=9)
        # model always wrong: 'inverted', and applying it gives the right signed value and the flipped probability
        cal = G.fit_calibration(zr, absu, -np.sign(zr) * 3)
        self.assertEqual(cal["sign"], "inverted")
        pred, p = G.apply_calibration(cal, absu, -np.sign(zr) * 3)
        np.testing.assert_allclose(pred, zr, atol=1e-9)
        self.assertTrue(((p > 0.5) == (zr > 0))[zr != 0].all())
        # a coin: 'unrecoverable', magnitudes only, confidence 0.5
        logit = np.array([1, -1] * 6 + [1.0])
        cal = G.fit_calibration(zr, absu, logit)
        self.assertEqual(cal["sign"], "unrecoverable")
        pred, p = G.apply_calibration(cal, absu, logit)
        np.testing.assert_allclose(pred, np.abs(zr), atol=1e-9)
        self.assertTrue((p == 0.5).all())
        # 11 of 12 agree: p = 13/4096 < 0.01 -> model; 10 of 12: p = 0.019 -> unrecoverable
        lg = np.sign(zr) * 2
        lg[0] = -lg[0]
        self.assertEqual(G.sign_test(zr, lg)["decision"], "model")
        lg[1] = -lg[1]
        self.assertEqual(G.sign_test(zr, lg)["decision"], "unrecoverable")

    def test_nvl_prefers_the_sharp_image(self):
        g = np.random.default_rng(0).random((32, 32))
        blur = (g[:-2, :-2] + g[1:-1, 1:-1] + g[2:, 2:]) / 3
        self.assertGreater(G.nvl(g), G.nvl(blur))


class TestTable(unittest.TestCase):
    def test_one_row_per_variant_before_and_after(self):
        m = {"mae_signed": 0.3, "r2": 0.95, "slope": 0.9, "intercept": -0.1, "within_1um": 0.97, "sign_acc": 0.96, "ece": 0.04,
             "conf80_share": 0.9, "conf80_acc": 0.975, "abs_mae": 0.2}
        res = {"variants": {"matching": {"before": m, "after": {**m, "conf80_share": 0.0, "conf80_acc": None},
                                         "calibrations": [{"sign": "model"}] * 4 + [{"sign": "unrecoverable"}]},
                            "mirrored": {"before": m, "after": m, "calibrations": [{"sign": "inverted"}] * 5}}}
        before = G.table_markdown(res, "before").splitlines()
        self.assertEqual(len(before), 4)
        self.assertIn("| matching | 0.30 | 0.950 | 0.90 / -0.10 | 97.0 % | 96.0 % | 0.040 | 90 % / 97.5 % | 0.20 |", before[2])
        after = G.table_markdown(res, "after").splitlines()
        self.assertIn("0 % / — |", after[2])
        self.assertTrue(after[2].endswith("model 4, unrecoverable 1 |"))
        self.assertTrue(after[3].endswith("inverted 5 |"))


if __name__ == "__main__":
    unittest.main()
