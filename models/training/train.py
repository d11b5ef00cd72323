"""Train a defocus model on physically defocused patches generated on the fly.

  /usr/bin/python3 models/training/train.py --arch focusnet --width 16 --minutes 6 --out models/training/runs/fn16
  /usr/bin/python3 models/training/train.py --arch inceptionv3 --batch 64 --minutes 6 --out models/training/runs/incv3

Seeded (--seed); runs on CUDA when available (--device), else CPU. Writes OUT/checkpoint.pt and OUT/train_log.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nets  # noqa: E402
import optics as O  # noqa: E402
import synth as S  # noqa: E402


def loss_fn(out, z, boundary_weight: float = 0.0):
    abs_p, sign_logit, log_var = out
    abs_t = z.abs()[:, None]
    l_abs = F.smooth_l1_loss(abs_p, abs_t, beta=0.5, reduction="none")
    # --boundary-weight: |d| errors where the in/out verdict is decided (synth.BOUNDARY_UM) count 1 + W times
    lo, hi = S.BOUNDARY_UM
    w_abs = 1.0 + boundary_weight * ((abs_t >= lo) & (abs_t <= hi)).float()
    l_abs = (w_abs * l_abs).sum() / w_abs.sum()
    # the sign is undefined at focus: weight the sign loss up from 0 at z=0 to 1 at |z| >= 0.5 µm
    w = (abs_t / 0.5).clamp(max=1.0)
    l_sign = (w * F.binary_cross_entropy_with_logits(sign_logit, (z > 0).float()[:, None], reduction="none")).mean()
    l_nll = 0.5 * (torch.exp(-log_var) * (abs_p.detach() - abs_t) ** 2 + log_var).mean()
    return l_abs + 0.5 * l_sign + 0.1 * l_nll, {"abs": l_abs.item(), "sign": l_sign.item(), "nll": l_nll.item()}


def make_batch(sources, b, gen, device, z_max, ranges=None, var=None, oversample=3, sparse_frac=0.0, boundary_frac=0.0):
    var = var or S.Variation()
    ranges = ranges or O.OpticsRanges()
    z = S.sample_z(b, gen, z_max, boundary_frac=boundary_frac)
    ob = O.OpticsBatch.sample(ranges, b, gen, device)
    crops = S.random_crops(sources, b, gen, var, device)
    if sparse_frac > 0:  # tissue-rim patches: part of the specimen is bare glass (white before the optics)
        pick = torch.nonzero(torch.rand(b, generator=gen) < sparse_frac).flatten().to(device)
        if len(pick):
            crops[pick] = S.on_glass(crops[pick], S.sparse_tissue_masks(len(pick), gen, device=device))
    x8 = S.render(crops, z.to(device), ob, gen, var, psf_oversample=oversample)
    return S.normalise(x8, S.NORMALISATION), z.to(device)


class BatchStream:
    """Training batches (uint8-valued float x8 [B,3,PATCH,PATCH], z [B]) on the CPU: exact per-patch PSFs (psf_bank=0,
    the 0.1/0.2 generator) or a PSF bank (psf_bank.py), in this process (workers=0) or in `workers` forked processes
    (one torch thread each) feeding a queue, so generation and training overlap."""

    def __init__(self, sources, batch, seed, z_max, ranges, var, sparse_frac=0.0, psf_bank=0, bank_refresh=2, workers=0,
                 oversample=3, patch_px=S.PATCH, boundary_frac=0.0):
        self.args = (sources, batch, seed, z_max, ranges, var, sparse_frac, psf_bank, bank_refresh, oversample, patch_px, boundary_frac)
        self.procs = []
        if workers > 0:
            import multiprocessing as mp
            ctx = mp.get_context("fork")
            self.q = ctx.Queue(maxsize=3)
            for w in range(workers):
                p = ctx.Process(target=_worker, args=(self.q, w + 1) + self.args, daemon=True)
                p.start()
                self.procs.append(p)
        else:
            self.it = _batches(0, *self.args)

    def try_next(self):
        """A batch if one is ready (worker processes), else None."""
        import queue
        if not self.procs:
            return next(self)
        try:
            x8, z = self.q.get_nowait()
            return x8.float(), z
        except queue.Empty:
            return None

    def __next__(self):
        if self.procs:
            x8, z = self.q.get(timeout=600)
            return x8.float(), z
        return next(self.it)

    def close(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(5)


def _batches(wid, sources, batch, seed, z_max, ranges, var, sparse_frac, psf_bank, bank_refresh, oversample, patch_px=S.PATCH,
             boundary_frac=0.0):
    import psf_bank as PB
    gen = torch.Generator().manual_seed(seed + 7919 * wid)
    if psf_bank > 0:
        sources = S.with_od(sources)
    bank = PB.PsfBank(ranges, psf_bank, gen, z_max, bank_refresh, oversample) if psf_bank > 0 else None
    while True:
        if bank is not None:
            x8, z, _ = PB.bank_batch(bank, sources, batch, gen, z_max, var, sparse_frac, patch_px, boundary_frac)
        else:
            z = S.sample_z(batch, gen, z_max, boundary_frac=boundary_frac)
            ob = O.OpticsBatch.sample(ranges, batch, gen)
            crops = S.random_crops(sources, batch, gen, var, "cpu")
            if sparse_frac > 0:
                pick = torch.nonzero(torch.rand(batch, generator=gen) < sparse_frac).flatten()
                if len(pick):
                    crops[pick] = S.on_glass(crops[pick], S.sparse_tissue_masks(len(pick), gen))
            x8 = S.render(crops, z, ob, gen, var, psf_oversample=oversample)
        yield x8, z


def _worker(q, wid, *args):
    torch.set_num_threads(1)
    for x8, z in _batches(wid, *args):
        q.put((x8.to(torch.uint8), z))


def frozen_modules(model, freeze: int) -> list:
    """--freeze N (focusnet): the stem and the first N body blocks (continued training on a CPU: with N = 4 every layer
    at >= 1/8 resolution stays as trained, which halves the cost of a training step)."""
    if freeze <= 0:
        return []
    return [model.stem] + [model.body[i] for i in range(freeze)]


def train(model, sources, *, steps, batch, lr, device, seed, z_max=8.0, minutes=None, fixed_batch=False,
          log_every=50, amp=False, oversample=3, log=print, var=None, on_checkpoint=None, checkpoint_every_s=60.0,
          sparse_frac=0.0, warmup=200, ranges=None, stream=None, freeze=0, max_echo=0, boundary_frac=0.0, boundary_weight=0.0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    frozen = frozen_modules(model, freeze)
    for m in frozen:  # fixed weights and BN statistics: no backward through the high-resolution layers
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    t0 = time.time()
    hist = []
    fixed = make_batch(sources, batch, gen, device, z_max, ranges=ranges, var=var, oversample=oversample, sparse_frac=sparse_frac,
                       boundary_frac=boundary_frac) if fixed_batch else None
    last_ck = t0
    step = 0
    seen = 0
    last, echoes, n_echo = None, 0, 0
    while step < steps:
        elapsed = time.time() - t0
        prog = step / steps
        if minutes:
            prog = max(prog, elapsed / (minutes * 60))
            if prog >= 1:
                break
        cur_lr = lr * (min(1.0, (step + 1) / warmup) if not fixed_batch else 1.0) * (0.5 * (1 + math.cos(math.pi * prog)) if not fixed_batch else 1.0)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        fresh = True
        if fixed is not None:
            x, z = fixed
        elif stream is not None:
            # data echoing: while the workers have no new batch ready, train on the last one again (random rot90/flip
            # of the whole batch), at most max_echo times; the training process would otherwise sit idle
            got = stream.try_next() if (max_echo and last is not None and echoes < max_echo) else next(stream)
            if got is None:
                x8 = torch.rot90(last[0], int(torch.randint(0, 4, (1,), generator=gen)), dims=(-2, -1))
                if int(torch.randint(0, 2, (1,), generator=gen)):
                    x8 = torch.flip(x8, dims=(-1,))
                z = last[1]
                fresh = False
                echoes += 1
                n_echo += 1
            else:
                x8, z = got
                last, echoes = got, 0
            x, z = S.normalise(x8.to(device), S.NORMALISATION), z.to(device)
            fresh = got is not None
        else:
            x, z = make_batch(sources, batch, gen, device, z_max, ranges=ranges, var=var, oversample=oversample, sparse_frac=sparse_frac,
                              boundary_frac=boundary_frac)
        if amp and str(device).startswith("cuda"):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                out = model(x)
        else:
            out = model(x)
        out = tuple(o.float() for o in out)
        loss, parts = loss_fn(out, z, boundary_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        seen += x.shape[0] if fresh else 0  # generated patches (echoed batches are not counted again)
        hist.append({"step": step, "loss": loss.item(), **parts})
        if log_every and step % log_every == 0:
            log(f"step {step} loss {float(loss):.4f} abs {parts['abs']:.3f} sign {parts['sign']:.3f} lr {cur_lr:.2e} "
                f"{seen / max(1e-9, time.time() - t0):.1f} patches/s ({n_echo} echoed batches)")
        step += 1
        # periodic checkpoints: a run cut off by a wall-clock limit (a lent GPU) still leaves a usable model
        if on_checkpoint and time.time() - last_ck >= checkpoint_every_s:
            on_checkpoint(step, seen)
            last_ck = time.time()
    return {"steps": step, "seconds": time.time() - t0, "patches": seen, "echoed_batches": n_echo, "patches_per_s": seen / max(1e-9, time.time() - t0),
            "history": hist}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="focusnet", choices=["focusnet", "inceptionv3"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--minutes", type=float, default=None, help="stop (and anneal the LR) by wall-clock time")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--z-max", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--stain-aug", action="store_true", help="random OD channel mixing/permutation (synth.STAIN_AUG_VARIATION)")
    ap.add_argument("--init", default=None, help="start from this checkpoint's weights (same arch/width/depth)")
    ap.add_argument("--sparse-frac", type=float, default=0.0, help="share of tissue-rim patches (part bare glass)")
    ap.add_argument("--warmup", type=int, default=200, help="linear LR warm-up steps")
    ap.add_argument("--instruments", action="store_true",
                    help="model 0.3: train over instruments (optics.INSTRUMENT_RANGES, synth.INSTRUMENT_VARIATION)")
    ap.add_argument("--psf-bank", type=int, default=0, help="PSF bank with this many instruments (psf_bank.py); 0 = exact PSF per patch")
    ap.add_argument("--bank-refresh", type=int, default=2, help="replace one bank instrument every N batches")
    ap.add_argument("--workers", type=int, default=0, help="generate batches in N worker processes (CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the training process (0 = torch default)")
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--max-echo", type=int, default=0, help="reuse a batch up to N times while workers have none ready")
    ap.add_argument("--freeze", type=int, default=0, help="keep the stem and the first N body blocks fixed (focusnet)")
    ap.add_argument("--train-px", type=int, default=S.PATCH, help="training patch size with --psf-bank (network pools globally)")
    ap.add_argument("--boundary-frac", type=float, default=0.0,
                    help="share of patches with |z| uniform over synth.BOUNDARY_UM (where the in/out verdict is decided)")
    ap.add_argument("--boundary-weight", type=float, default=0.0,
                    help="|d| loss weight 1 + W for |z| within synth.BOUNDARY_UM")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if not 0 <= a.boundary_frac <= 1 or not 0 <= a.boundary_weight <= 100:
        ap.error("--boundary-frac must be within 0..1 and --boundary-weight within 0..100")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True
    root = Path(a.data_root) if a.data_root else S.default_data_root()
    sources = S.load_sources(root, {"train"}, a.device)
    kw = {"width": a.width, "depth": a.depth}
    model = nets.build(a.arch, **kw)
    lineage = []  # earlier runs this one continues (--init), oldest first, so a bundle can say all it was trained on
    if a.init:
        init = nets.load_file(a.init)
        model.load_state_dict(init["state_dict"])
        lineage = init.get("lineage", []) + [{k: init.get(k) for k in ("steps", "patches", "device_name", "variation")} |
                                             {"args": init.get("args")}]
    var = S.STAIN_AUG_VARIATION if a.stain_aug else S.INSTRUMENT_VARIATION if a.instruments else S.Variation()
    ranges = O.INSTRUMENT_RANGES if a.instruments else O.OpticsRanges()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{nets.describe(a.arch, **kw)}: {sum(p.numel() for p in model.parameters())} params, device {a.device}, "
          f"{len(sources)} training images from {root}, variation {var}", flush=True)

    def save(steps, patches, seconds):
        ck = {"arch": a.arch, "kw": kw, "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
              "args": vars(a), "z_max": a.z_max, "train_sources": [s.path for s in sources],
              "optics_ranges": ranges.__dict__, "variation": var.__dict__,
              "generator": {"psf_bank": a.psf_bank, "bank_refresh": a.bank_refresh, "workers": a.workers, "train_px": a.train_px},
              "steps": steps, "patches": patches, "patches_per_s": patches / max(1e-9, seconds),
              "device_name": torch.cuda.get_device_name() if str(a.device).startswith("cuda") else "cpu",
              "lineage": lineage}
        tmp = out / "checkpoint.pt.tmp"
        torch.save(ck, tmp)
        os.replace(tmp, out / "checkpoint.pt")  # atomic: a cut-off run never leaves half a checkpoint
        return ck

    stream = None
    if a.psf_bank or a.workers:
        if str(a.device) != "cpu":
            sources = [S.Source(s.path, s.source, s.stain, s.split, s.img.cpu()) for s in sources]
        stream = BatchStream(sources, a.batch, a.seed, a.z_max, ranges, var, a.sparse_frac, a.psf_bank, a.bank_refresh, a.workers,
                             patch_px=a.train_px, boundary_frac=a.boundary_frac)
    t0 = time.time()
    try:
        res = train(model, sources, steps=a.steps, batch=a.batch, lr=a.lr, device=a.device, seed=a.seed, z_max=a.z_max,
                    minutes=a.minutes, amp=a.amp, log=lambda s: print(s, flush=True), var=var, sparse_frac=a.sparse_frac,
                    warmup=a.warmup, ranges=ranges, stream=stream, log_every=a.log_every, freeze=a.freeze, max_echo=a.max_echo,
                    boundary_frac=a.boundary_frac, boundary_weight=a.boundary_weight,
                    on_checkpoint=lambda st, seen: save(st, seen, time.time() - t0))
    finally:
        if stream is not None:
            stream.close()
    ck = save(res["steps"], res["patches"], res["seconds"])
    h = res.pop("history")
    res["loss_first100"] = sum(x["loss"] for x in h[:100]) / max(1, len(h[:100]))
    res["loss_last100"] = sum(x["loss"] for x in h[-100:]) / max(1, len(h[-100:]))
    (out / "train_log.json").write_text(json.dumps({**res, "args": vars(a), "device_name": ck["device_name"]}, indent=1))
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
