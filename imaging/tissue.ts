/**
 * Tissue detection on a coarse grid: which parts of a tile hold stained tissue.
 *
 * A pixel is tissue when its optical density (sum over RGB of −log10(I/I0) on the 8-bit values, as most
 * whole-slide tools do) is above tissue.odThreshold, below tissue.maxOd (opaque: pen ink, dust clumps) and its
 * HSV saturation is above tissue.saturationThreshold (stains are coloured; glass, dust and black ink are grey).
 * Saturated pixels whose hue no stain has (green/cyan/blue marker ink: tissue.inkHueMin..inkHueMax) count as
 * opaque. Cells of the grid near an opaque cell are cleared too, because the soft edges of pen marks have
 * tissue-like density. I0 (glass) per channel
 * is the tile's 99.5th percentile but at least tissue.glassMin. Pixels are sampled on a stride-4 lattice (16 samples
 * per 16 px cell): a 1600x1200 tile costs a few ms.
 */
import type { FocusdConfig } from '../config/load.js';

export type TissueParams = FocusdConfig['tissue'];

export interface TissueMap {
  /** grid size; cell (r, c) covers tile pixels [c*cellPx, (c+1)*cellPx) x [r*cellPx, ...), clipped at the edge. */
  rows: number;
  cols: number;
  cellPx: number;
  /** share of each cell's sampled pixels that are tissue (0 for cleared opaque neighbourhoods). Row-major. */
  share: Float32Array;
  /** 1 where the cell is opaque (pen, dust clump). */
  opaque: Uint8Array;
  /** tissue share of the whole tile. */
  fraction: number;
  /** estimated glass brightness per channel (8-bit). */
  glass: [number, number, number];
}

/** sample lattice step: 16 samples in a 16 px cell are plenty for a share, and 4x cheaper than stride 2. */
const STRIDE = 4;

export function detectTissue(rgb: Buffer | Uint8Array, width: number, height: number, p: TissueParams): TissueMap {
  if (rgb.length < width * height * 3) throw new Error(`detectTissue: buffer of ${rgb.length} bytes is too small for ${width}x${height} RGB`);
  const cellPx = p.cellPx;
  const cols = Math.ceil(width / cellPx);
  const rows = Math.ceil(height / cellPx);

  // glass level: 99.5th percentile of each channel over the sample lattice
  const hist = [new Uint32Array(256), new Uint32Array(256), new Uint32Array(256)] as const;
  let nS = 0;
  for (let y = 1; y < height; y += STRIDE * 2) {
    let i = (y * width + 1) * 3;
    for (let x = 1; x < width; x += STRIDE * 2, i += STRIDE * 2 * 3) {
      hist[0][rgb[i]!]!++;
      hist[1][rgb[i + 1]!]!++;
      hist[2][rgb[i + 2]!]!++;
      nS++;
    }
  }
  const glass = [0, 0, 0] as [number, number, number];
  for (let c = 0; c < 3; c++) {
    let acc = 0;
    let v = 255;
    const stop = nS * 0.005;
    for (; v > 0; v--) {
      acc += hist[c]![v]!;
      if (acc >= stop) break;
    }
    glass[c] = Math.max(p.glassMin, v);
  }
  // per channel OD look-up: −log10(v/I0), clamped at 0 (brighter than glass is glass)
  const odLut = glass.map((g) => {
    const t = new Float32Array(256);
    for (let v = 0; v < 256; v++) t[v] = Math.max(0, -Math.log10(Math.max(v, 0.5) / g));
    return t;
  }) as [Float32Array, Float32Array, Float32Array];
  const hueLo = p.inkHueMin;
  const hueHi = p.inkHueMax;
  const [lr, lg, lb] = odLut;

  const tis = new Uint32Array(rows * cols);
  const opq = new Uint32Array(rows * cols);
  const cnt = new Uint32Array(rows * cols);
  const odMin = p.odThreshold;
  const odMax = p.maxOd;
  const sMin = p.saturationThreshold;
  const nx = Math.ceil((width - 1) / STRIDE);
  const colCell = new Int32Array(nx);
  for (let k = 0; k < nx; k++) colCell[k] = ((1 + k * STRIDE) / cellPx) | 0;
  // sample at odd offsets (1, 5, 9, ...) so each 16 px cell gets 4x4 samples
  for (let y = 1; y < height; y += STRIDE) {
    const rowCell = ((y / cellPx) | 0) * cols;
    let i = (y * width + 1) * 3;
    for (let k = 0; k < nx; k++, i += STRIDE * 3) {
      const r = rgb[i]!, g = rgb[i + 1]!, b = rgb[i + 2]!;
      const cell = rowCell + colCell[k]!;
      cnt[cell]!++;
      const od = lr[r]! + lg[g]! + lb[b]!;
      if (od <= odMin) continue;
      if (od >= odMax) {
        opq[cell]!++;
        continue;
      }
      const mx = r > g ? (r > b ? r : b) : g > b ? g : b;
      const mn = r < g ? (r < b ? r : b) : g < b ? g : b;
      const d = mx - mn;
      if (mx === 0 || d <= sMin * mx) continue;
      if (d > 0.2 * mx) {
        // hue in degrees; only saturated pixels are tested (grey has no reliable hue)
        const hue = mx === r ? (60 * (g - b)) / d + (g < b ? 360 : 0) : mx === g ? (60 * (b - r)) / d + 120 : (60 * (r - g)) / d + 240;
        if (hue >= hueLo && hue <= hueHi) {
          opq[cell]!++;
          continue;
        }
      }
      tis[cell]!++;
    }
  }
  const share = new Float32Array(rows * cols);
  const opaque = new Uint8Array(rows * cols);
  for (let k = 0; k < share.length; k++) {
    const n = cnt[k]!;
    if (n === 0) continue;
    share[k] = tis[k]! / n;
    if (opq[k]! >= p.opaqueCellFraction * n && opq[k]! > 0) opaque[k] = 1;
  }
  // clear the neighbourhood of opaque cells (pen edges, dust halos)
  const m = p.opaqueMarginCells;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      if (!opaque[r * cols + c]) continue;
      for (let rr = Math.max(0, r - m); rr <= Math.min(rows - 1, r + m); rr++)
        for (let cc = Math.max(0, c - m); cc <= Math.min(cols - 1, c + m); cc++) share[rr * cols + cc] = 0;
    }
  }
  // tile fraction, each cell weighted by how many pixels it covers (edge cells can be partial)
  let tot = 0;
  let wsum = 0;
  for (let k = 0; k < share.length; k++) {
    tot += share[k]! * cnt[k]!;
    wsum += cnt[k]!;
  }
  return { rows, cols, cellPx, share, opaque, fraction: wsum > 0 ? tot / wsum : 0, glass };
}

/** Mean tissue share over a rectangle of tile pixels (cells weighted by overlap). */
export function tissueShareIn(map: TissueMap, x0: number, y0: number, w: number, h: number): number {
  const cp = map.cellPx;
  const c0 = Math.max(0, Math.floor(x0 / cp)), c1 = Math.min(map.cols - 1, Math.floor((x0 + w - 1) / cp));
  const r0 = Math.max(0, Math.floor(y0 / cp)), r1 = Math.min(map.rows - 1, Math.floor((y0 + h - 1) / cp));
  let acc = 0;
  let area = 0;
  for (let r = r0; r <= r1; r++) {
    const oy = Math.min(y0 + h, (r + 1) * cp) - Math.max(y0, r * cp);
    for (let c = c0; c <= c1; c++) {
      const ox = Math.min(x0 + w, (c + 1) * cp) - Math.max(x0, c * cp);
      const a = Math.max(0, ox) * Math.max(0, oy);
      acc += map.share[r * map.cols + c]! * a;
      area += a;
    }
  }
  return area > 0 ? acc / area : 0;
}
