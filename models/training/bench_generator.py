"""Patches/s of the CPU training-data generator, old (exact PSF per patch, sRGB sources) vs new (PSF bank, OD sources,
table sRGB encode), measured alternately in one process so both see the same machine load.

  OMP_NUM_THREADS=1 nice -n 15 /usr/bin/python3 models/training/bench_generator.py --rounds 3 --batch 16

Generation only (no training step), one thread; wall-clock patches/s and patches per CPU-second of this process
(the latter does not depend on what else the machine runs); the new path's bank build time is included (bank of --bank instruments
built up front, one instrument replaced every --refresh batches as in training)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import optics as O  # noqa: E402
import psf_bank as PB  # noqa: E402
import synth as S  # noqa: E402
import train as T  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=2, help="batches per round and generator")
    ap.add_argument("--bank", type=int, default=8)
    ap.add_argument("--refresh", type=int, default=4)
    ap.add_argument("--patch-px", type=int, default=S.PATCH)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    src = S.load_sources(S.default_data_root(), {"train"})
    src_od = S.with_od(src)
    g_old, g_new = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    t = time.time()
    bank = PB.PsfBank(O.INSTRUMENT_RANGES, a.bank, g_new, refresh_every=a.refresh)
    while len(bank.draws) < a.bank:
        bank.draws.append(bank._draw())
    build = time.time() - t
    t_old = t_new = c_old = c_new = 0.0
    n_old = n_new = 0
    for _ in range(a.rounds):
        t, c = time.time(), time.process_time()
        for _ in range(a.batches):
            T.make_batch(src, a.batch, g_old, "cpu", 8.0, ranges=O.INSTRUMENT_RANGES, var=S.INSTRUMENT_VARIATION)
        t_old += time.time() - t
        c_old += time.process_time() - c
        n_old += a.batch * a.batches
        t, c = time.time(), time.process_time()
        for _ in range(a.batches):
            PB.bank_batch(bank, src_od, a.batch, g_new, 8.0, S.INSTRUMENT_VARIATION, patch_px=a.patch_px)
        t_new += time.time() - t
        c_new += time.process_time() - c
        n_new += a.batch * a.batches
    res = {"old_patches_per_s": n_old / t_old, "new_patches_per_s": n_new / t_new, "speedup": (n_new / t_new) / (n_old / t_old),
           "old_patches_per_cpu_s": n_old / c_old, "new_patches_per_cpu_s": n_new / c_new,
           "new_patch_px": a.patch_px, "bank_initial_build_s": build, "bank_instruments": a.bank, "refresh_every": a.refresh,
           "patches_each": n_old, "threads": torch.get_num_threads(), "loadavg_end": os.getloadavg()}
    print(json.dumps(res))
    if a.out:
        open(a.out, "w").write(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
