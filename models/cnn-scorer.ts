/**
 * CNN scorer: model bundle + inference engine + tissue detection + patches → one result per tile.
 *
 * Per tile: tissue mask and patch plan (planTile, models/patches.ts, the sampling rule shared with the classical
 * scorer) → too little tissue: no_tissue; else the patches of a grid covering the whole tile at the model's pixel
 * size, the tissue-richest patches (scoring.patches.maxPerTile) in batches of
 * scoring.engine.batchSize through the engine, each output calibrated by toPrediction() (models/manifest.ts, the one
 * place calibration is applied), then median / MAD / sign confidence and the coarse focus map (models/aggregate.ts).
 * Tissue detection and copying the patches' bytes run on the event loop (a few ms for a 1600x1200 tile, see bench/);
 * normalisation and inference run in the engine's worker thread.
 */
import { resolve } from 'node:path';
import type { Context } from '../core/context.js';
import type { DecodedTile, ModelInfo, ScoreResult } from '../core/types.js';
import { aggregate, noTissueResult, type PatchEstimate } from './aggregate.js';
import { createEngine } from './engines/registry.js';
import type { EngineModel, InferenceEngine } from './engines/types.js';
import { loadBundle } from './bundle.js';
import { type ModelManifest, toPrediction } from './manifest.js';
import { PatchBytes, planTile } from './patches.js';
import type { Scorer } from './scorer.js';

/** The bundle as an engine needs it, loaded and checked by models/bundle.ts (JSON Schema, sha256). */
export async function loadEngineModel(dir: string): Promise<EngineModel> {
  const b = await loadBundle(dir);
  return { dir: resolve(dir), manifest: b.manifest, modelPath: b.modelPath };
}

export class CnnScorer implements Scorer {
  readonly name = 'scorer:cnn';
  private engine: InferenceEngine | null = null;
  private model: EngineModel | null = null;
  /** idle batch buffers; concurrent score() calls each take their own, so they may overlap. */
  private readonly batchers: PatchBytes[] = [];
  private inFlight = new Set<Promise<unknown>>();
  private _info: ModelInfo | null = null;

  constructor(private readonly ctx: Context, private readonly modelDir: string = ctx.config.resolved.modelDir) {}

  get info(): ModelInfo {
    if (!this._info) throw new Error('CnnScorer: info read before start()');
    return this._info;
  }

  /** The running engine (bench uses it for bare-inference throughput). */
  get inference(): InferenceEngine {
    if (!this.engine) throw new Error('CnnScorer: not started');
    return this.engine;
  }

  get manifest(): ModelManifest {
    if (!this.model) throw new Error('CnnScorer: not started');
    return this.model.manifest;
  }

  async start(signal: AbortSignal): Promise<void> {
    const model = await loadEngineModel(this.modelDir);
    this.model = model;
    const engine = createEngine(this.ctx, model);
    this.engine = engine;
    await engine.start(signal);
    const m = model.manifest;
    this.batchers.push(new PatchBytes(m.input, this.ctx.config.scoring.engine.batchSize));
    this._info = {
      name: m.name,
      version: m.version,
      // loadBundle has checked that the model file hashes to the manifest's sha256
      sha256: m.sha256,
      engine: engine.info.engine,
      pixel_size_um: m.input.pixel_size_um,
      // the controller's prior for the sign on a new instrument (outcome learning, docs/controller.md)
      calibration: { sign: m.calibration.sign, fitted: typeof m.calibration.fitted_at === 'string', guard_um: m.calibration.guard_um ?? 0 },
    };
    this.ctx.logger.info(`scorer: cnn ${m.name} ${m.version} (${m.architecture}) on ${engine.info.engine}`, { sha256: this._info.sha256 });
  }

  score(tile: DecodedTile): Promise<ScoreResult> {
    const p = this.scoreNow(tile);
    this.inFlight.add(p);
    void p.catch(() => undefined).finally(() => this.inFlight.delete(p));
    return p;
  }

  private async scoreNow(tile: DecodedTile): Promise<ScoreResult> {
    const { engine, model } = this;
    if (!engine || !model) throw new Error('CnnScorer: score() before start()');
    const batcher = this.batchers.pop() ?? new PatchBytes(model.manifest.input, this.ctx.config.scoring.engine.batchSize);
    try {
      return await this.scoreWith(tile, engine, model, batcher);
    } finally {
      this.batchers.push(batcher);
    }
  }

  private async scoreWith(tile: DecodedTile, engine: InferenceEngine, model: EngineModel, batcher: PatchBytes): Promise<ScoreResult> {
    const cfg = this.ctx.config;
    const m = model.manifest;
    const { tissue, hasTissue, plan } = planTile({ ...tile, pixelSizeUm: tile.header.pixel_size_um }, m.input, { tissue: cfg.tissue, patches: cfg.scoring.patches });
    if (!hasTissue || !plan) return noTissueResult(this.info, tissue.fraction, plan);
    const est: PatchEstimate[] = [];
    const bs = batcher.batchSize;
    for (let i = 0; i < plan.selected.length; i += bs) {
      const cells = plan.selected.slice(i, i + bs);
      cells.forEach((c, k) => batcher.fill(k, tile.rgb, tile.width, tile.height, c));
      // 8-bit patches travel to the engine's worker (which normalises them) and back: no float work on the loop,
      // no copy, no garbage
      const out = await engine.runBytes(batcher.take(), cells.length, { transfer: true });
      if (out.returned) batcher.give(new Uint8Array(out.returned));
      cells.forEach((c, k) => {
        const p = toPrediction(m, out.abs_um[k]!, out.sign_logit[k]!, out.log_var ? out.log_var[k]! : undefined);
        est.push({ row: c.row, col: c.col, defocus_um: p.defocus_um, sign_confidence: p.sign_confidence, sigma_um: p.sigma_um });
      });
    }
    // over the whole tile, not the selected cells: which cells are selected changes with the blur, and two
    // acquisitions must be compared on the same field
    return { ...aggregate(this.info, tissue.fraction, plan, est), sharpness: tileSharpness(tile.rgb, tile.width, tile.height) };
  }

  async stop(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
    const e = this.engine;
    this.engine = null;
    if (e) await e.stop();
  }
}

/**
 * Brenner gradient (squared difference two pixels apart, both axes) of a tile's luma, divided by the squared mean
 * luma: the classical focus measure of brennerSharpness (models/calibration.ts), on every second row with each row's
 * luma computed once and no grey copy of the tile, because it runs on the event loop for every tile (~5 ms for
 * 1600x1200; the full measure took 29). The network reads defocus from one image and can be fooled by an
 * instrument's aberrations; two acquisitions of the same field compared by this measure say which one is nearer
 * focus on any instrument (docs/controller.md: how the loop judges its moves). null for an empty tile.
 */
export function tileSharpness(rgb: Uint8Array, width: number, height: number): number | null {
  if (width < 1 || height < 1) return null;
  let s = 0;
  let sum = 0;
  let n = 0;
  let m = 0;
  let cur = new Float32Array(width);
  let next = new Float32Array(width);
  const lumaRow = (out: Float32Array, y: number) => {
    for (let x = 0, p = y * width * 3; x < width; x++, p += 3) out[x] = 0.299 * rgb[p]! + 0.587 * rgb[p + 1]! + 0.114 * rgb[p + 2]!;
  };
  lumaRow(cur, 0);
  for (let y = 0; y < height; y += 2) {
    const hasNext = y + 2 < height;
    if (hasNext) lumaRow(next, y + 2);
    for (let x = 0; x < width; x++) {
      const v = cur[x]!;
      sum += v;
      m++;
      if (x + 2 < width) {
        s += (cur[x + 2]! - v) ** 2;
        n++;
      }
      if (hasNext) {
        s += (next[x]! - v) ** 2;
        n++;
      }
    }
    [cur, next] = [next, cur];
  }
  if (n === 0) return null;
  const mean = sum / m;
  return Math.round((s / n / Math.max(1e-6, mean * mean)) * 1e7) / 1e7;
}
