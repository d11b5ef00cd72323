/**
 * Classical scorer: a multi-scale, contrast-normalised focus measure, no neural network.
 *
 * Per tissue patch (resampled to the calibration's pixel size, luminance): band-pass images between Gaussian
 * scales σ = 0.6, 1.5, 3, 6, 12 px (difference of Gaussians) and their energies E0..E3. The features are the log
 * ratios of neighbouring bands, log(E0/E1), log(E1/E2), log(E2/E3): defocus removes the finest band first, then
 * the next, so the ratios fall in turn; multiplying the image contrast (stain intensity, illumination) by any
 * factor cancels in every ratio.
 *
 * Calibration (models/classical/calibration.json, made by scripts/calibrate-classical.ts from OUR optics model,
 * sim/procedural.ts): mean and spread of the feature vector at known |z|. A patch's |d| is the |z| whose tabulated
 * features are nearest (σ-weighted) on a 0.05 µm interpolated grid. It is a no-reference measure: it depends on
 * the tissue's own texture, so it is calibrated to our synthetic H&E/PAS scenes, not to every slide.
 *
 * SIGN: the measure is symmetric in z, it cannot tell above from below focus. It reports defocus_um = +|d| with
 * sign_confidence 0.5 (the controller probes the direction), like a bundle whose calibration.sign is
 * "unrecoverable".
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Worker } from 'node:worker_threads';
import { PACKAGE_ROOT } from '../config/load.js';
import type { Context } from '../core/context.js';
import type { DecodedTile, ModelInfo, ScoreResult } from '../core/types.js';
import { gaussianBlur } from '../imaging/optics.js';
import type { TissueParams } from '../imaging/tissue.js';
import { aggregate, noTissueResult, type PatchEstimate } from './aggregate.js';
import { type ModelInput, type PatchOptions, PatchBatcher, planTile } from './patches.js';
import type { Scorer } from './scorer.js';
import type { ClassicalWorkResult } from './classical-worker.js';
import { startModuleWorker } from './worker-entry.js';

export const CLASSICAL_SIGMAS = [0.6, 1.5, 3, 6, 12] as const;
export const CLASSICAL_PATCH = 192;
export const DEFAULT_CLASSICAL_CALIBRATION = resolve(PACKAGE_ROOT, 'models/classical/calibration.json');

export interface ClassicalCalibration {
  schema: 1;
  measure: 'dog-band-ratios';
  sigmas_px: number[];
  patch_px: number;
  pixel_size_um: number;
  /** rows by increasing abs_um: mean and sd of each log band ratio. */
  table: Array<{ abs_um: number; mean: number[]; sd: number[]; n: number }>;
  source: string;
  created_at: string;
}

/** The model input the classical scorer resamples patches to: luminance in [0,1] via three NCHW planes. */
export function classicalInput(pixelSizeUm: number, patchPx = CLASSICAL_PATCH): ModelInput {
  return {
    name: 'gray',
    layout: 'NCHW',
    size: [patchPx, patchPx],
    channel_order: 'RGB',
    pixel_size_um: pixelSizeUm,
    normalisation: { scale: 1 / 255, mean: [0, 0, 0], std: [1, 1, 1] },
  };
}

/** Feature vector of one luminance patch: log energy ratios of neighbouring difference-of-Gaussian bands. */
export function bandRatios(gray: Float32Array, w: number, h: number, scratch?: Float32Array[]): number[] {
  const n = w * h;
  const G = scratch && scratch.length >= CLASSICAL_SIGMAS.length ? scratch : CLASSICAL_SIGMAS.map(() => new Float32Array(n));
  for (let k = 0; k < CLASSICAL_SIGMAS.length; k++) gaussianBlur(gray, G[k]!, w, h, CLASSICAL_SIGMAS[k]!);
  // ignore a border of 2σ of the widest filter, where edge replication biases the bands
  const m = Math.min(Math.floor(Math.min(w, h) / 4), Math.ceil(2 * CLASSICAL_SIGMAS[CLASSICAL_SIGMAS.length - 1]!));
  const E = new Array<number>(CLASSICAL_SIGMAS.length - 1).fill(0);
  for (let y = m; y < h - m; y++) {
    for (let x = m; x < w - m; x++) {
      const i = y * w + x;
      for (let k = 0; k < E.length; k++) {
        const b = G[k]![i]! - G[k + 1]![i]!;
        E[k]! += b * b;
      }
    }
  }
  const eps = 1e-12;
  const r: number[] = [];
  for (let k = 0; k + 1 < E.length; k++) r.push(Math.log((E[k]! + eps) / (E[k + 1]! + eps)));
  return r;
}

/** |d| whose calibrated features are nearest to r (σ-weighted), searched on an interpolated 0.05 µm grid. */
export function estimateAbsUm(cal: ClassicalCalibration, r: number[]): number {
  const t = cal.table;
  let best = t[0]!.abs_um;
  let bestD = Infinity;
  for (let i = 0; i + 1 < t.length; i++) {
    const a = t[i]!, b = t[i + 1]!;
    const steps = Math.max(1, Math.round((b.abs_um - a.abs_um) / 0.05));
    for (let s = 0; s <= steps; s++) {
      const f = s / steps;
      let d = 0;
      for (let k = 0; k < r.length; k++) {
        const mu = a.mean[k]! + f * (b.mean[k]! - a.mean[k]!);
        const sd = Math.max(0.02, a.sd[k]! + f * (b.sd[k]! - a.sd[k]!));
        d += ((r[k]! - mu) / sd) ** 2;
      }
      if (d < bestD) {
        bestD = d;
        best = a.abs_um + f * (b.abs_um - a.abs_um);
      }
    }
  }
  return best;
}

export function loadClassicalCalibration(file: string): ClassicalCalibration {
  if (!existsSync(file)) throw new Error(`classical calibration not found: ${file} (make it with: npx tsx scripts/calibrate-classical.ts)`);
  const c = JSON.parse(readFileSync(file, 'utf8')) as ClassicalCalibration;
  if (c.schema !== 1 || c.measure !== 'dog-band-ratios' || !Array.isArray(c.table) || c.table.length < 2)
    throw new Error(`${file}: not a classical calibration (schema 1, measure dog-band-ratios, ≥2 rows)`);
  if (JSON.stringify(c.sigmas_px) !== JSON.stringify(CLASSICAL_SIGMAS))
    throw new Error(`${file}: made for band sigmas ${JSON.stringify(c.sigmas_px)}, this code uses ${JSON.stringify(CLASSICAL_SIGMAS)}; recalibrate`);
  return c;
}

export interface ClassicalFeatures {
  tissueFraction: number;
  /** the focus map grid; 0 x 0 for a tissue-free tile smaller than one patch (no map). */
  rows: number;
  cols: number;
  patches: Array<{ row: number; col: number; r: number[] }>;
}

export interface ClassicalBuffers {
  batcher: PatchBatcher;
  gray: Float32Array;
  scratch: Float32Array[];
}

export function classicalBuffers(input: ModelInput): ClassicalBuffers {
  const n = input.size[0] * input.size[1];
  return { batcher: new PatchBatcher(input, 1), gray: new Float32Array(n), scratch: CLASSICAL_SIGMAS.map(() => new Float32Array(n)) };
}

/** Tissue detection, patch selection (planTile, the sampling rule shared with the CNN scorer) and band-ratio features of every selected patch of a tile. */
export function classicalFeatures(
  tile: { rgb: Buffer; width: number; height: number; pixelSizeUm: number },
  cfg: { tissue: TissueParams; patches: PatchOptions },
  input: ModelInput,
  bufs: ClassicalBuffers,
): ClassicalFeatures {
  const { tissue, hasTissue, plan } = planTile(tile, input, cfg);
  const out: ClassicalFeatures['patches'] = [];
  if (hasTissue && plan) {
    const [ph, pw] = input.size;
    const n = ph * pw;
    for (const cell of plan.selected) {
      bufs.batcher.fill(0, tile.rgb, tile.width, tile.height, cell);
      const v = bufs.batcher.view(1);
      for (let i = 0; i < n; i++) bufs.gray[i] = (v[i]! + v[i + n]! + v[i + 2 * n]!) / 3;
      out.push({ row: cell.row, col: cell.col, r: bandRatios(bufs.gray, pw, ph, bufs.scratch) });
    }
  }
  return { tissueFraction: tissue.fraction, patches: out, rows: plan?.rows ?? 0, cols: plan?.cols ?? 0 };
}

export class ClassicalScorer implements Scorer {
  readonly name = 'scorer:classical';
  private cal: ClassicalCalibration | null = null;
  private worker: Worker | null = null;
  private readonly pending = new Map<number, { resolve: (r: ClassicalWorkResult) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  private _info: ModelInfo | null = null;

  constructor(private readonly ctx: Context) {}

  get info(): ModelInfo {
    if (!this._info) throw new Error('ClassicalScorer: info read before start()');
    return this._info;
  }

  async start(): Promise<void> {
    const file = this.ctx.config.scoring.classical.calibration || DEFAULT_CLASSICAL_CALIBRATION;
    const cal = loadClassicalCalibration(file);
    this.cal = cal;
    const cfg = this.ctx.config;
    const w = startModuleWorker(import.meta.url, 'classical-worker', { cal, tissue: cfg.tissue, patches: cfg.scoring.patches });
    this.worker = w;
    w.on('message', (m: { id: number; ok: boolean; result?: ClassicalWorkResult; error?: string; reason?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.result!);
      else p.reject(m.reason ? Object.assign(new Error(m.error), { reason: m.reason }) : new Error(`classical worker: ${m.error}`));
    });
    const failAll = (err: Error) => {
      for (const p of this.pending.values()) p.reject(err);
      this.pending.clear();
    };
    w.on('error', (err) => {
      this.ctx.logger.error('classical worker crashed', { error: err.stack ?? String(err) });
      failAll(err);
    });
    w.on('exit', (code) => {
      if (this.worker === w) {
        this.worker = null;
        failAll(new Error(`classical worker exited with code ${code}`));
      }
    });
    await new Promise<void>((resolve, reject) => {
      w.once('online', () => resolve());
      w.once('error', reject);
    });
    this._info = {
      name: 'classical-dog-ratios',
      version: cal.created_at.slice(0, 10),
      sha256: createHash('sha256').update(readFileSync(file)).digest('hex'),
      engine: 'classical',
      pixel_size_um: cal.pixel_size_um,
    };
    this.ctx.logger.info(`scorer: classical focus measure in a worker thread (no sign: sign_confidence 0.5), calibration ${file}`);
  }

  async score(tile: DecodedTile): Promise<ScoreResult> {
    const w = this.worker;
    if (!w || !this.cal) throw new Error('ClassicalScorer: score() before start()');
    // a copy we can transfer (the tile's buffer may be a view into a larger pool)
    const rgb = new Uint8Array(tile.rgb.length);
    rgb.set(tile.rgb);
    const id = this.nextId++;
    const r = await new Promise<ClassicalWorkResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ id, rgb: rgb.buffer, width: tile.width, height: tile.height, pixelSizeUm: tile.header.pixel_size_um }, [rgb.buffer]);
    });
    const plan = r.rows > 0 ? { rows: r.rows, cols: r.cols } : null;
    // planTile gives a tile with enough tissue at least one patch, so estimates is empty only below tissue.minFraction
    if (r.tissueFraction < this.ctx.config.tissue.minFraction || !plan || r.estimates.length === 0) return noTissueResult(this.info, r.tissueFraction, plan);
    const est: PatchEstimate[] = r.estimates.map((p) => ({ row: p.row, col: p.col, defocus_um: p.abs_um, sign_confidence: 0.5, sigma_um: null }));
    return aggregate(this.info, r.tissueFraction, plan, est);
  }

  async stop(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
    for (const p of this.pending.values()) p.reject(new Error('ClassicalScorer stopped'));
    this.pending.clear();
  }
}
