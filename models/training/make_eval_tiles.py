"""Write held-out synthetic eval tiles as PNG (z in the file name and in manifest.csv), for scoring them with the
daemon's own scorers (`focusd score --scorer cnn|classical`) — e.g. to compare the CNN with the classical measure.

  /usr/bin/python3 models/training/make_eval_tiles.py --out /tmp/evaltiles [--per-z 2] [--z-step 1] [--optics shifted]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evaluate as E  # noqa: E402
import optics as O  # noqa: E402
import synth as S  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-z", type=int, default=2)
    ap.add_argument("--z-step", type=float, default=1.0)
    ap.add_argument("--z-max", type=float, default=6.0)
    ap.add_argument("--optics", choices=["shifted", "default"], default="shifted")
    ap.add_argument("--seed", type=int, default=321)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--tile-px", type=int, default=S.PATCH, help="tile edge in pixels (default one model patch; larger "
                    "tiles hold several patches, as a scanner's do, and show what the daemon's per-tile aggregation adds)")
    ap.add_argument("--glass", type=int, default=0, help="also write N glass/dust tiles and N tissue-rim tiles (z = nan)")
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    root = Path(a.data_root) if a.data_root else S.default_data_root()
    held = S.load_sources(root, {"holdout_source", "holdout_stain"})
    optics = E.SHIFTED if a.optics == "shifted" else O.Optics()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = ["file,z_um,source,stain"]
    zs = np.round(np.arange(-a.z_max, a.z_max + 1e-9, a.z_step), 3)
    for si, src in enumerate(held):
        for z in zs:
            crops = S.random_crops([src], a.per_z, gen, S.Variation(), "cpu", size=a.tile_px + 2 * S.MARGIN)
            x8 = S.render(crops, torch.full((a.per_z,), float(z)), O.OpticsBatch.fixed(optics, a.per_z), gen, S.Variation())
            for k in range(a.per_z):
                name = f"s{si}_k{k}_z{'+' if z >= 0 else '-'}{abs(z):07.3f}um.png"
                Image.fromarray(x8[k].permute(1, 2, 0).to(torch.uint8).numpy()).save(out / name)
                rows.append(f"{name},{z},{src.source},{src.stain}")
    if a.glass:
        for kind, x8 in (("glass", S.glass_patches(a.glass, gen, "cpu")), ("rim", S.rim_patches(held, a.glass, gen, "cpu"))):
            for k in range(a.glass):
                name = f"{kind}_{k:03d}.png"
                Image.fromarray(x8[k].permute(1, 2, 0).to(torch.uint8).numpy()).save(out / name)
                rows.append(f"{name},nan,{kind},none")
    (out / "manifest.csv").write_text("\n".join(rows) + "\n")
    print(f"{len(rows) - 1} tiles of {a.tile_px} px in {out} ({a.optics} optics)")


if __name__ == "__main__":
    main()
