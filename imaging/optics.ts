/**
 * Our own optics model of defocus: incoherent imaging through a circular pupil (NA 0.8, dry), per-channel
 * wavelength, non-paraxial defocus phase 2π/λ·(z − chroma_c)·(n − sqrt(n²−NA²ρ²)), a small primary spherical
 * aberration 2π·SA·(6ρ⁴−6ρ²+1) (SA in waves) so that +z and −z blur differently, and an axial chromatic focus
 * shift per channel. This is the same pupil, the same signs and the same defaults as the training optics
 * (models/training/optics.py): the shipped CNN reads the sign from exactly these asymmetries, and
 * test/imaging/optics-parity.test.ts holds the two implementations together. The radial PSF is computed
 * exactly (1-D Hankel integral of the pupil), its MTF by a second Hankel transform, times the pixel aperture.
 * APPROXIMATION (documented): the blur is applied as a least-squares fit of that radial MTF by a weighted sum
 * of isotropic Gaussians (weights may be negative, so the first negative lobe of a defocused MTF is roughly
 * followed), each Gaussian separable and run as a recursive (Young–van Vliet) filter, on a 2×/4× downsampled
 * image for wide Gaussians. Cost is O(pixels) regardless of z.
 *
 * Used by the procedural tile generator (sim/procedural.ts) and the classical scorer's calibration.
 */
export interface OpticsParams {
  na: number;
  /** refractive index of the immersion medium (air: 1). */
  immersionIndex: number;
  /** wavelength per R, G, B channel, µm. */
  wavelengthsUm: [number, number, number];
  /**
   * axial chromatic focus shift per channel, µm: the z at which that channel is sharpest (green defines z = 0),
   * so the channel sees z − shift. Same meaning as `chroma_um` in models/training/optics.py.
   */
  chromaticShiftUm: [number, number, number];
  /**
   * primary spherical aberration in waves: coefficient of the unnormalised Zernike polynomial 6ρ⁴ − 6ρ² + 1
   * (RMS = coefficient/√5), the same number of waves in every channel. Same as `sa_waves` in optics.py, whose
   * definition the shipped model was trained with (a fixed wavefront error in µm would be ∝ 1/λ in waves; the
   * training model ignores that, so we do too).
   */
  sphericalWaves: number;
}

/** The Python training defaults (models/training/optics.py `Optics`); test/imaging/optics-parity.test.ts checks they agree. */
export const DEFAULT_OPTICS: OpticsParams = {
  na: 0.8,
  immersionIndex: 1.0,
  wavelengthsUm: [0.61, 0.54, 0.46],
  chromaticShiftUm: [0.25, 0, -0.2],
  sphericalWaves: 0.15,
};

// ---------------------------------------------------------------- random numbers

// ---------------------------------------------------------------- optics

/** Bessel J0 (Numerical Recipes rational approximations, |err| < 1e-7). */
function besselJ0(x: number): number {
  const ax = Math.abs(x);
  if (ax < 8) {
    const y = x * x;
    const a1 = 57568490574.0 + y * (-13362590354.0 + y * (651619640.7 + y * (-11214424.18 + y * (77392.33017 + y * -184.9052456))));
    const a2 = 57568490411.0 + y * (1029532985.0 + y * (9494680.718 + y * (59272.64853 + y * (267.8532712 + y))));
    return a1 / a2;
  }
  const z = 8 / ax;
  const y = z * z;
  const xx = ax - 0.785398164;
  const p1 = 1 + y * (-0.1098628627e-2 + y * (0.2734510407e-4 + y * (-0.2073370639e-5 + y * 0.2093887211e-6)));
  const p2 = -0.1562499995e-1 + y * (0.1430488765e-3 + y * (-0.6911147651e-5 + y * (0.7621095161e-6 - y * 0.934935152e-7)));
  return Math.sqrt(0.636619772 / ax) * (Math.cos(xx) * p1 - z * Math.sin(xx) * p2);
}

/** A channel's blur as Σ w_k·Gaussian(σ_k) (σ = 0 is the identity). */
export interface BlurKernel {
  sigmasPx: number[];
  weights: number[];
  /** RMS error of the fitted MTF against the exact one, over 0..Nyquist. */
  fitRms: number;
}

/** Exact radial MTF samples of one channel at defocus z: frequencies in cycles/pixel, 0..0.5. */
export function channelMtf(p: OpticsParams, channel: 0 | 1 | 2, zUm: number, pixelSizeUm: number, nf = 48): { f: Float64Array; mtf: Float64Array } {
  const lambda = p.wavelengthsUm[channel];
  const n = p.immersionIndex;
  // the channel's own defocus: positive z = specimen above (towards the objective) its focal plane
  const z = zUm - p.chromaticShiftUm[channel];
  const k = (2 * Math.PI) / lambda;
  const tanTheta = p.na / Math.sqrt(Math.max(1e-6, n * n - p.na * p.na));
  // radial extent of the PSF: geometric blur radius + a few Airy radii
  const rMax = Math.abs(z) * tanTheta + 6 * (0.61 * lambda) / p.na + 1;
  const dr = Math.min(0.04, rMax / 200);
  const nr = Math.ceil(rMax / dr) + 1;
  // pupil sampling fine enough that the phase step between samples stays < ~0.4 rad
  const maxSlope = k * Math.abs(z) * (p.na * p.na) / Math.sqrt(Math.max(1e-6, n * n - p.na * p.na)) + 2 * Math.PI * Math.abs(p.sphericalWaves) * 24;
  const nrho = Math.min(4000, Math.max(200, Math.ceil(maxSlope / 0.4)));
  const re = new Float64Array(nrho);
  const im = new Float64Array(nrho);
  const rho = new Float64Array(nrho);
  for (let i = 0; i < nrho; i++) {
    const r = (i + 0.5) / nrho;
    rho[i] = r;
    const r2 = r * r;
    // Angular spectrum of a point source at height z above the focal plane, seen in the focal plane:
    // exp(−i·k·z·sqrt(n² − NA²ρ²)) = piston · exp(+i·k·z·(n − sqrt(n² − NA²ρ²))). Spherical aberration enters
    // with the same +i convention, so its sign relative to z decides which side of focus blurs more.
    const phase = k * z * (n - Math.sqrt(n * n - p.na * p.na * r2)) + 2 * Math.PI * p.sphericalWaves * (6 * r2 * r2 - 6 * r2 + 1);
    // ρ dρ weight folded in
    re[i] = Math.cos(phase) * r;
    im[i] = Math.sin(phase) * r;
  }
  const psf = new Float64Array(nr);
  const scale = (2 * Math.PI * p.na) / lambda;
  for (let j = 0; j < nr; j++) {
    const r = j * dr;
    let sr = 0;
    let si = 0;
    const a = scale * r;
    for (let i = 0; i < nrho; i++) {
      const b = besselJ0(a * rho[i]!);
      sr += re[i]! * b;
      si += im[i]! * b;
    }
    psf[j] = sr * sr + si * si;
  }
  const f = new Float64Array(nf + 1);
  const mtf = new Float64Array(nf + 1);
  let m0 = 0;
  for (let j = 0; j < nr; j++) m0 += psf[j]! * j * dr;
  for (let q = 0; q <= nf; q++) {
    const fpx = (0.5 * q) / nf;
    const fum = fpx / pixelSizeUm;
    let s = 0;
    for (let j = 0; j < nr; j++) {
      const r = j * dr;
      s += psf[j]! * besselJ0(2 * Math.PI * fum * r) * r;
    }
    // pixel aperture (square pixel, radially averaged as a sinc)
    const pix = fpx === 0 ? 1 : Math.sin(Math.PI * fpx) / (Math.PI * fpx);
    f[q] = fpx;
    mtf[q] = (s / m0) * pix;
  }
  return { f, mtf };
}

/** Solves the small dense system A x = b (Gaussian elimination with partial pivoting). */
function solve(A: number[][], b: number[]): number[] {
  const n = b.length;
  const M = A.map((row, i) => [...row, b[i]!]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(M[r]![c]!) > Math.abs(M[p]![c]!)) p = r;
    [M[c], M[p]] = [M[p]!, M[c]!];
    const d = M[c]![c]! || 1e-12;
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const fct = M[r]![c]! / d;
      for (let k = c; k <= n; k++) M[r]![k]! -= fct * M[c]![k]!;
    }
  }
  return M.map((row, i) => row[n]! / (row[i]! || 1e-12));
}

/** Least-squares weights for fixed sigmas, Σw = 1 enforced by a heavily weighted DC row; returns weights and RMS error. */
function lsq(f: Float64Array, mtf: Float64Array, sig: number[]): { w: number[]; rms: number } {
  const K = sig.length;
  const basis = (k: number, fq: number) => Math.exp(-2 * Math.PI * Math.PI * sig[k]! * sig[k]! * fq * fq);
  const A: number[][] = Array.from({ length: K }, () => new Array<number>(K).fill(0));
  const b = new Array<number>(K).fill(0);
  for (let q = 0; q < f.length; q++) {
    const wq = q === 0 ? 1e4 : 1; // the blur must preserve mean intensity
    for (let i = 0; i < K; i++) {
      const bi = basis(i, f[q]!);
      b[i]! += wq * bi * mtf[q]!;
      for (let j = 0; j < K; j++) A[i]![j]! += wq * bi * basis(j, f[q]!);
    }
  }
  for (let i = 0; i < K; i++) A[i]![i]! += 1e-4; // ridge: neighbouring Gaussians are nearly collinear
  const w = solve(A, b);
  let err = 0;
  for (let q = 0; q < f.length; q++) {
    let m = 0;
    for (let k = 0; k < K; k++) m += w[k]! * basis(k, f[q]!);
    err += (m - mtf[q]!) ** 2;
  }
  return { w, rms: Math.sqrt(err / f.length) };
}

/**
 * Fits Σ w_k exp(−2π²σ_k²f²) to an MTF (Σw = 1). Starts from a log-spaced sigma set spanning the blur and
 * greedily drops components while the fit stays good, because every Gaussian costs a filtering pass.
 */
export function fitGaussians(f: Float64Array, mtf: Float64Array, blurRadiusPx: number): BlurKernel {
  let sig = [0, 0.5, 0.9];
  for (let s = 1.5; s < Math.max(2, blurRadiusPx * 0.9); s *= 1.6) sig.push(s);
  if (sig.length > 8) sig = [0, 0.6, ...sig.slice(sig.length - 6)];
  let best = lsq(f, mtf, sig);
  const tol = Math.max(0.02, best.rms * 1.3);
  while (sig.length > 1) {
    let cand: { sig: number[]; fit: { w: number[]; rms: number } } | null = null;
    for (let i = 0; i < sig.length; i++) {
      const s2 = sig.filter((_, j) => j !== i);
      const fit = lsq(f, mtf, s2);
      if (!cand || fit.rms < cand.fit.rms) cand = { sig: s2, fit };
    }
    if (!cand || cand.fit.rms > tol) break;
    sig = cand.sig;
    best = cand.fit;
  }
  return { sigmasPx: sig, weights: best.w, fitRms: best.rms };
}

/** Our optics model; holds a cache of blur kernels per (channel, z, pixel size). */
export class DefocusOptics {
  private readonly cache = new Map<string, BlurKernel>();
  readonly params: OpticsParams;
  constructor(params: Partial<OpticsParams> = {}) {
    this.params = { ...DEFAULT_OPTICS, ...params };
  }

  kernel(channel: 0 | 1 | 2, zUm: number, pixelSizeUm: number): BlurKernel {
    const key = `${channel}:${zUm.toFixed(3)}:${pixelSizeUm.toFixed(4)}`;
    const hit = this.cache.get(key);
    if (hit) return hit;
    const { f, mtf } = channelMtf(this.params, channel, zUm, pixelSizeUm);
    const p = this.params;
    const tanTheta = p.na / Math.sqrt(p.immersionIndex ** 2 - p.na ** 2);
    const rPx = (Math.abs(zUm - p.chromaticShiftUm[channel]) * tanTheta) / pixelSizeUm;
    const k = fitGaussians(f, mtf, rPx);
    if (this.cache.size > 256) this.cache.clear();
    this.cache.set(key, k);
    return k;
  }

  /** Blurs one linear-light plane in place-free fashion: returns a new plane. */
  blurPlane(src: Float32Array, w: number, h: number, k: BlurKernel): Float32Array {
    // a uniform plane (empty glass) is unchanged by any blur that preserves the mean
    let lo = Infinity, hi = -Infinity;
    for (let j = 0; j < src.length; j++) {
      const v = src[j]!;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (hi - lo < 1e-7) return src.slice();
    const out = new Float32Array(w * h);
    const tmp = new Float32Array(w * h);
    for (let i = 0; i < k.sigmasPx.length; i++) {
      const s = k.sigmasPx[i]!;
      const wt = k.weights[i]!;
      if (s === 0) {
        for (let j = 0; j < out.length; j++) out[j]! += wt * src[j]!;
        continue;
      }
      gaussianBlur(src, tmp, w, h, s);
      for (let j = 0; j < out.length; j++) out[j]! += wt * tmp[j]!;
    }
    return out;
  }
}

// ---------------------------------------------------------------- separable Gaussian filters

/** dst = G_σ * src (replicated edges). Small σ: exact FIR; large σ: downsample, recursive filter, upsample. */
export function gaussianBlur(src: Float32Array, dst: Float32Array, w: number, h: number, sigma: number): void {
  if (sigma < 2) {
    firBlur(src, dst, w, h, sigma);
    return;
  }
  const f = sigma >= 16 ? 8 : sigma >= 6 ? 4 : sigma >= 2.5 ? 2 : 1;
  if (f === 1) {
    dst.set(src);
    iirBlur(dst, w, h, sigma);
    return;
  }
  const dw = Math.ceil(w / f);
  const dh = Math.ceil(h / f);
  const small = new Float32Array(dw * dh);
  boxDown(src, w, h, f, small, dw, dh);
  // box-averaging and bilinear upsampling each add about f²/12 and f²/6 of variance (pixels²)
  const sd = Math.sqrt(Math.max(0.25, sigma * sigma - (f * f) / 4)) / f;
  iirBlur(small, dw, dh, sd);
  bilinearUp(small, dw, dh, f, dst, w, h);
}

function firBlur(src: Float32Array, dst: Float32Array, w: number, h: number, sigma: number): void {
  const r = Math.max(1, Math.ceil(2.5 * sigma));
  const ker = new Float32Array(2 * r + 1);
  let sum = 0;
  for (let i = -r; i <= r; i++) sum += ker[i + r] = Math.exp((-i * i) / (2 * sigma * sigma));
  for (let i = 0; i < ker.length; i++) ker[i]! /= sum;
  const tmp = new Float32Array(w * h);
  // horizontal
  for (let y = 0; y < h; y++) {
    const o = y * w;
    for (let x = 0; x < w; x++) {
      let acc = 0;
      if (x >= r && x < w - r) {
        const b = o + x - r;
        for (let i = 0; i < ker.length; i++) acc += ker[i]! * src[b + i]!;
      } else {
        for (let i = -r; i <= r; i++) {
          const xx = x + i < 0 ? 0 : x + i >= w ? w - 1 : x + i;
          acc += ker[i + r]! * src[o + xx]!;
        }
      }
      tmp[o + x] = acc;
    }
  }
  // vertical, row by row (cache friendly)
  dst.fill(0);
  for (let y = 0; y < h; y++) {
    const o = y * w;
    for (let i = -r; i <= r; i++) {
      const yy = y + i < 0 ? 0 : y + i >= h ? h - 1 : y + i;
      const kk = ker[i + r]!;
      const oo = yy * w;
      for (let x = 0; x < w; x++) dst[o + x]! += kk * tmp[oo + x]!;
    }
  }
}

/** Young & van Vliet (1995) recursive Gaussian, in place, rows then columns (columns processed row-wise). */
function iirBlur(a: Float32Array, w: number, h: number, sigma: number): void {
  const q = sigma >= 2.5 ? 0.98711 * sigma - 0.9633 : 3.97156 - 4.14554 * Math.sqrt(1 - 0.26891 * sigma);
  const b0 = 1.57825 + 2.44413 * q + 1.4281 * q * q + 0.422205 * q * q * q;
  const b1 = (2.44413 * q + 2.85619 * q * q + 1.26661 * q * q * q) / b0;
  const b2 = -(1.4281 * q * q + 1.26661 * q * q * q) / b0;
  const b3 = (0.422205 * q * q * q) / b0;
  const B = 1 - (b1 + b2 + b3);
  // rows
  for (let y = 0; y < h; y++) {
    const o = y * w;
    let w1 = a[o]!, w2 = w1, w3 = w1;
    for (let x = 0; x < w; x++) {
      const v = B * a[o + x]! + b1 * w1 + b2 * w2 + b3 * w3;
      a[o + x] = v;
      w3 = w2; w2 = w1; w1 = v;
    }
    w1 = a[o + w - 1]!; w2 = w1; w3 = w1;
    for (let x = w - 1; x >= 0; x--) {
      const v = B * a[o + x]! + b1 * w1 + b2 * w2 + b3 * w3;
      a[o + x] = v;
      w3 = w2; w2 = w1; w1 = v;
    }
  }
  // columns, all at once row by row
  const p1 = new Float32Array(w), p2 = new Float32Array(w), p3 = new Float32Array(w);
  p1.set(a.subarray(0, w)); p2.set(p1); p3.set(p1);
  for (let y = 0; y < h; y++) {
    const o = y * w;
    for (let x = 0; x < w; x++) {
      const v = B * a[o + x]! + b1 * p1[x]! + b2 * p2[x]! + b3 * p3[x]!;
      a[o + x] = v;
      p3[x] = p2[x]!; p2[x] = p1[x]!; p1[x] = v;
    }
  }
  const last = (h - 1) * w;
  p1.set(a.subarray(last, last + w)); p2.set(p1); p3.set(p1);
  for (let y = h - 1; y >= 0; y--) {
    const o = y * w;
    for (let x = 0; x < w; x++) {
      const v = B * a[o + x]! + b1 * p1[x]! + b2 * p2[x]! + b3 * p3[x]!;
      a[o + x] = v;
      p3[x] = p2[x]!; p2[x] = p1[x]!; p1[x] = v;
    }
  }
}

function boxDown(src: Float32Array, w: number, h: number, f: number, dst: Float32Array, dw: number, dh: number): void {
  dst.fill(0);
  const cnt = new Float32Array(dw * dh);
  for (let y = 0; y < h; y++) {
    const dy = ((y / f) | 0) * dw;
    const o = y * w;
    for (let x = 0; x < w; x++) {
      const d = dy + ((x / f) | 0);
      dst[d]! += src[o + x]!;
      cnt[d]! += 1;
    }
  }
  for (let i = 0; i < dst.length; i++) dst[i]! /= cnt[i]!;
}

function bilinearUp(src: Float32Array, sw: number, sh: number, f: number, dst: Float32Array, w: number, h: number): void {
  const x0 = new Int32Array(w), x1 = new Int32Array(w), fx = new Float32Array(w);
  for (let x = 0; x < w; x++) {
    const sx = Math.min(sw - 1, Math.max(0, (x + 0.5) / f - 0.5));
    x0[x] = Math.floor(sx);
    x1[x] = Math.min(sw - 1, x0[x]! + 1);
    fx[x] = sx - x0[x]!;
  }
  for (let y = 0; y < h; y++) {
    const sy = Math.min(sh - 1, Math.max(0, (y + 0.5) / f - 0.5));
    const y0 = Math.floor(sy);
    const y1 = Math.min(sh - 1, y0 + 1);
    const fy = sy - y0;
    const r0 = y0 * sw, r1 = y1 * sw, o = y * w;
    for (let x = 0; x < w; x++) {
      const a = src[r0 + x0[x]!]! + fx[x]! * (src[r0 + x1[x]!]! - src[r0 + x0[x]!]!);
      const b = src[r1 + x0[x]!]! + fx[x]! * (src[r1 + x1[x]!]! - src[r1 + x0[x]!]!);
      dst[o + x] = a + fy * (b - a);
    }
  }
}
