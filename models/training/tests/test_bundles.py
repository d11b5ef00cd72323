"""Every shipped bundle (models/*/manifest.json + model.onnx) is the committed checkpoint it names: re-exporting that
checkpoint gives the same graph (operator sequence) and the same weights (every initializer, by name).

The checkpoint is manifest.provenance.checkpoint, else models/training/checkpoints/*-<version>.pt (0.2.0 predates the
field). The TypeScript test test/onnx-parity.test.ts checks models/default in onnxruntime-node as well."""
import json
import os
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
REPO = HERE.parents[2]


def bundles():
    for m in sorted((REPO / "models").glob("*/manifest.json")):
        if (m.parent / "model.onnx").exists() and m.parent.name != "training":
            yield m.parent


def checkpoint_of(bundle: Path) -> Path:
    man = json.loads((bundle / "manifest.json").read_text())
    named = (man.get("provenance") or {}).get("checkpoint")
    if named:
        return REPO / named
    hits = sorted((REPO / "models/training/checkpoints").glob(f"*-{man['version']}.pt"))
    if len(hits) != 1:
        raise AssertionError(f"{bundle}: no unique checkpoint for version {man['version']}: {hits}")
    return hits[0]


class TestShippedBundles(unittest.TestCase):
    def test_each_bundle_is_its_committed_checkpoint(self):
        import onnx
        import torch
        from onnx import numpy_helper

        import export_onnx as E
        import nets

        found = list(bundles())
        self.assertIn(REPO / "models/default", found)
        for b in found:
            with self.subTest(bundle=b.name):
                ckp = checkpoint_of(b)
                self.assertTrue(ckp.exists(), ckp)
                ck = nets.load_file(ckp)
                model = nets.build(ck["arch"], **ck["kw"])
                model.load_state_dict(ck["state_dict"])
                with tempfile.TemporaryDirectory() as d:
                    E.export(model, Path(d) / "m.onnx")
                    ref = onnx.load(os.path.join(d, "m.onnx"))
                shipped = onnx.load(str(b / "model.onnx"))
                self.assertEqual([n.op_type for n in shipped.graph.node], [n.op_type for n in ref.graph.node])
                w_ref = {i.name: numpy_helper.to_array(i) for i in ref.graph.initializer}
                w_shp = {i.name: numpy_helper.to_array(i) for i in shipped.graph.initializer}
                self.assertEqual(sorted(w_ref), sorted(w_shp))
                for k, v in w_ref.items():
                    np.testing.assert_allclose(w_shp[k], v, rtol=1e-5, atol=1e-6, err_msg=f"{b.name}: {k}")
                man = json.loads((b / "manifest.json").read_text())
                self.assertEqual(man["architecture"], nets.describe(ck["arch"], **ck["kw"]))


class TestCheckpointLoading(unittest.TestCase):
    """torch >= 2.6 (the GPU machine's image has 2.11) loads with weights_only=True by default and refuses our
    checkpoints' metadata: `--init` and every evaluation would fail there at once, while torch 1.13 here passes."""

    def test_every_load_goes_through_nets_load_file(self):
        import re
        offenders = []
        for f in sorted(list((REPO / "models" / "training").rglob("*.py")) + list((REPO / "test").rglob("*.py"))):
            for i, line in enumerate(f.read_text().splitlines(), 1):
                if re.search(r"\btorch\.load\(", line) and f.name != "nets.py":
                    offenders.append(f"{f.relative_to(REPO)}:{i}")
        self.assertEqual(offenders, [])

    def test_load_file_reads_the_committed_checkpoint_with_its_metadata(self):
        import nets

        ck = nets.load_file(REPO / "models/training/checkpoints/focusnet-w32d2-0.2.0.pt")
        self.assertEqual(ck["arch"], "focusnet")
        self.assertIn("lineage", ck)
        self.assertIsInstance(ck["args"], dict)


if __name__ == "__main__":
    unittest.main()
