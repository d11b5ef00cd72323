/**
 * Model-input patches of a tile: a regular grid at the model's pixel size, the tissue-bearing cells selected,
 * and a reusable batch buffer filled with the manifest's normalisation.
 *
 * The grid is laid out in tile pixels: a patch of `size` model pixels covers size·(model µm/px ÷ tile µm/px)
 * tile pixels, so a tile of another pixel size is rescaled (bilinear; fine for the factor ≤ 2 that scanners
 * differ by) while the patch is copied. The grid is centred; leftover border pixels are not scored.
 */
import type { ModelManifest } from './manifest.js';
import type { TissueMap } from '../imaging/tissue.js';
import { tissueShareIn } from '../imaging/tissue.js';

export interface PatchCell {
  row: number;
  col: number;
  /** top-left corner and size in tile pixels (size may be fractional when rescaling). */
  x: number;
  y: number;
  w: number;
  h: number;
  tissue: number;
}

export interface PatchPlan {
  rows: number;
  cols: number;
  /** every grid cell, row-major. */
  cells: PatchCell[];
  /** cells to score, most tissue first. */
  selected: PatchCell[];
  /** tile pixels per model pixel. */
  scale: number;
}

export interface PatchOptions {
  maxPerTile: number;
  minTissueFraction: number;
}

export type ModelInput = ModelManifest['input'];

/** Lays the patch grid over a tile and picks the patches to score. */
export function planPatches(width: number, height: number, tilePixelUm: number, input: ModelInput, tissue: TissueMap, opts: PatchOptions): PatchPlan {
  if (!(tilePixelUm > 0)) throw new Error(`planPatches: tile pixel size must be > 0, got ${tilePixelUm}`);
  const scale = input.pixel_size_um / tilePixelUm;
  const [ph, pw] = input.size;
  const tw = pw * scale;
  const th = ph * scale;
  const cols = Math.floor(width / tw + 1e-6);
  const rows = Math.floor(height / th + 1e-6);
  const ox = (width - cols * tw) / 2;
  const oy = (height - rows * th) / 2;
  const cells: PatchCell[] = [];
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const x = ox + c * tw;
      const y = oy + r * th;
      cells.push({ row: r, col: c, x, y, w: tw, h: th, tissue: tissueShareIn(tissue, Math.floor(x), Math.floor(y), Math.ceil(tw), Math.ceil(th)) });
    }
  }
  let selected = cells.filter((p) => p.tissue >= opts.minTissueFraction && p.tissue > 0);
  // most tissue first; ties keep grid order so the choice is deterministic
  selected.sort((a, b) => b.tissue - a.tissue || a.row - b.row || a.col - b.col);
  if (opts.maxPerTile > 0 && selected.length > opts.maxPerTile) selected = selected.slice(0, opts.maxPerTile);
  return { rows, cols, cells, selected, scale };
}

/**
 * Holds one batch buffer (Float32, NCHW or NHWC per the manifest) and fills patches into it. The buffer is reused
 * between calls; take() hands out a copy-free view, so callers must finish with it before the next fill.
 */
export class PatchBatcher {
  private buf: Float32Array | null;
  private readonly lut: Float32Array;
  private readonly ph: number;
  private readonly pw: number;
  private readonly nchw: boolean;

  constructor(private readonly input: ModelInput, readonly batchSize: number) {
    [this.ph, this.pw] = input.size;
    this.nchw = input.layout === 'NCHW';
    this.buf = new Float32Array(batchSize * 3 * this.ph * this.pw);
    // normalised value of every 8-bit level per channel: one table look-up per sample, no per-pixel arithmetic
    const n = input.normalisation;
    this.lut = new Float32Array(3 * 256);
    for (let c = 0; c < 3; c++) for (let v = 0; v < 256; v++) this.lut[c * 256 + v] = (v * n.scale - n.mean[c]!) / n.std[c]!;
  }

  get patchElements(): number {
    return 3 * this.ph * this.pw;
  }

  /** Copies one patch of an interleaved RGB tile into batch slot `slot`. */
  fill(slot: number, rgb: Uint8Array, width: number, height: number, cell: PatchCell): void {
    if (slot < 0 || slot >= this.batchSize) throw new Error(`PatchBatcher: slot ${slot} outside batch of ${this.batchSize}`);
    const { ph, pw, lut } = this;
    const plane = ph * pw;
    const base = slot * 3 * plane;
    const out = (this.buf ??= new Float32Array(this.batchSize * 3 * this.ph * this.pw));
    const sx = cell.w / pw;
    const sy = cell.h / ph;
    const direct = Math.abs(sx - 1) < 1e-6 && Math.abs(sy - 1) < 1e-6;
    if (direct) {
      const x0 = Math.round(cell.x);
      const y0 = Math.round(cell.y);
      if (this.nchw) {
        // three plane views so the inner loop is three sequential stores
        const r = out.subarray(base, base + plane);
        const g = out.subarray(base + plane, base + 2 * plane);
        const b = out.subarray(base + 2 * plane, base + 3 * plane);
        const lr = lut.subarray(0, 256), lg = lut.subarray(256, 512), lb = lut.subarray(512, 768);
        for (let y = 0; y < ph; y++) {
          let s = ((y0 + y) * width + x0) * 3;
          const o = y * pw;
          for (let x = 0; x < pw; x++, s += 3) {
            r[o + x] = lr[rgb[s]!]!;
            g[o + x] = lg[rgb[s + 1]!]!;
            b[o + x] = lb[rgb[s + 2]!]!;
          }
        }
        return;
      }
      for (let y = 0; y < ph; y++) {
        let s = ((y0 + y) * width + x0) * 3;
        {
          let o = base + y * pw * 3;
          for (let x = 0; x < pw; x++, s += 3, o += 3) {
            out[o] = lut[rgb[s]!]!;
            out[o + 1] = lut[256 + rgb[s + 1]!]!;
            out[o + 2] = lut[512 + rgb[s + 2]!]!;
          }
        }
      }
      return;
    }
    // bilinear resampling at pixel centres; normalisation is affine, so interpolating normalised values is exact
    for (let y = 0; y < ph; y++) {
      const fy = Math.min(height - 1, Math.max(0, cell.y + (y + 0.5) * sy - 0.5));
      const y0 = Math.floor(fy);
      const y1 = Math.min(height - 1, y0 + 1);
      const ty = fy - y0;
      for (let x = 0; x < pw; x++) {
        const fx = Math.min(width - 1, Math.max(0, cell.x + (x + 0.5) * sx - 0.5));
        const x0 = Math.floor(fx);
        const x1 = Math.min(width - 1, x0 + 1);
        const tx = fx - x0;
        const a = (y0 * width + x0) * 3, b = (y0 * width + x1) * 3, c = (y1 * width + x0) * 3, d = (y1 * width + x1) * 3;
        for (let ch = 0; ch < 3; ch++) {
          const L = ch * 256;
          const top = lut[L + rgb[a + ch]!]! + tx * (lut[L + rgb[b + ch]!]! - lut[L + rgb[a + ch]!]!);
          const bot = lut[L + rgb[c + ch]!]! + tx * (lut[L + rgb[d + ch]!]! - lut[L + rgb[c + ch]!]!);
          const v = top + ty * (bot - top);
          out[this.nchw ? base + ch * plane + y * pw + x : base + (y * pw + x) * 3 + ch] = v;
        }
      }
    }
  }

  /** The first n patches of the batch (a view, not a copy). */
  view(n: number): Float32Array {
    if (!this.buf) throw new Error('PatchBatcher: buffer was taken and not given back');
    return this.buf.subarray(0, n * this.patchElements);
  }

  /** Hands the whole batch buffer over (e.g. transferred to an engine worker); a later fill() allocates anew unless give() returns it. */
  take(): Float32Array {
    if (!this.buf) throw new Error('PatchBatcher: buffer was taken and not given back');
    const b = this.buf;
    this.buf = null;
    return b;
  }

  /** Returns a buffer from take() (it came back from the engine). */
  give(buf: Float32Array): void {
    if (buf.length === this.batchSize * this.patchElements) this.buf = buf;
  }

  /** Shape of a batch of n patches in the manifest's layout. */
  shape(n: number): number[] {
    return this.nchw ? [n, 3, this.ph, this.pw] : [n, this.ph, this.pw, 3];
  }


  get layout(): ModelInput['layout'] {
    return this.input.layout;
  }
}

/**
 * Batch of patches as 8-bit RGB, NHWC [n, h, w, 3], for engines that normalise in their worker
 * (InferenceEngine.runBytes): the event loop only copies rows of bytes. Same take()/give() protocol as PatchBatcher.
 */
export class PatchBytes {
  private buf: Uint8Array | null = null;
  private readonly ph: number;
  private readonly pw: number;

  constructor(input: ModelInput, readonly batchSize: number) {
    [this.ph, this.pw] = input.size;
  }

  get patchBytes(): number {
    return this.ph * this.pw * 3;
  }

  fill(slot: number, rgb: Uint8Array, width: number, height: number, cell: PatchCell): void {
    if (slot < 0 || slot >= this.batchSize) throw new Error(`PatchBytes: slot ${slot} outside batch of ${this.batchSize}`);
    const { ph, pw } = this;
    const out = (this.buf ??= new Uint8Array(this.batchSize * this.patchBytes));
    const base = slot * this.patchBytes;
    const sx = cell.w / pw;
    const sy = cell.h / ph;
    if (Math.abs(sx - 1) < 1e-6 && Math.abs(sy - 1) < 1e-6) {
      const x0 = Math.round(cell.x);
      const y0 = Math.round(cell.y);
      const row = pw * 3;
      for (let y = 0; y < ph; y++) {
        const s = ((y0 + y) * width + x0) * 3;
        out.set(rgb.subarray(s, s + row), base + y * row);
      }
      return;
    }
    // bilinear at pixel centres, rounded to 8 bits (< 0.5 DN error)
    let o = base;
    for (let y = 0; y < ph; y++) {
      const fy = Math.min(height - 1, Math.max(0, cell.y + (y + 0.5) * sy - 0.5));
      const y0 = Math.floor(fy);
      const y1 = Math.min(height - 1, y0 + 1);
      const ty = fy - y0;
      for (let x = 0; x < pw; x++) {
        const fx = Math.min(width - 1, Math.max(0, cell.x + (x + 0.5) * sx - 0.5));
        const x0 = Math.floor(fx);
        const x1 = Math.min(width - 1, x0 + 1);
        const tx = fx - x0;
        const a = (y0 * width + x0) * 3, b = (y0 * width + x1) * 3, c = (y1 * width + x0) * 3, d = (y1 * width + x1) * 3;
        for (let ch = 0; ch < 3; ch++, o++) {
          const top = rgb[a + ch]! + tx * (rgb[b + ch]! - rgb[a + ch]!);
          const bot = rgb[c + ch]! + tx * (rgb[d + ch]! - rgb[c + ch]!);
          out[o] = (top + ty * (bot - top) + 0.5) | 0;
        }
      }
    }
  }

  take(): Uint8Array {
    if (!this.buf) throw new Error('PatchBytes: nothing filled, or the buffer was taken and not given back');
    const b = this.buf;
    this.buf = null;
    return b;
  }

  give(buf: Uint8Array): void {
    if (buf.length === this.batchSize * this.patchBytes) this.buf = buf;
  }
}
