/**
 * Procedural, seeded, tissue-like brightfield tiles and our own optics model to defocus them.
 *
 * Used by tests, the demo and the benchmark: no real slide image ever enters the repository.
 *
 * Scene: stain concentrations (hematoxylin, eosin or PAS) are rendered per pixel in µm units (so the
 * scene scales with pixel size), turned into transmittance with Beer-Lambert, blurred in LINEAR light by
 * the defocus PSF of each colour channel, lit by a slightly uneven white illumination, hit by Poisson-Gaussian
 * sensor noise and quantised to 8-bit sRGB. Glass reads ≈ 240-250.
 *
 * Optics (DefocusOptics): incoherent imaging through a circular pupil (NA 0.8, dry), per-channel wavelength,
 * non-paraxial defocus phase 2π/λ·(z − chroma_c)·(n − sqrt(n²−NA²ρ²)), a small primary spherical aberration
 * 2π·SA·(6ρ⁴−6ρ²+1) (SA in waves) so that +z and −z blur differently, and an axial chromatic focus shift per
 * channel. This is the same pupil, the same signs and the same defaults as the training optics
 * (models/training/optics.py): the shipped CNN reads the sign from exactly these asymmetries, and
 * test/optics-parity.test.ts holds the two implementations together. The radial PSF is computed
 * exactly (1-D Hankel integral of the pupil), its MTF by a second Hankel transform, times the pixel aperture.
 * APPROXIMATION (documented): the blur is applied as a least-squares fit of that radial MTF by a weighted sum
 * of isotropic Gaussians (weights may be negative, so the first negative lobe of a defocused MTF is roughly
 * followed), each Gaussian separable and run as a recursive (Young–van Vliet) filter, on a 2×/4× downsampled
 * image for wide Gaussians. Cost is O(pixels) regardless of z; a 1600x1200 tile takes a few hundred ms.
 * Tilted tiles are rendered at up to 5 z levels and blended linearly per pixel.
 */
import sharp from 'sharp';

export const SYNTH_KINDS = ['tissue', 'glass', 'dust', 'rim', 'pen', 'pale'] as const;
export type SynthKind = (typeof SYNTH_KINDS)[number];

export interface SynthOptions {
  width: number;
  height: number;
  seed: number;
  kind?: SynthKind;
  /** signed defocus in µm (positive: specimen above the focal plane). */
  defocusUm?: number;
  /** µm per pixel; Axio Scan Z.1 at 20x ≈ 0.22. */
  pixelSizeUm?: number;
  /** tilted tile: z changes by dzdx µm across the tile width and dzdy across its height (centre at defocusUm). */
  tilt?: { dzdx: number; dzdy: number };
  /** left half in focus, right half at defocusUm (partial blur, e.g. a fold). */
  halfDefocus?: boolean;
  /** false: no sensor noise (for calibration studies). */
  noise?: boolean;
}

export interface SynthTile {
  rgb: Buffer;
  width: number;
  height: number;
  /** share of pixels the generator put tissue on (ground truth for tests). */
  truthTissueFraction: number;
}

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

/** The Python training defaults (models/training/optics.py `Optics`); test/optics-parity.test.ts checks they agree. */
export const DEFAULT_OPTICS: OpticsParams = {
  na: 0.8,
  immersionIndex: 1.0,
  wavelengthsUm: [0.61, 0.54, 0.46],
  chromaticShiftUm: [0.25, 0, -0.2],
  sphericalWaves: 0.15,
};

// ---------------------------------------------------------------- random numbers

/** mulberry32: small, fast, seeded; returns [0,1). */
export function rng32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

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

// ---------------------------------------------------------------- scene

/** Adds amp × value noise (lattice spacing `cell` px, smoothstep interpolation, values in [−1,1]) to out. */
function addValueNoise(out: Float32Array, w: number, h: number, cell: number, amp: number, rnd: () => number): void {
  const gw = Math.ceil(w / cell) + 2;
  const gh = Math.ceil(h / cell) + 2;
  const L = new Float32Array(gw * gh);
  for (let i = 0; i < L.length; i++) L[i] = rnd() * 2 - 1;
  const ix = new Int32Array(w);
  const fx = new Float32Array(w);
  for (let x = 0; x < w; x++) {
    const gx = x / cell;
    ix[x] = Math.floor(gx);
    const t = gx - ix[x]!;
    fx[x] = t * t * (3 - 2 * t);
  }
  for (let y = 0; y < h; y++) {
    const gy = y / cell;
    const iy = Math.floor(gy);
    let ty = gy - iy;
    ty = ty * ty * (3 - 2 * ty);
    const r0 = iy * gw, r1 = r0 + gw, o = y * w;
    for (let x = 0; x < w; x++) {
      const i0 = ix[x]!;
      const t = fx[x]!;
      const a = L[r0 + i0]! + t * (L[r0 + i0 + 1]! - L[r0 + i0]!);
      const b = L[r1 + i0]! + t * (L[r1 + i0 + 1]! - L[r1 + i0]!);
      out[o + x]! += amp * (a + ty * (b - a));
    }
  }
}

function smoothstep(e0: number, e1: number, v: number): number {
  const t = Math.min(1, Math.max(0, (v - e0) / (e1 - e0)));
  return t * t * (3 - 2 * t);
}

/** Adds amp·profile of a filled ellipse (soft edge one pixel wide) to plane. */
function stampEllipse(plane: Float32Array, w: number, h: number, cx: number, cy: number, a: number, b: number, ang: number, amp: number, tex?: Float32Array): void {
  const ca = Math.cos(ang), sa = Math.sin(ang);
  const R = Math.ceil(Math.max(a, b)) + 2;
  const x0 = Math.max(0, Math.floor(cx - R)), x1 = Math.min(w - 1, Math.ceil(cx + R));
  const y0 = Math.max(0, Math.floor(cy - R)), y1 = Math.min(h - 1, Math.ceil(cy + R));
  const soft = 1 / Math.max(1, Math.min(a, b));
  for (let y = y0; y <= y1; y++) {
    const dy = y - cy;
    for (let x = x0; x <= x1; x++) {
      const dx = x - cx;
      const u = (dx * ca + dy * sa) / a;
      const v = (-dx * sa + dy * ca) / b;
      const d = Math.sqrt(u * u + v * v);
      if (d >= 1 + soft) continue;
      const m = d <= 1 - soft ? 1 : (1 + soft - d) / (2 * soft);
      const i = y * w + x;
      plane[i]! += amp * m * (tex ? tex[i]! : 1);
    }
  }
}

/** Adds a wavy fibre (Gaussian cross-section) to plane. */
function stampFibre(plane: Float32Array, w: number, h: number, rnd: () => number, x: number, y: number, lenPx: number, widthPx: number, amp: number, curl: number): void {
  let ang = rnd() * Math.PI * 2;
  const r = Math.ceil(widthPx * 1.5);
  const inv = 1 / (2 * widthPx * widthPx * 0.25);
  const step = Math.max(0.7, widthPx * 0.5);
  // stamps overlap; scale so the summed profile peaks near amp
  const norm = amp * (step / (widthPx * 1.25));
  for (let s = 0; s < lenPx; s += step) {
    ang += (rnd() - 0.5) * curl;
    x += Math.cos(ang) * step;
    y += Math.sin(ang) * step;
    const xi = Math.round(x), yi = Math.round(y);
    for (let dy = -r; dy <= r; dy++) {
      const yy = yi + dy;
      if (yy < 0 || yy >= h) continue;
      for (let dx = -r; dx <= r; dx++) {
        const xx = xi + dx;
        if (xx < 0 || xx >= w) continue;
        const ex = xx - x, ey = yy - y;
        plane[yy * w + xx]! += norm * Math.exp(-(ex * ex + ey * ey) * inv);
      }
    }
  }
}

// stain optical densities per unit concentration, RGB (Ruifrok & Johnston for H and E)
const HEMATOXYLIN = [0.65, 0.704, 0.286] as const;
const EOSIN = [0.072, 0.99, 0.105] as const;
const PAS = [0.28, 0.88, 0.38] as const;

interface Scene {
  /** optical density per channel (before blur). */
  od: [Float32Array, Float32Array, Float32Array];
  truthTissue: number;
}

function renderScene(o: Required<Pick<SynthOptions, 'width' | 'height' | 'seed' | 'kind' | 'pixelSizeUm'>>): Scene {
  const { width: w, height: h, kind } = o;
  const n = w * h;
  const um = 1 / o.pixelSizeUm; // pixels per µm
  const rnd = rng32(o.seed ^ 0x9e3779b9);
  const od: Scene['od'] = [new Float32Array(n), new Float32Array(n), new Float32Array(n)];
  let truthTissue = 0;
  const tissueKinds = kind === 'tissue' || kind === 'pale' || kind === 'rim';
  if (tissueKinds) {
    // tissue presence T in [0,1] from large-scale noise; lumens and tubules carve holes into it
    const T = new Float32Array(n);
    addValueNoise(T, w, h, 180 * um, 0.7, rnd);
    addValueNoise(T, w, h, 70 * um, 0.3, rnd);
    addValueNoise(T, w, h, 25 * um, 0.12, rnd);
    const edge = Math.floor(rnd() * 4);
    const band = 0.02 * (edge < 2 ? w : h);
    const wob = new Float32Array(n);
    if (kind === 'rim') addValueNoise(wob, w, h, 40 * um, 0.35, rnd);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        let t = smoothstep(-0.35, -0.2, T[i]!);
        if (kind === 'rim') {
          const d = edge === 0 ? x : edge === 1 ? w - 1 - x : edge === 2 ? y : h - 1 - y;
          t *= 1 - smoothstep(band * (1 + wob[i]!) - 3, band * (1 + wob[i]!) + 3, d);
        }
        T[i] = t;
      }
    }
    const pale = kind === 'pale';
    const E = new Float32Array(n); // eosin (or PAS) concentration
    const H = new Float32Array(n); // hematoxylin
    // fine texture shared by cytoplasm and chromatin
    const fine = new Float32Array(n).fill(1);
    addValueNoise(fine, w, h, 1.2 * um, 0.25, rnd);
    addValueNoise(fine, w, h, 3 * um, 0.2, rnd);
    const mid = new Float32Array(n);
    addValueNoise(mid, w, h, 12 * um, 1, rnd);
    const base = pale ? 0.2 : 0.36;
    for (let i = 0; i < n; i++) E[i] = base * (1 + 0.35 * mid[i]!) * fine[i]!;
    // tubules: lumen (empty) surrounded by an epithelial ring with nuclei; PAS stains their basement membranes
    const area = (w * h) / (um * um);
    const nTub = Math.round(area / 9000);
    for (let t = 0; t < nTub; t++) {
      const cx = rnd() * w, cy = rnd() * h;
      if (T[Math.floor(cy) * w + Math.floor(cx)]! < 0.5) continue;
      const a = (10 + rnd() * 14) * um, b = a * (0.55 + rnd() * 0.45), ang = rnd() * Math.PI;
      const ring = (8 + rnd() * 5) * um;
      stampEllipse(E, w, h, cx, cy, a + ring + 1.2 * um, b + ring + 1.2 * um, ang, pale ? 0.35 : 0.12);
      stampEllipse(E, w, h, cx, cy, a + ring, b + ring, ang, pale ? -0.3 : 0.1, fine);
      stampEllipse(E, w, h, cx, cy, a, b, ang, -10); // lumen: clamped to 0 below
      const nn = Math.round((2 * Math.PI * (a + b + ring)) / 2 / (7 * um));
      for (let k = 0; k < nn; k++) {
        const th = (2 * Math.PI * (k + rnd() * 0.3)) / nn;
        const rr = 0.5 + 0.35;
        const px = Math.cos(th) * (a + ring * rr), py = Math.sin(th) * (b + ring * rr);
        const nx = cx + px * Math.cos(ang) - py * Math.sin(ang);
        const ny = cy + px * Math.sin(ang) + py * Math.cos(ang);
        const na = (2.6 + rnd() * 1.2) * um;
        stampEllipse(H, w, h, nx, ny, na, na * (0.6 + rnd() * 0.3), th, (pale ? 0.4 : 0.6) * (0.8 + rnd() * 0.4), fine);
      }
    }
    // interstitial nuclei
    const nNuc = Math.round(area / 260);
    for (let k = 0; k < nNuc; k++) {
      const cx = rnd() * w, cy = rnd() * h;
      if (T[Math.floor(cy) * w + Math.floor(cx)]! < 0.5) continue;
      const a = (2.2 + rnd() * 1.8) * um;
      stampEllipse(H, w, h, cx, cy, a, a * (0.45 + rnd() * 0.5), rnd() * Math.PI, (pale ? 0.35 : 0.55) * (0.7 + rnd() * 0.6), fine);
    }
    // stroma fibres
    const nFib = Math.round(area / 350);
    for (let k = 0; k < nFib; k++) {
      stampFibre(E, w, h, rnd, rnd() * w, rnd() * h, (15 + rnd() * 60) * um, (0.5 + rnd() * 0.9) * um, (pale ? 0.18 : 0.3) * (0.5 + rnd()), 0.25);
    }
    const stain = pale ? PAS : EOSIN;
    const hs = pale ? 0.7 : 1;
    let tsum = 0;
    for (let i = 0; i < n; i++) {
      const t = T[i]!;
      const e = Math.max(0, E[i]!) * t;
      const hh = (Math.max(0, H[i]!) + 0.04) * t * hs;
      od[0][i] = e * stain[0] + hh * HEMATOXYLIN[0];
      od[1][i] = e * stain[1] + hh * HEMATOXYLIN[1];
      od[2][i] = e * stain[2] + hh * HEMATOXYLIN[2];
      if (t > 0.5 && E[i]! > -1) tsum++;
    }
    truthTissue = tsum / n;
  }
  if (kind === 'dust') {
    const D = new Float32Array(n);
    const nSpeck = 3 + Math.floor(rnd() * 6);
    for (let k = 0; k < nSpeck; k++) {
      const a = (1 + rnd() * 8) * um;
      stampEllipse(D, w, h, rnd() * w, rnd() * h, a, a * (0.5 + rnd() * 0.5), rnd() * Math.PI, 0.4 + rnd() * 0.8);
    }
    const nFib = 1 + Math.floor(rnd() * 3);
    for (let k = 0; k < nFib; k++) stampFibre(D, w, h, rnd, rnd() * w, rnd() * h, (40 + rnd() * 150) * um, (0.8 + rnd() * 1.5) * um, 0.3 + rnd() * 0.3, 0.08);
    // dust is grey/brown: nearly neutral density
    for (let i = 0; i < n; i++) {
      const d = D[i]!;
      od[0][i] = d * 0.95;
      od[1][i] = d;
      od[2][i] = d * 1.08;
    }
  }
  if (kind === 'pen') {
    // a marker stroke across the tile: dense ink, streaky, soft edges
    const colours = [
      [1.15, 0.75, 0.22], // blue
      [1.05, 0.3, 0.95], // green
      [1.1, 1.05, 0.95], // black
    ] as const;
    const col = colours[Math.floor(rnd() * colours.length)]!;
    const ang = (rnd() - 0.5) * 1.2;
    const width = (0.15 + rnd() * 0.2) * Math.min(w, h);
    const off = (rnd() - 0.5) * 0.4 * h;
    const streak = new Float32Array(n).fill(1);
    addValueNoise(streak, w, h, 6 * um, 0.15, rnd);
    const nx = -Math.sin(ang), ny = Math.cos(ang);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const d = Math.abs((x - w / 2) * nx + (y - h / 2 - off) * ny);
        const m = 1 - smoothstep(width / 2 - 8 * um, width / 2 + 8 * um, d);
        if (m <= 0) continue;
        const i = y * w + x;
        const c = 1.9 * m * streak[i]!;
        od[0][i] = c * col[0];
        od[1][i] = c * col[1];
        od[2][i] = c * col[2];
      }
    }
  }
  return { od, truthTissue };
}

// ---------------------------------------------------------------- sensor

/** linear [0,1] → 8-bit sRGB, 16384-entry table. */
function srgbTable(): Uint8Array {
  const N = 16384;
  const t = new Uint8Array(N + 1);
  for (let i = 0; i <= N; i++) {
    const v = i / N;
    const s = v <= 0.0031308 ? 12.92 * v : 1.055 * Math.pow(v, 1 / 2.4) - 0.055;
    t[i] = Math.round(Math.min(1, Math.max(0, s)) * 255);
  }
  return t;
}

export function srgbToLinear(v8: number): number {
  const v = v8 / 255;
  return v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
}

/** Renders one tile. Pass a DefocusOptics to reuse its kernel cache across tiles. */
export function synthTile(opts: SynthOptions, optics: DefocusOptics = new DefocusOptics()): SynthTile {
  const w = opts.width;
  const h = opts.height;
  if (!Number.isInteger(w) || !Number.isInteger(h) || w < 8 || h < 8) throw new Error(`synthTile: bad size ${w}x${h}`);
  const kind = opts.kind ?? 'tissue';
  const px = opts.pixelSizeUm ?? 0.22;
  const z0 = opts.defocusUm ?? 0;
  const n = w * h;
  const scene = renderScene({ width: w, height: h, seed: opts.seed, kind, pixelSizeUm: px });
  // transmittance planes in linear light
  const trans = scene.od.map((p) => {
    const t = new Float32Array(n);
    for (let i = 0; i < n; i++) t[i] = Math.exp(-2.302585 * p[i]!);
    return t;
  }) as [Float32Array, Float32Array, Float32Array];

  // z field: constant, tilted or half-and-half
  const zAt = (x: number, y: number): number => {
    if (opts.halfDefocus) return x < w / 2 ? 0 : z0;
    if (opts.tilt) return z0 + opts.tilt.dzdx * (x / (w - 1) - 0.5) + opts.tilt.dzdy * (y / (h - 1) - 0.5);
    return z0;
  };
  let levels: number[];
  if (opts.halfDefocus) levels = [0, z0];
  else if (opts.tilt) {
    const zs = [zAt(0, 0), zAt(w - 1, 0), zAt(0, h - 1), zAt(w - 1, h - 1)];
    const lo = Math.min(...zs), hi = Math.max(...zs);
    const nl = Math.max(2, Math.min(5, Math.ceil((hi - lo) / 1.0) + 1));
    levels = Array.from({ length: nl }, (_, i) => lo + ((hi - lo) * i) / (nl - 1));
  } else levels = [z0];

  const blurred: Float32Array[] = [];
  for (let c = 0 as 0 | 1 | 2; c < 3; c = (c + 1) as 0 | 1 | 2) {
    const perLevel = levels.map((z) => optics.blurPlane(trans[c], w, h, optics.kernel(c, z, px)));
    if (perLevel.length === 1) {
      blurred.push(perLevel[0]!);
      continue;
    }
    const out = new Float32Array(n);
    const ramp = Math.max(2, Math.round(4 / px)); // half-defocus seam: ~8 µm transition
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (opts.halfDefocus) {
          const t = smoothstep(w / 2 - ramp, w / 2 + ramp, x);
          out[i] = perLevel[0]![i]! * (1 - t) + perLevel[1]![i]! * t;
        } else {
          const z = zAt(x, y);
          const lo = levels[0]!, hi = levels[levels.length - 1]!;
          const pos = hi > lo ? ((z - lo) / (hi - lo)) * (levels.length - 1) : 0;
          const k = Math.min(levels.length - 2, Math.max(0, Math.floor(pos)));
          const t = Math.min(1, Math.max(0, pos - k));
          out[i] = perLevel[k]![i]! * (1 - t) + perLevel[k + 1]![i]! * t;
        }
      }
    }
    blurred.push(out);
  }

  // illumination: glass ≈ 240-250 in sRGB, slight white-balance tint and a gentle gradient/vignette
  const rnd = rng32(opts.seed ^ 0x51ed270b);
  const level = 0.86 + rnd() * 0.06; // linear; sRGB ≈ 239..249
  const tint = [0.985 + rnd() * 0.015, 1, 0.975 + rnd() * 0.02];
  const gx = (rnd() - 0.5) * 0.05, gy = (rnd() - 0.5) * 0.05;
  const fullWell = 3000; // electrons at white
  const read = 6; // electrons RMS
  const noise = opts.noise !== false;
  // normal deviates from a seeded table indexed by a fast xorshift: cheap and reproducible
  const NT = 1 << 16;
  const normals = new Float32Array(NT);
  for (let i = 0; i < NT; i += 2) {
    const u1 = Math.max(1e-12, rnd()), u2 = rnd();
    const r = Math.sqrt(-2 * Math.log(u1));
    normals[i] = r * Math.cos(2 * Math.PI * u2);
    normals[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  let xs = (opts.seed * 2654435761) >>> 0 || 1;
  const lut = srgbTable();
  const LN = lut.length - 1;
  const rgb = Buffer.allocUnsafe(n * 3);
  for (let y = 0; y < h; y++) {
    const fy = y / h - 0.5;
    for (let x = 0; x < w; x++) {
      const fx = x / w - 0.5;
      const illum = level * (1 + gx * fx + gy * fy - 0.04 * (fx * fx + fy * fy));
      const i = y * w + x;
      for (let c = 0; c < 3; c++) {
        let v = illum * tint[c]! * Math.max(0, blurred[c]![i]!);
        if (noise) {
          const e = v * fullWell;
          xs ^= xs << 13; xs ^= xs >>> 17; xs ^= xs << 5;
          v = (e + Math.sqrt(e + read * read) * normals[(xs >>> 0) & (NT - 1)]!) / fullWell;
        }
        const q = v <= 0 ? 0 : v >= 1 ? LN : (v * LN + 0.5) | 0;
        rgb[i * 3 + c] = lut[q]!;
      }
    }
  }
  return { rgb, width: w, height: h, truthTissueFraction: scene.truthTissue };
}

/** PNG of a synthetic tile (fast compression; tests and the demo send these over the wire). */
export async function encodePng(tile: { rgb: Buffer; width: number; height: number }, compressionLevel = 1): Promise<Buffer> {
  return sharp(tile.rgb, { raw: { width: tile.width, height: tile.height, channels: 3 } }).png({ compressionLevel }).toBuffer();
}
