"""Physical defocus model: incoherent scalar PSF of a circular pupil with non-paraxial defocus.

Everything is batched torch so the same code runs on CPU (tests) and CUDA (training).

Sign convention: z > 0 means the specimen is above the focal plane (stage must move down), matching
models/manifest.ts. The defocus aberration is the exact (non-paraxial) optical path difference
    W(rho) = z_eff * (n - sqrt(n^2 - (NA*rho)^2))            [µm]
with rho the normalised pupil radius, plus primary spherical aberration in waves
    2*pi * sa * (6 rho^4 - 6 rho^2 + 1)
The spherical term is what makes +z and -z look different (and the sign learnable).
Each colour channel has its own wavelength and its own best-focus position (axial chromatic shift):
z_eff = z - chroma_c.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, asdict
from typing import Sequence

import torch


@dataclass
class Optics:
    """One set of optics. Defaults: Zeiss AXIO Scan Z.1, Plan-Apochromat 20x/0.8 in air, ~0.22 µm/px."""

    na: float = 0.8
    n: float = 1.0
    pixel_um: float = 0.22
    wavelengths_um: Sequence[float] = (0.61, 0.54, 0.46)
    # z at which each channel is sharpest (µm); green defines z = 0.
    chroma_um: Sequence[float] = (0.25, 0.0, -0.2)
    # primary spherical aberration coefficient (waves), e.g. from cover-glass / mounting mismatch.
    sa_waves: float = 0.15

    def to_dict(self) -> dict:
        d = asdict(self)
        d["wavelengths_um"] = list(self.wavelengths_um)
        d["chroma_um"] = list(self.chroma_um)
        return d


@dataclass
class OpticsRanges:
    """Ranges sampled uniformly during training (every parameter randomised around the defaults).

    The defaults are the 0.1/0.2 training ranges (one instrument family: spherical aberration and axial colour of a
    fixed sign). The sign/near-zero fields below default to 0 (= that family); INSTRUMENT_RANGES sets them.
      sa_sign_flip      probability that the spherical aberration is negative (SA changes sign with cover-glass
                        thickness / mounting medium: from slide to slide on one instrument)
      chroma_sign_flip  probability that the axial colour is reversed (R and B focus shifts negated). Axial colour is
                        fixed by the objective, i.e. per instrument, which `focusd calibrate` measures (sign: inverted).
      chroma_near_zero  probability that the axial colour is scaled down by U(chroma_near_zero_scale) (apochromats)
    """

    na: tuple = (0.75, 0.85)
    n: tuple = (1.0, 1.0)
    pixel_um: tuple = (0.20, 0.25)
    wavelengths_um: tuple = ((0.59, 0.63), (0.52, 0.56), (0.44, 0.48))
    chroma_um: tuple = ((0.05, 0.45), (0.0, 0.0), (-0.40, -0.05))
    sa_waves: tuple = (0.0, 0.35)
    sa_sign_flip: float = 0.0
    chroma_sign_flip: float = 0.0
    chroma_near_zero: float = 0.0
    chroma_near_zero_scale: tuple = (0.0, 0.15)


# Training over instruments (model 0.3): spherical aberration of both signs up to 0.4 waves, axial colour of both sizes
# down to ~0 (apochromats), wider NA / pixel size / wavelengths. The sign of the axial colour stays that of the
# training convention (R focuses behind G, B in front): PSF(z, SA, colour) == PSF(-z, -SA, -colour) exactly
# (tests/test_instruments.py), so with both signs random and independent no image could tell the sign of z at all.
# The sign is therefore read relative to the objective's axial colour (fixed per instrument, recovered per instrument by
# `focusd calibrate` as model/inverted), and spherical aberration, whose sign varies from slide to slide, is a nuisance
# the model must not trust. Where the colour cue is ~0, nothing fixed per instrument tells the sign: the data are then
# symmetric in z and the loss-optimal sign_logit is 0 (confidence 0.5).
INSTRUMENT_RANGES = OpticsRanges(
    na=(0.6, 0.85), pixel_um=(0.20, 0.26),  # NA > 0.85 at < 0.2 µm/px would outgrow the 128 px kernel at |z| = 8 µm
    wavelengths_um=((0.58, 0.65), (0.51, 0.57), (0.43, 0.49)),
    chroma_um=((0.05, 0.5), (0.0, 0.0), (-0.45, -0.05)),
    sa_waves=(0.0, 0.4), sa_sign_flip=0.5, chroma_sign_flip=0.0, chroma_near_zero=0.2)


@dataclass
class OpticsBatch:
    """Per-sample optics parameters as tensors ([B] or [B,3])."""

    na: torch.Tensor
    n: torch.Tensor
    pixel_um: torch.Tensor
    wl: torch.Tensor
    chroma: torch.Tensor
    sa: torch.Tensor

    @staticmethod
    def fixed(o: Optics, b: int, device="cpu") -> "OpticsBatch":
        f = lambda v: torch.full((b,), float(v), device=device, dtype=torch.float64)
        g = lambda v: torch.tensor(list(v), device=device, dtype=torch.float64).expand(b, 3).clone()
        return OpticsBatch(f(o.na), f(o.n), f(o.pixel_um), g(o.wavelengths_um), g(o.chroma_um), f(o.sa_waves))

    @staticmethod
    def sample(r: OpticsRanges, b: int, gen: torch.Generator, device="cpu") -> "OpticsBatch":
        def u(lo_hi):
            lo, hi = lo_hi
            return lo + (hi - lo) * torch.rand(b, generator=gen, dtype=torch.float64).to(device)

        ob = OpticsBatch(
            u(r.na), u(r.n), u(r.pixel_um),
            torch.stack([u(x) for x in r.wavelengths_um], 1),
            torch.stack([u(x) for x in r.chroma_um], 1),
            u(r.sa_waves),
        )
        # sign flips / near-zero colour: drawn only when enabled, so the 0.2 ranges keep their random stream
        if r.sa_sign_flip > 0:
            ob.sa = ob.sa * torch.where(torch.rand(b, generator=gen, dtype=torch.float64) < r.sa_sign_flip, -1.0, 1.0).to(device)
        if r.chroma_sign_flip > 0:
            ob.chroma = ob.chroma * torch.where(torch.rand(b, generator=gen, dtype=torch.float64) < r.chroma_sign_flip, -1.0, 1.0).to(device)[:, None]
        if r.chroma_near_zero > 0:
            small = (torch.rand(b, generator=gen, dtype=torch.float64) < r.chroma_near_zero).to(device)
            ob.chroma = ob.chroma * torch.where(small, u(r.chroma_near_zero_scale), torch.ones_like(ob.sa))[:, None]
        return ob

    def take(self, idx) -> "OpticsBatch":
        return OpticsBatch(self.na[idx], self.n[idx], self.pixel_um[idx], self.wl[idx], self.chroma[idx], self.sa[idx])


def psf_kernels(z: torch.Tensor, ob: OpticsBatch, size_px: int = 128, oversample: int = 3,
                normalise: bool = True, fast: bool = False) -> torch.Tensor:
    """Pixel-integrated incoherent PSF per channel, [B,3,size_px,size_px], centred at (size_px//2, size_px//2).

    The pupil is sampled on a grid `oversample` times finer than the camera pixel; |IFFT(pupil)|^2 is the
    intensity PSF, which is then integrated over each (square, 100 % fill) camera pixel.
    fast=True: the phase in float64, the pupil and FFT in complex64 (the PSF bank; max abs difference ~1e-7 of the
    kernel peak, tests/test_instruments.py).
    With normalise=False the kernel keeps the absolute energy (sum over the full field equals the pupil
    transmission, i.e. is independent of z: energy conservation, checked by the tests).
    """
    dev = z.device
    b = z.shape[0]
    k = size_px * oversample
    f = torch.fft.fftfreq(k, device=dev, dtype=torch.float64)  # cycles per fine sample
    fr = torch.sqrt(f[None, :] ** 2 + f[:, None] ** 2)  # [K,K]
    dxs = (ob.pixel_um / oversample).to(torch.float64)  # µm per fine sample
    # n*sin(theta) = lambda * f_phys ; rho = n sin(theta) / NA
    s = fr[None, None] / dxs[:, None, None, None] * ob.wl[:, :, None, None]  # [B,3,K,K] = n sin(theta)
    na = ob.na[:, None, None, None]
    n = ob.n[:, None, None, None]
    rho = s / na
    inside = rho <= 1.0
    s_in = torch.where(inside, s, torch.zeros_like(s))
    rho_in = torch.where(inside, rho, torch.zeros_like(rho))
    z_eff = (z.to(torch.float64)[:, None] - ob.chroma)[:, :, None, None]
    w_defocus = z_eff * (n - torch.sqrt(n * n - s_in * s_in))  # µm optical path
    phase = 2 * math.pi / ob.wl[:, :, None, None] * w_defocus
    phase = phase + 2 * math.pi * ob.sa[:, None, None, None] * (6 * rho_in ** 4 - 6 * rho_in ** 2 + 1)
    if fast:  # wrap the phase before the float32 cast so large defocus keeps its precision
        phase = torch.remainder(phase, 2 * math.pi).to(torch.float32)
        pupil = torch.polar(inside.to(torch.float32), phase)
    else:
        pupil = torch.polar(inside.to(torch.float64), phase)
    h = torch.fft.ifft2(pupil)  # amplitude PSF; sum|h|^2 = sum|P|^2 / K^2 (Parseval)
    psf = (h.real ** 2 + h.imag ** 2).to(torch.float32)
    # move the origin to the centre of a camera pixel: fine index K/2 + oversample//2 is the middle of
    # the fine samples [K/2, K/2 + oversample) that make up pixel size_px//2.
    psf = torch.roll(psf, shifts=(k // 2 + oversample // 2, k // 2 + oversample // 2), dims=(-2, -1))
    psf = torch.nn.functional.avg_pool2d(psf.reshape(b * 3, 1, k, k), oversample) * oversample ** 2
    # Parseval: sum |h|^2 = sum |P|^2 / K^2, so K^2/area makes the total energy 1 for every z.
    psf = psf.reshape(b, 3, size_px, size_px) * k * k
    if normalise:
        psf = psf / psf.sum(dim=(-2, -1), keepdim=True)
    else:
        area = inside.to(torch.float32).sum(dim=(-2, -1), keepdim=True)
        psf = psf / area
    return psf


def convolve(img: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Circular FFT convolution of img [B,3,H,W] with centred kernels [B,3,P,P] (P <= H,W).

    Callers crop a margin of P/2 afterwards, so the wrap-around never reaches the output.
    """
    b, c, h, w = img.shape
    p = kernels.shape[-1]
    q = p // 2  # kernel centre -> index (0, 0), the rest wrapped around (what zero-pad + roll by -q gives)
    kpad = torch.zeros((b, c, h, w), dtype=img.dtype, device=img.device)
    kpad[:, :, :p - q, :p - q] = kernels[:, :, q:, q:]
    kpad[:, :, :p - q, w - q:] = kernels[:, :, q:, :q]
    kpad[:, :, h - q:, :p - q] = kernels[:, :, :q, q:]
    kpad[:, :, h - q:, w - q:] = kernels[:, :, :q, :q]
    out = torch.fft.irfft2(torch.fft.rfft2(img) * torch.fft.rfft2(kpad), s=(h, w))
    return out


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


_SRGB8_LUT = None


def linear_to_srgb8_lut(x: torch.Tensor) -> torch.Tensor:
    """round(255 * linear_to_srgb(x)) by table lookup (2^18 linear levels): the fast generator's sRGB encode."""
    global _SRGB8_LUT
    n = (1 << 18) - 1
    if _SRGB8_LUT is None:
        _SRGB8_LUT = torch.round(linear_to_srgb(torch.arange(n + 1, dtype=torch.float64) / n) * 255).float()
    return _SRGB8_LUT.to(x.device)[(x.clamp(0, 1) * n + 0.5).long()]


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)
