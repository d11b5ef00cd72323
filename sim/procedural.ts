/**
 * Procedural, seeded, tissue-like brightfield tiles, defocused by our own optics model (imaging/optics.ts).
 *
 * Used by tests, the demo and the benchmark: no real slide image ever enters the repository.
 *
 * Scene: stain concentrations (hematoxylin, eosin or PAS) are rendered per pixel in µm units (so the
 * scene scales with pixel size), turned into transmittance with Beer-Lambert, blurred in LINEAR light by
 * the defocus PSF of each colour channel, lit by a slightly uneven white illumination, hit by Poisson-Gaussian
 * sensor noise and quantised to 8-bit sRGB. Glass reads ≈ 240-250.
 *
 * Defocus: our own optics model, imaging/optics.ts (DefocusOptics); a 1600x1200 tile takes a few hundred ms.
 * Tilted tiles are rendered at up to 5 z levels and blended linearly per pixel.
 */
import sharp from 'sharp';
import { DefocusOptics } from '../imaging/optics.js';


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

/** A tile's scene in linear-light transmittance per channel, before any blur: the same at every defocus. */
export interface SynthScene {
  width: number;
  height: number;
  seed: number;
  kind: SynthKind;
  pixelSizeUm: number;
  trans: [Float32Array, Float32Array, Float32Array];
  truthTissueFraction: number;
}

/**
 * The scene of a tile (stains, Beer-Lambert), without optics or sensor. The costly half of synthTile that does not
 * depend on z: a virtual scanner that takes one tile at several z renders it once (sim/render.ts).
 */
export function synthScene(opts: Pick<SynthOptions, 'width' | 'height' | 'seed' | 'kind' | 'pixelSizeUm'>): SynthScene {
  const w = opts.width;
  const h = opts.height;
  if (!Number.isInteger(w) || !Number.isInteger(h) || w < 8 || h < 8) throw new Error(`synthTile: bad size ${w}x${h}`);
  const kind = opts.kind ?? 'tissue';
  const px = opts.pixelSizeUm ?? 0.22;
  const n = w * h;
  const scene = renderScene({ width: w, height: h, seed: opts.seed, kind, pixelSizeUm: px });
  // transmittance planes in linear light
  const trans = scene.od.map((p) => {
    const t = new Float32Array(n);
    for (let i = 0; i < n; i++) t[i] = Math.exp(-2.302585 * p[i]!);
    return t;
  }) as [Float32Array, Float32Array, Float32Array];
  return { width: w, height: h, seed: opts.seed, kind, pixelSizeUm: px, trans, truthTissueFraction: scene.truthTissue };
}

/** Renders one tile. Pass a DefocusOptics to reuse its kernel cache across tiles. */
export function synthTile(opts: SynthOptions, optics: DefocusOptics = new DefocusOptics()): SynthTile {
  return imageScene(synthScene(opts), opts, optics);
}

/** Images a scene at a defocus (optionally tilted or half blurred) through the optics, with illumination and sensor noise. */
export function imageScene(
  scene: SynthScene,
  opts: Pick<SynthOptions, 'defocusUm' | 'tilt' | 'halfDefocus' | 'noise'>,
  optics: DefocusOptics = new DefocusOptics(),
): SynthTile {
  const { width: w, height: h, pixelSizeUm: px, trans } = scene;
  const z0 = opts.defocusUm ?? 0;
  const n = w * h;

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
  const rnd = rng32(scene.seed ^ 0x51ed270b);
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
  let xs = (scene.seed * 2654435761) >>> 0 || 1;
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
  return { rgb, width: w, height: h, truthTissueFraction: scene.truthTissueFraction };
}

/** PNG of a synthetic tile (fast compression; tests and the demo send these over the wire). */
export async function encodePng(tile: { rgb: Buffer; width: number; height: number }, compressionLevel = 1): Promise<Buffer> {
  return sharp(tile.rgb, { raw: { width: tile.width, height: tile.height, channels: 3 } }).png({ compressionLevel }).toBuffer();
}
