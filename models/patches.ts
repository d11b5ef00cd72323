/**
 * Model-input patches of a tile: a grid at the model's pixel size that covers the whole tile, the tissue-bearing
 * patches selected, and reusable batch buffers (floats with the manifest's normalisation, or 8-bit bytes).
 *
 * The grid is laid out in tile pixels: a patch of `size` model pixels covers size·(model µm/px ÷ tile µm/px)
 * tile pixels, so a tile of another pixel size is rescaled (bilinear; fine for the factor ≤ 2 that scanners
 * differ by) while the patch is copied. Along each axis there are ceil(L / patch) patches spread evenly from 0 to
 * L − patch, so every tile pixel lies in some patch (neighbours overlap a little where L is not a multiple of the
 * patch): tissue at the tile's border is never left unlooked at. This is the one sampling rule; both scorers call
 * planTile().
 */
import type { ModelManifest } from './manifest.js';
import type { TissueMap, TissueParams } from '../imaging/tissue.js';
import { detectTissue, tissueShareIn } from '../imaging/tissue.js';

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
  /**
   * true when no patch reached minTissueFraction and `selected` holds the fallback choice (the richest patches,
   * see planPatches).
   */
  fallback: boolean;
}

export interface PatchOptions {
  maxPerTile: number;
  minTissueFraction: number;
}

export type ModelInput = ModelManifest['input'];

/**
 * Most grid cells one tile may have. The grid is built (and its tissue shares computed) on the scoring thread, so it
 * must stay small whatever the header says: a 1600x1200 tile has ~20 cells at the model's scale and ~7 500 at a
 * 16-pixel patch. The pipeline already refuses pixel sizes far from the model's (protocol/header.ts); this is the
 * last guard for every other caller.
 */
export const MAX_PATCH_CELLS = 65_536;

/** Tile pixels one model patch covers, and the tile pixels per model pixel. */
export function patchFootprint(tilePixelUm: number, input: ModelInput): { tw: number; th: number; scale: number } {
  if (!(tilePixelUm > 0)) throw new Error(`planPatches: tile pixel size must be > 0, got ${tilePixelUm}`);
  const scale = input.pixel_size_um / tilePixelUm;
  return { tw: input.size[1] * scale, th: input.size[0] * scale, scale };
}

/**
 * Top-left positions of the patches along one axis of `len` pixels: ceil(len / t) of them, evenly spread from 0
 * to len − t (so the first starts at the tile's first pixel and the last ends at its last one). Integral when t
 * is (no rescaling), so patches copy rows directly.
 */
export function axisPositions(len: number, t: number): number[] {
  if (len < t - 1e-6) throw new Error(`axisPositions: ${len} px is shorter than one patch of ${t} px`);
  const n = Math.max(1, Math.ceil(len / t - 1e-6));
  if (n === 1) return [0];
  const span = Math.max(0, len - t);
  const integral = Math.abs(t - Math.round(t)) < 1e-6;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = (i * span) / (n - 1);
    out.push(integral ? Math.round(x) : x);
  }
  return out;
}

/**
 * A tile with tissue smaller than one model patch: the sender's to fix (rejected as invalid_header with this message,
 * docs/protocol.md), not a scorer failure. `reason` survives the classical worker's message (classical-worker.ts).
 */
export class TileTooSmallError extends Error {
  readonly reason = 'invalid_header' as const;
}

/** Whether a tile is at least one patch wide and high (a smaller tile cannot be scored at the model's scale). */
export function tileFitsPatch(width: number, height: number, tilePixelUm: number, input: ModelInput): boolean {
  const { tw, th } = patchFootprint(tilePixelUm, input);
  return width >= tw - 1e-6 && height >= th - 1e-6;
}

/**
 * Lays the patch grid over a tile (whole-tile coverage, see the file header) and picks the patches to score:
 * patches with at least `minTissueFraction` tissue, richest first, at most `maxPerTile` (0 = all).
 * Fallback when none reaches minTissueFraction (tissue scattered thinly, or in slivers between patches): the
 * patches with at least half the richest patch's share, richest first, capped the same way, and always at least
 * the richest one. Whether the tile has enough tissue to be scored at all is the caller's decision
 * (tissue.minFraction, see planTile); this function never returns an empty selection.
 * A tile smaller than one patch is an error (see planTile).
 */
export function planPatches(width: number, height: number, tilePixelUm: number, input: ModelInput, tissue: TissueMap, opts: PatchOptions): PatchPlan {
  const { tw, th, scale } = patchFootprint(tilePixelUm, input);
  if (!tileFitsPatch(width, height, tilePixelUm, input))
    throw new TileTooSmallError(
      `tile ${width}x${height} px is smaller than one model patch (${fmt(tw)}x${fmt(th)} tile px = ${input.size[1]}x${input.size[0]} px at ${input.pixel_size_um} µm/px, tile ${tilePixelUm} µm/px): cannot be scored at the model's scale; send tiles of at least ${Math.ceil(tw - 1e-6)}x${Math.ceil(th - 1e-6)} px at this pixel size`,
    );
  const nx = Math.ceil(width / tw - 1e-6);
  const ny = Math.ceil(height / th - 1e-6);
  if (!(nx * ny <= MAX_PATCH_CELLS))
    throw new Error(
      `tile ${width}x${height} px at ${tilePixelUm} µm/px needs a ${nx}x${ny} patch grid (${fmt(tw)} tile px per patch), more than ${MAX_PATCH_CELLS} cells: the pixel size is implausible for a model at ${input.pixel_size_um} µm/px`,
    );
  const xs = axisPositions(width, tw);
  const ys = axisPositions(height, th);
  const cells: PatchCell[] = [];
  ys.forEach((y, r) =>
    xs.forEach((x, c) => {
      cells.push({ row: r, col: c, x, y, w: tw, h: th, tissue: tissueShareIn(tissue, Math.floor(x), Math.floor(y), Math.ceil(tw), Math.ceil(th)) });
    }),
  );
  // most tissue first; ties keep grid order so the choice is deterministic
  const richest = [...cells].sort((a, b) => b.tissue - a.tissue || a.row - b.row || a.col - b.col);
  let selected = richest.filter((p) => p.tissue >= opts.minTissueFraction && p.tissue > 0);
  const fallback = selected.length === 0;
  if (fallback) {
    const best = richest[0]!.tissue;
    selected = richest.filter((p) => p.tissue >= best / 2 && p.tissue > 0);
    if (selected.length === 0) selected = [richest[0]!];
  }
  if (opts.maxPerTile > 0 && selected.length > opts.maxPerTile) selected = selected.slice(0, opts.maxPerTile);
  return { rows: ys.length, cols: xs.length, cells, selected, scale, fallback };
}

const fmt = (v: number) => (Math.abs(v - Math.round(v)) < 1e-6 ? String(Math.round(v)) : v.toFixed(1));

export interface TilePlan {
  tissue: TissueMap;
  /** tissue.fraction ≥ tissue.minFraction: the tile is scored; below it the verdict is no_tissue. */
  hasTissue: boolean;
  /** null only for a tile without tissue that is smaller than one patch (nothing to map). */
  plan: PatchPlan | null;
}

/**
 * The sampling rule of both scorers: tissue map, the tissue.minFraction decision, the patch plan.
 * A tile with enough tissue always gets at least one patch (planPatches' fallback), so a blurred tile with
 * scattered tissue cannot pass as no_tissue. A tile with tissue that is smaller than one patch throws TileTooSmallError (the
 * pipeline refuses it as invalid_header with this message) rather than being passed unscored.
 */
export function planTile(
  tile: { rgb: Buffer | Uint8Array; width: number; height: number; pixelSizeUm: number },
  input: ModelInput,
  cfg: { tissue: TissueParams; patches: PatchOptions },
): TilePlan {
  const tissue = detectTissue(tile.rgb, tile.width, tile.height, cfg.tissue);
  const hasTissue = tissue.fraction >= cfg.tissue.minFraction;
  if (!hasTissue && !tileFitsPatch(tile.width, tile.height, tile.pixelSizeUm, input)) return { tissue, hasTissue, plan: null };
  return { tissue, hasTissue, plan: planPatches(tile.width, tile.height, tile.pixelSizeUm, input, tissue, cfg.patches) };
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
