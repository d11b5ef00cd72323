"""Export a checkpoint (or a seeded untrained model) to a model bundle: model.onnx + manifest.json.

  /usr/bin/python3 models/training/export_onnx.py --checkpoint RUN/checkpoint.pt --eval RUN/eval.json --out models/default
  /usr/bin/python3 models/training/export_onnx.py --random-init --arch focusnet --width 4 --seed 0 --out /tmp/b \
      --reference /tmp/b/reference.json      # parity test: fixed inputs + PyTorch outputs

ONNX: opset 13, input `input` NCHW float32 normalised as recorded in the manifest, dynamic batch axis,
outputs abs_um / sign_logit / log_var, each [N,1].
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nets  # noqa: E402
import optics as O  # noqa: E402
import synth as S  # noqa: E402

OPSET = 13


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(model: torch.nn.Module, path: Path):
    model.eval()
    x = torch.zeros(1, 3, S.PATCH, S.PATCH)
    torch.onnx.export(model, x, str(path), opset_version=OPSET, input_names=["input"],
                      output_names=["abs_um", "sign_logit", "log_var"],
                      dynamic_axes={"input": {0: "batch"}, "abs_um": {0: "batch"}, "sign_logit": {0: "batch"}, "log_var": {0: "batch"}},
                      do_constant_folding=True)


def _spread_untrained(model: torch.nn.Module, seed: int):
    """A freshly initialised net in eval mode answers almost the same for every input (BN running stats 0/1 do not
    match the activations, which shrink layer by layer), which would make a parity test blind. Estimating the BN
    statistics on seeded random patches and a louder head make the outputs input-dependent."""
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration passes
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        model.train()
        for _ in range(4):
            x8 = torch.randint(0, 256, (4, 3, S.PATCH, S.PATCH), generator=g).float() * torch.rand(4, 1, 1, 1, generator=g)
            model(S.normalise(x8, S.NORMALISATION))
        model.eval()
        for m in model.heads.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(10.0)


def _portable(args):
    """Training arguments without the training machine's directories (the bundle ships to other machines)."""
    if not isinstance(args, dict):
        return args
    return {k: (Path(v).name if isinstance(v, str) and v.startswith("/") else v) for k, v in args.items()}


def manifest(*, name, version, architecture, sha, z_max, provenance, metrics) -> dict:
    n = S.NORMALISATION
    return {
        "schema": 1,
        "name": name,
        "version": version,
        "architecture": architecture,
        "format": "onnx",
        "file": "model.onnx",
        "sha256": sha,
        "input": {
            "name": "input",
            "layout": "NCHW",
            "size": [S.PATCH, S.PATCH],
            "channel_order": "RGB",
            "pixel_size_um": O.Optics().pixel_um,
            "normalisation": {"scale": n["scale"], "mean": list(n["mean"]), "std": list(n["std"])},
        },
        "outputs": {"abs_um": "abs_um", "sign_logit": "sign_logit", "log_var": "log_var"},
        "output_semantics": ("abs_um: |defocus| in µm (softplus, >= 0); sign_logit: logit of P(defocus > 0), positive = specimen "
                             "above the focal plane; log_var: log-variance of abs_um in µm². signed = sign * abs_um, then calibration."),
        "range_um": [0.0, float(z_max)],
        "calibration": {"slope": 1.0, "intercept": 0.0, "sign": "model", "source": "identity (synthetic training optics)"},
        "provenance": provenance,
        "metrics": metrics,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint")
    ap.add_argument("--random-init", action="store_true", help="export an untrained, seeded model (tests)")
    ap.add_argument("--arch", default="focusnet")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval", help="evaluate.py JSON to record as metrics")
    ap.add_argument("--extra-metrics", help="JSON file merged into metrics (latency, real focus stack, ...)")
    ap.add_argument("--name", default="focusd-defocus")
    ap.add_argument("--version", default="0.1.0")
    ap.add_argument("--out", required=True)
    ap.add_argument("--reference", help="write fixed inputs and PyTorch outputs here (parity test)")
    ap.add_argument("--reference-n", type=int, default=2)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    if a.checkpoint:
        ck = nets.load_file(a.checkpoint)
        model = nets.build(ck["arch"], **ck["kw"])
        model.load_state_dict(ck["state_dict"])
        arch, kw, z_max = ck["arch"], ck["kw"], ck.get("z_max", 8.0)
        ck_path = Path(a.checkpoint).resolve()
        repo = Path(__file__).resolve().parents[2]
        prov = {"checkpoint": str(ck_path.relative_to(repo)) if repo in ck_path.parents else ck_path.name,
                "training": "physically defocused patches generated on the fly (models/training/synth.py)",
                "in_focus_sources": ck.get("train_sources"), "data_root": "../shared/data/infocus beside the checkout, or FOCUSD_INFOCUS_DIR (see models/README.md)",
                "optics_ranges": ck.get("optics_ranges"), "default_optics": O.Optics().to_dict(),
                "generator": ck.get("generator"),
                "variation": ck.get("variation"), "steps": ck.get("steps"), "patches": ck.get("patches"),
                "trained_on": ck.get("device_name"), "seed": ck.get("args", {}).get("seed"),
                "train_args": _portable(ck.get("args")), "continued_from": ck.get("lineage", []),
                **({"interpolation": ck["interpolation"]} if ck.get("interpolation") else {}),
                "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    elif a.random_init:
        arch, kw, z_max = a.arch, {"width": a.width, "depth": a.depth}, 8.0
        model = nets.build(arch, **kw)
        _spread_untrained(model, a.seed)
        prov = {"training": "none (untrained, seeded random init)", "seed": a.seed}
    else:
        ap.error("--checkpoint or --random-init")
    model.eval()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    export(model, out / "model.onnx")
    metrics = {}
    if a.eval:
        metrics["synthetic_holdout"] = json.loads(Path(a.eval).read_text())
    if a.extra_metrics:
        metrics.update(json.loads(Path(a.extra_metrics).read_text()))
    m = manifest(name=a.name, version=a.version, architecture=nets.describe(arch, **kw), sha=sha256(out / "model.onnx"),
                 z_max=z_max, provenance=prov, metrics=metrics)
    (out / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    if a.reference:
        g = torch.Generator().manual_seed(a.seed + 1)
        x8 = torch.randint(0, 256, (a.reference_n, 3, S.PATCH, S.PATCH), generator=g).float()
        # different contrast and brightness per patch, so the outputs differ even for an untrained model
        k = torch.arange(a.reference_n).float().view(-1, 1, 1, 1)
        x8 = (40 + 20 * k + (x8 - 128) * (k + 1) / a.reference_n + 128).round().clamp(0, 255)
        x = S.normalise(x8, S.NORMALISATION)
        with torch.no_grad():
            ab, sl, lv = model(x)
        Path(a.reference).write_text(json.dumps({
            "shape": list(x.shape), "input_u8": x8.to(torch.uint8).flatten().tolist(),
            "abs_um": ab.flatten().tolist(), "sign_logit": sl.flatten().tolist(), "log_var": lv.flatten().tolist()}))
    print(json.dumps({"out": str(out), "sha256": m["sha256"], "architecture": m["architecture"]}))


if __name__ == "__main__":
    main()
