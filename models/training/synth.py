"""Training / evaluation patch generator: in-focus tissue -> physically defocused, noisy 8-bit camera patches.

Pipeline per patch (all in torch, batched, CPU or CUDA):
  crop (with margin for the PSF) -> random flip/rot + slight downscale -> sRGB decode (linear light)
  -> stain variation (per-channel optical-density scaling) -> PSF blur at z (per channel: wavelength +
  axial chromatic shift + spherical aberration, pixel-integrated) -> illumination gain / white balance
  -> Poisson-Gaussian camera noise -> sRGB encode -> 8-bit quantisation -> centre crop.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import optics as O

PATCH = 320
KERNEL = 128  # PSF support in pixels: holds the blur disc up to |z| ~ 8 µm at NA 0.8
MARGIN = KERNEL // 2
CROP = PATCH + 2 * MARGIN  # 448

# In-focus ground truth. Only crisp, lossless sources (see models/README.md for why).
# split: train | holdout_source (whole source never seen) | holdout_stain (kidney stains never seen)
SOURCES = [
    ("kidney_multistain_nisar/orig_patch_stain_01.png", "kidney_multistain_nisar", "H&E", "train"),
    ("kidney_multistain_nisar/orig_patch_stain_03.png", "kidney_multistain_nisar", "Jones silver", "train"),
    ("kidney_multistain_nisar/orig_patch_stain_16.png", "kidney_multistain_nisar", "IHC DAB 16", "train"),
    ("kidney_multistain_nisar/orig_patch_stain_37.png", "kidney_multistain_nisar", "IHC DAB 37", "train"),
    ("kidney_multistain_nisar/orig_patch_stain_39.png", "kidney_multistain_nisar", "CD34 red", "train"),
    ("kidney_multistain_nisar/orig_patch_stain_32.png", "kidney_multistain_nisar", "Sirius red", "holdout_stain"),
    ("kidney_multistain_nisar/orig_patch_stain_13.png", "kidney_multistain_nisar", "IHC DAB 13", "holdout_stain"),
    ("kidney_multistain_nisar/orig_patch_stain_40.png", "kidney_multistain_nisar", "IHC DAB 40", "holdout_stain"),
    ("histolab/high-nuclei-score-level0.png", "histolab", "H&E", "train"),
    ("histolab/medium-nuclei-score-level0.png", "histolab", "H&E", "train"),
    ("histolab/low-nuclei-score-level0.png", "histolab", "H&E", "train"),
    ("histolab/tissue-level0-4302-10273-4814-10785.png", "histolab", "H&E", "train"),
    ("histolab/tissue-level0-7352-11762-7864-12274.png", "histolab", "H&E", "train"),
    ("prov_gigapath/01581x_25327y.png", "prov_gigapath", "H&E", "train"),
    ("prov_gigapath/01581x_25583y.png", "prov_gigapath", "H&E", "train"),
    ("kather_deephistology/Source_small.png", "kather_deephistology", "H&E", "train"),
    ("henorm_python/example1.png", "henorm_python", "H&E breast", "holdout_source"),
    ("henorm_python/example2.png", "henorm_python", "H&E breast", "holdout_source"),
]


def default_data_root() -> Path:
    env = os.environ.get("FOCUSD_INFOCUS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2]  # repo root
    for cand in (here / ".devdata" / "infocus", here.parent / "shared" / "data" / "infocus"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(f"in-focus sources not found in {here.parent / 'shared' / 'data' / 'infocus'}: set FOCUSD_INFOCUS_DIR")


@dataclass
class Source:
    path: str
    source: str
    stain: str
    split: str
    img: torch.Tensor  # uint8 [3,H,W]
    od: torch.Tensor | None = None  # float32 optical density [3,H,W] (with_od: the fast generator crops from it)


def with_od(sources: list[Source]) -> list[Source]:
    """The sources with their optical density precomputed once (sRGB decode + log per pixel, ~1/3 of the old
    render cost when done per crop)."""
    out = []
    for s in sources:
        lin = O.srgb_to_linear(s.img.float() / 255.0)
        out.append(Source(s.path, s.source, s.stain, s.split, s.img, (-torch.log(lin.clamp_min(1e-3))).float().contiguous()))
    return out


def load_sources(root: Path, splits: set[str], device="cpu") -> list[Source]:
    out = []
    for rel, src, stain, split in SOURCES:
        if split not in splits:
            continue
        p = root / rel
        a = np.asarray(Image.open(p).convert("RGB"))
        out.append(Source(rel, src, stain, split, torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous().to(device)))
    if not out:
        raise FileNotFoundError(f"no sources for {splits} under {root}")
    return out


@dataclass
class Variation:
    """Ranges of the non-optical nuisance variation."""

    stain_od_scale: tuple = (0.75, 1.3)  # per channel
    density: tuple = (0.8, 1.25)  # overall optical density
    brightness: tuple = (0.85, 1.1)
    white_balance: tuple = (0.95, 1.05)
    full_well_e: tuple = (2000.0, 20000.0)
    read_noise_e: tuple = (2.0, 12.0)
    downscale: tuple = (0.85, 1.0)
    # Stain colour beyond the sources' own (training only): the optical density of each output channel becomes a
    # random non-negative mix of the source channels' densities (off-diagonal weights up to stain_mix), and with
    # probability stain_permute the channels' densities are permuted. Both act on the specimen, before the optics, so
    # every result is a physically possible stain under the same objective: the chromatic sign cue stays tied to the
    # wavelengths, not to the colours of the 13 training images. 0 = the sources' own colours (evaluation).
    stain_mix: float = 0.0
    stain_permute: float = 0.0


# Model 0.3 (training over instruments): wider camera noise and mildly wider stains (non-negative OD mixes; rare
# channel permutations) than 0.2's sources-only colours.
INSTRUMENT_VARIATION = Variation(full_well_e=(1000.0, 30000.0), read_noise_e=(1.0, 15.0), stain_mix=0.2, stain_permute=0.1)
NO_VARIATION = Variation((1, 1), (1, 1), (1, 1), (1, 1), (20000.0, 20000.0), (2.0, 2.0), (1.0, 1.0))
# `train.py --stain-aug`. Measured (models/README.md, "How 0.2.0 was trained"): it did not reduce the held-out stain error,
# so the shipped model is trained without it.
STAIN_AUG_VARIATION = Variation(stain_mix=0.35, stain_permute=0.5)


def _u(lo_hi, shape, gen, device):
    lo, hi = lo_hi
    return (lo + (hi - lo) * torch.rand(shape, generator=gen)).to(device)


def random_crops(sources: list[Source], b: int, gen: torch.Generator, var: Variation, device, size: int = CROP,
                 od: bool = False) -> torch.Tensor:
    """b crops of size x size (default CROP: one patch plus the PSF margin) as float sRGB in [0,1], [b,3,size,size];
    od=True: the same crops (same random draws) of the sources' optical density (with_od), resampled in OD."""
    weights = torch.tensor([float(s.img.shape[1] * s.img.shape[2]) for s in sources])
    idx = torch.multinomial(weights, b, replacement=True, generator=gen)
    crops = []
    for i in idx.tolist():
        im = sources[i].od if od else sources[i].img
        scale = float(_u(var.downscale, (1,), gen, "cpu"))
        cs = int(math.ceil(size / scale))
        _, h, w = im.shape
        if h < cs or w < cs:  # small sources: reflect-pad (the pad lands mostly in the cropped margin)
            ph, pw = max(0, cs - h), max(0, cs - w)
            im = F.pad(im[None].float(), (pw // 2 + 1, pw - pw // 2 + 1, ph // 2 + 1, ph - ph // 2 + 1), mode="reflect")[0]
            _, h, w = im.shape
        y = int(torch.randint(0, h - cs + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - cs + 1, (1,), generator=gen))
        c = im[:, y:y + cs, x:x + cs].float()[None] / (1.0 if od else 255.0)
        if cs != size:
            c = F.interpolate(c, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        k = int(torch.randint(0, 4, (1,), generator=gen))
        c = torch.rot90(c, k, dims=(-2, -1))
        if int(torch.randint(0, 2, (1,), generator=gen)):
            c = torch.flip(c, dims=(-1,))
        crops.append(c)
    return torch.cat(crops).clamp(0, 1) if not od else torch.cat(crops).clamp(0, -math.log(1e-3))


def render(srgb: torch.Tensor, z: torch.Tensor, ob: O.OpticsBatch, gen: torch.Generator, var: Variation,
           psf_oversample: int = 3, kernels: torch.Tensor | None = None) -> torch.Tensor:
    """In-focus sRGB crops [B,3,S,S] -> defocused 8-bit camera images (float 0..255) [B,3,S-2*MARGIN,S-2*MARGIN]
    (S = CROP gives one PATCH). `kernels` [B,3,KERNEL,KERNEL]: precomputed PSFs (a PSF bank, or one per z shared by
    a batch); else computed here from (z, ob)."""
    return render_od(-torch.log(O.srgb_to_linear(srgb).clamp_min(1e-3)), z, ob, gen, var, psf_oversample, kernels)


def render_od(od: torch.Tensor, z: torch.Tensor, ob: O.OpticsBatch, gen: torch.Generator, var: Variation,
              psf_oversample: int = 3, kernels: torch.Tensor | None = None, fast: bool = False) -> torch.Tensor:
    """render() from the specimen's optical density [B,3,S,S]. fast=True: the sRGB encode by a 2^18-entry table
    (differs from the exact encode by at most one 8-bit code, on < 0.1 % of pixels: tests/test_instruments.py)."""
    out_px = od.shape[-1] - 2 * MARGIN
    dev = od.device
    b = od.shape[0]
    # stain / density variation acts on the specimen (before the optics), in optical density
    od = od * _u(var.stain_od_scale, (b, 3, 1, 1), gen, dev) * _u(var.density, (b, 1, 1, 1), gen, dev)
    if var.stain_mix > 0 or var.stain_permute > 0:
        od = torch.einsum("bij,bjhw->bihw", stain_matrices(b, gen, var).to(dev), od)
    lin = torch.exp(-od)
    k = kernels.to(dev) if kernels is not None else O.psf_kernels(z.to(dev), ob, KERNEL, psf_oversample)
    lin = O.convolve(lin, k)[:, :, MARGIN:MARGIN + out_px, MARGIN:MARGIN + out_px]
    lin = lin * _u(var.brightness, (b, 1, 1, 1), gen, dev) * _u(var.white_balance, (b, 3, 1, 1), gen, dev)
    lin = lin.clamp(0, 1)
    fw = _u(var.full_well_e, (b, 1, 1, 1), gen, dev)
    rn = _u(var.read_noise_e, (b, 1, 1, 1), gen, dev)
    e = torch.poisson(lin * fw, generator=gen) if lin.device.type == "cpu" else torch.poisson(lin * fw)
    e = e + rn * torch.randn(e.shape, device=dev)
    if fast:
        return O.linear_to_srgb8_lut(e / fw)
    out = O.linear_to_srgb(e / fw)
    return torch.round(out * 255.0).clamp(0, 255)


def sparse_tissue_masks(b: int, gen: torch.Generator, frac=(0.03, 0.4), device="cpu", patch_px: int = PATCH) -> torch.Tensor:
    """[b,1,CROP,CROP] specimen masks (1 = tissue, 0 = bare glass) whose tissue share inside the central PATCH is drawn
    from `frac`: a tissue edge at a random angle, wavy (low-frequency noise), with a 1-3 px soft boundary. Tiles at a
    section's rim reach the network as mostly-glass patches; without such patches in training the network reads the
    featureless glass as blur (an in-focus rim tile came out at 2-3 µm)."""
    crop = patch_px + 2 * MARGIN
    c = torch.arange(crop, dtype=torch.float32, device=device) - crop / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    inner = ((yy.abs() < patch_px / 2) & (xx.abs() < patch_px / 2)).flatten()
    th = (torch.rand(b, 1, 1, generator=gen) * 2 * math.pi).to(device)
    wav = F.interpolate(torch.randn(b, 1, 6, 6, generator=gen).to(device), size=(crop, crop), mode="bicubic", align_corners=False)[:, 0]
    u = xx * torch.cos(th) + yy * torch.sin(th) + wav * _u((0.0, 25.0), (b, 1, 1), gen, device)
    f = _u(frac, (b, 1), gen, device)
    sub = u.flatten(1)[:, inner][:, ::7]  # a subsample of the central patch: plenty for a threshold
    srt = sub.sort(dim=1).values
    t = srt.gather(1, ((1 - f).clamp(0, 1) * (srt.shape[1] - 1)).long())  # per-mask (1 - f) quantile
    edge = _u((1.0, 3.0), (b, 1, 1), gen, device)
    return torch.sigmoid((u - t.view(b, 1, 1)) / edge)[:, None]


def on_glass_od(od: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """on_glass in optical density: glass has OD 0."""
    return od * mask


def on_glass(srgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Specimen crops [B,3,S,S] with bare glass (transmittance 1, white before illumination) where mask [B,1,S,S] is 0:
    the rim is part of the specimen, so it goes through the optics with the tissue."""
    return srgb * mask + (1 - mask)


def stain_matrices(b: int, gen: torch.Generator, var: Variation) -> torch.Tensor:
    """[b,3,3] non-negative OD mixing matrices: identity (or a channel permutation) plus random off-diagonal weights,
    rows rescaled so each output channel keeps its mean density scale."""
    eye = torch.eye(3).expand(b, 3, 3).clone()
    perm = torch.rand(b, generator=gen) < var.stain_permute
    for i in torch.nonzero(perm).flatten().tolist():
        eye[i] = eye[i][torch.randperm(3, generator=gen)]
    off = torch.rand(b, 3, 3, generator=gen) * var.stain_mix
    m = eye + off * (1 - eye)
    return m / m.sum(dim=2, keepdim=True)


# |z| band around the daemon's default tolerance (±1 µm) where the in/out verdict is decided. The closed-loop oracle
# (docs/simulator.md, `focusd simulate --oracle`) puts the loop's targets at about <= 0.1 µm unbiased |d| error here.
BOUNDARY_UM = (0.5, 1.5)


def sample_z(b: int, gen: torch.Generator, z_max: float, near_frac: float = 0.5, near: float = 4.0,
             boundary_frac: float = 0.0, boundary: tuple = BOUNDARY_UM) -> torch.Tensor:
    """Continuous z: a mix of uniform over [-z_max, z_max] and uniform over [-near, near] (more samples near focus);
    with boundary_frac > 0 that share is replaced by |z| uniform over `boundary` with a random sign (draws for it are
    taken only then, so boundary_frac = 0 gives exactly the z of the 0.1/0.2 generator)."""
    zf = (torch.rand(b, generator=gen) * 2 - 1) * z_max
    zn = (torch.rand(b, generator=gen) * 2 - 1) * near
    pick = torch.rand(b, generator=gen) < near_frac
    z = torch.where(pick, zn, zf)
    if boundary_frac > 0:
        lo, hi = boundary
        mag = lo + torch.rand(b, generator=gen) * (hi - lo)
        sgn = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
        z = torch.where(torch.rand(b, generator=gen) < boundary_frac, sgn * mag, z)
    return z


def glass_patches(b: int, gen: torch.Generator, device, dust: bool = True) -> torch.Tensor:
    """No-tissue patches (8-bit float, [B,3,PATCH,PATCH]): clean glass with illumination gradient, optional dust."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, PATCH), torch.linspace(-1, 1, PATCH), indexing="ij")
    base = _u((0.72, 0.95), (b, 1, 1, 1), gen, "cpu") * _u((0.96, 1.04), (b, 3, 1, 1), gen, "cpu")
    grad = 1 + 0.04 * (_u((-1, 1), (b, 1, 1, 1), gen, "cpu") * yy + _u((-1, 1), (b, 1, 1, 1), gen, "cpu") * xx)
    lin = (base * grad).clone()
    if dust:
        for i in range(b):
            for _ in range(int(torch.randint(0, 12, (1,), generator=gen))):
                cy, cx = (torch.rand(2, generator=gen) * PATCH).tolist()
                r = float(_u((0.7, 5.0), (1,), gen, "cpu"))
                sigma = float(_u((0.5, 6.0), (1,), gen, "cpu"))  # dust lies off the focal plane: blurred
                d = ((yy * PATCH / 2 + PATCH / 2 - cy) ** 2 + (xx * PATCH / 2 + PATCH / 2 - cx) ** 2).sqrt()
                m = torch.sigmoid((r - d) / max(sigma, 0.5))
                lin[i] = lin[i] * (1 - 0.7 * m)
    lin = lin.to(device).clamp(0, 1)
    e = torch.poisson(lin * 10000.0) + 5 * torch.randn(lin.shape, device=device)
    return torch.round(O.linear_to_srgb(e / 10000.0) * 255).clamp(0, 255)


def rim_patches(sources: list[Source], b: int, gen: torch.Generator, device, tissue_frac=(0.02, 0.2)) -> torch.Tensor:
    """Tissue-rim patches: mostly glass with a thin sliver of in-focus tissue along one edge."""
    crops = random_crops(sources, b, gen, Variation(), "cpu")[:, :, MARGIN:MARGIN + PATCH, MARGIN:MARGIN + PATCH].cpu()
    glass = glass_patches(b, gen, "cpu", dust=False) / 255.0
    out = torch.empty_like(glass)
    xs = torch.linspace(0, 1, PATCH)[None, :].expand(PATCH, PATCH)
    for i in range(b):
        f = float(_u(tissue_frac, (1,), gen, "cpu"))
        m = torch.sigmoid((f - xs) * 200)
        out[i] = crops[i] * m + glass[i] * (1 - m)
    return torch.round(out * 255).clamp(0, 255).to(device)


def normalise(x8: torch.Tensor, norm: dict) -> torch.Tensor:
    mean = torch.tensor(norm["mean"], device=x8.device).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"], device=x8.device).view(1, 3, 1, 1)
    return (x8 * norm["scale"] - mean) / std


NORMALISATION = {"scale": 1.0 / 255.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
