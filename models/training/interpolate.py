"""Weight-space interpolation of two checkpoints of one network (WiSE-FT, Wortsman et al. 2022): theta =
(1 - alpha) * theta_a + alpha * theta_b, where b was trained on from a (train.py --init a). Fine-tuning a network on
a wider distribution and then interpolating with its start often keeps what each end does well, at no inference cost
(one network, same ONNX). Used here on 0.2.0 and 0.3-exp1 (continued over instruments on a CPU): 0.2.0 reads |d|
unbiased at the tolerance on the optics it was trained for and under-reads where a sign cue is reversed or missing;
0.3-exp1 over-reads everywhere (models/README.md, "The next GPU session").

  /usr/bin/python3 models/training/interpolate.py --a models/training/checkpoints/focusnet-w32d2-0.2.0.pt \
      --b models/training/checkpoints/focusnet-w32d2-0.3-exp1.pt --alpha 0.5 --out /tmp/wise-0.5.pt

Every floating-point tensor of the state dict is interpolated (weights, biases, batch-norm running means and
variances); integer tensors (num_batches_tracked) are taken from b. The checkpoint keeps a's metadata, b's lineage
plus b itself, and says how it was made (`interpolation`), so export_onnx.py records it in the bundle.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nets  # noqa: E402


def interpolate_state(a: dict, b: dict, alpha: float) -> dict:
    """(1 - alpha) * a + alpha * b for every float tensor; the same keys and shapes are required."""
    if set(a) != set(b):
        raise ValueError(f"the checkpoints hold different tensors: {sorted(set(a) ^ set(b))[:5]}")
    out = {}
    for k, ta in a.items():
        tb = b[k]
        if ta.shape != tb.shape:
            raise ValueError(f"{k}: shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
        out[k] = torch.lerp(ta, tb.to(ta.dtype), alpha) if ta.is_floating_point() else tb.clone()
    return out


def interpolate(ck_a: dict, ck_b: dict, alpha: float, names: tuple[str, str]) -> dict:
    if (ck_a["arch"], ck_a["kw"]) != (ck_b["arch"], ck_b["kw"]):
        raise ValueError(f"different networks: {ck_a['arch']} {ck_a['kw']} vs {ck_b['arch']} {ck_b['kw']}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha} is not within 0..1")
    lineage = ck_b.get("lineage", []) + [{k: ck_b.get(k) for k in ("steps", "patches", "device_name", "variation")} |
                                         {"args": ck_b.get("args")}]
    return {**ck_a, "state_dict": interpolate_state(ck_a["state_dict"], ck_b["state_dict"], alpha), "lineage": lineage,
            "interpolation": {"method": "weight-space (WiSE-FT)", "a": names[0], "b": names[1], "alpha": alpha},
            "steps": ck_b.get("steps"), "patches": ck_b.get("patches")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="the checkpoint fine-tuning started from")
    ap.add_argument("--b", required=True, help="the fine-tuned checkpoint")
    ap.add_argument("--alpha", type=float, required=True, help="0 = a, 1 = b")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    repo = Path(__file__).resolve().parents[2]

    def name(p):  # the repository's own files by their path in it, others by file name (no machine paths in bundles)
        full = Path(p).resolve()
        return str(full.relative_to(repo)) if repo in full.parents else full.name

    try:
        ck = interpolate(nets.load_file(a.a), nets.load_file(a.b), a.alpha, (name(a.a), name(a.b)))
    except ValueError as err:
        ap.error(str(err))
    tmp = a.out + ".tmp"
    torch.save(ck, tmp)
    os.replace(tmp, a.out)
    print(f"wrote {a.out}: {a.alpha:g} of the way from {a.a} to {a.b}")


if __name__ == "__main__":
    main()
