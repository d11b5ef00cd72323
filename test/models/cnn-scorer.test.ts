import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TileHeader } from '../../core/types.js';
import { synthTile } from '../../sim/procedural.js';
import { DefocusOptics } from '../../imaging/optics.js';
import { decide } from '../../daemon/pipeline.js';
import { CnnScorer } from '../../models/cnn-scorer.js';
import { createScorer } from '../../models/index.js';
import { scoringContext } from '../helpers/scoring-ctx.js';
import { TINY_PIXEL_UM, writeOnnxBundle, writeTfjsBundle } from '../helpers/tiny-model.js';

let dir: string;
const optics = new DefocusOptics();
const header = { pixel_size_um: 0.22 } as TileHeader;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'focusd-cnn-'));
  writeOnnxBundle(join(dir, 'onnx'));
  writeOnnxBundle(join(dir, 'onnx-nosign'), 'unrecoverable');
  await writeTfjsBundle(join(dir, 'tfjs'));
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function scorer(bundle: string, overrides: Record<string, unknown> = {}) {
  const { ctx, logs } = scoringContext({ 'scoring.scorer': 'cnn', 'scoring.model': join(dir, bundle), 'scoring.engine.type': bundle.startsWith('tfjs') ? 'tfjs' : 'onnx', ...overrides });
  const s = createScorer(ctx);
  expect(s).toBeInstanceOf(CnnScorer);
  await s.start(new AbortController().signal);
  return { s, ctx, logs };
}

const tile = (seed: number, z: number, extra: Record<string, unknown> = {}, w = 1024, h = 768) => {
  const t = synthTile({ width: w, height: h, seed, defocusUm: z, ...extra }, optics);
  return { header, width: t.width, height: t.height, rgb: t.rgb, receivedAt: 0 };
};

describe('CnnScorer', () => {
  it('scores a tissue tile: at most maxPerTile patches, median, spread, focus map, model identity', async () => {
    const { s } = await scorer('onnx', { 'scoring.patches.maxPerTile': 8 });
    try {
      const r = await s.score(tile(31, 3));
      expect(r.patches).toBeGreaterThan(0);
      expect(r.patches).toBeLessThanOrEqual(8);
      expect(r.defocus_um).not.toBeNull();
      expect(r.uncertainty_um!).toBeGreaterThanOrEqual(0);
      expect(r.sign_confidence!).toBeGreaterThanOrEqual(0.5);
      expect(r.sign_confidence!).toBeLessThanOrEqual(1);
      // 0.44 µm model pixels, 64 px patches = 128 tile pixels at 0.22 µm: an 8 x 6 grid over 1024 x 768
      expect(r.focus_map).toMatchObject({ rows: 6, cols: 8 });
      expect(r.focus_map!.defocus_um.filter((v) => v !== null)).toHaveLength(r.patches);
      const sha = createHash('sha256').update(readFileSync(join(dir, 'onnx', 'model.onnx'))).digest('hex');
      expect(r.model).toEqual({ name: 'tiny-laplacian', version: '0.0.1-test', sha256: sha, engine: 'onnxruntime/cpu', pixel_size_um: TINY_PIXEL_UM, calibration: { sign: 'model', fitted: false, guard_um: 0 } });
    } finally {
      await s.stop();
    }
  });

  it('glass gives no_tissue with its tissue fraction, and no patches are run', async () => {
    const { s } = await scorer('onnx');
    try {
      const t = synthTile({ width: 1024, height: 768, seed: 1, kind: 'glass' }, optics);
      const r = await s.score({ header, width: t.width, height: t.height, rgb: t.rgb, receivedAt: 0 });
      expect(r).toMatchObject({ defocus_um: null, uncertainty_um: null, sign_confidence: null, patches: 0 });
      expect(r.tissue_fraction).toBeLessThan(0.05);
    } finally {
      await s.stop();
    }
  });

  it('a tile with half its area defocused shows it in the focus map (the test net reads blur)', async () => {
    const { s } = await scorer('onnx', { 'scoring.patches.maxPerTile': 0 });
    try {
      const r = await s.score(tile(32, 6, { halfDefocus: true }));
      const m = r.focus_map!;
      const side = (lo: number, hi: number) => {
        const v: number[] = [];
        for (let row = 0; row < m.rows; row++) for (let col = lo; col < hi; col++) if (m.defocus_um[row * m.cols + col] != null) v.push(m.defocus_um[row * m.cols + col]!);
        return v.reduce((a, b) => a + b, 0) / v.length;
      };
      const sharp = side(0, m.cols / 2 - 1);
      const blurred = side(m.cols / 2 + 1, m.cols);
      // the crude test net is not calibrated in µm; what matters is that the blurred half stands out in the map
      expect(blurred).toBeGreaterThan(2 * sharp);
      expect(blurred - sharp).toBeGreaterThan(0.1);
    } finally {
      await s.stop();
    }
  });

  it('calibration comes from the manifest (toPrediction): sign "unrecoverable" gives +|d| and confidence 0.5', async () => {
    const { s } = await scorer('onnx-nosign');
    try {
      const r = await s.score(tile(33, 4));
      expect(r.sign_confidence).toBe(0.5);
      expect(r.defocus_um!).toBeGreaterThan(0);
      for (const v of r.focus_map!.defocus_um) if (v !== null) expect(v).toBeGreaterThanOrEqual(0);
    } finally {
      await s.stop();
    }
  });

  it('onnx and tfjs bundles of the same net give the same tile result (within 1e-3 µm)', async () => {
    const a = await scorer('onnx', { 'scoring.patches.maxPerTile': 0, 'scoring.engine.batchSize': 5 });
    const b = await scorer('tfjs', { 'scoring.patches.maxPerTile': 0, 'scoring.engine.batchSize': 3 });
    try {
      const t = tile(34, 2.5);
      const ra = await a.s.score(t);
      const rb = await b.s.score(t);
      expect(rb.model.engine).toBe('tfjs/wasm');
      expect(ra.patches).toBe(rb.patches);
      expect(Math.abs(ra.defocus_um! - rb.defocus_um!)).toBeLessThan(1e-3);
      ra.focus_map!.defocus_um.forEach((v, i) => {
        const u = rb.focus_map!.defocus_um[i];
        if (v === null) expect(u).toBeNull();
        else expect(Math.abs(v - u!)).toBeLessThan(1e-2); // map values are rounded to 0.01
      });
    } finally {
      await a.s.stop();
      await b.s.stop();
    }
  });

  it('the reported 800x600 tile (36 % tissue, +3 µm) is out of focus with the shipped model, the map covers the whole tile', async () => {
    // was no_tissue with 0 patches: a 1x2 grid skipped the bottom 280 rows, where the tissue is
    const { ctx } = scoringContext({ 'scoring.scorer': 'cnn', 'scoring.engine.type': 'onnx' });
    const s = createScorer(ctx);
    await s.start(new AbortController().signal);
    try {
      const r = await s.score(tile(1007, 3, { kind: 'tissue' }, 800, 600));
      expect(r.tissue_fraction).toBeGreaterThan(0.3);
      expect(r.patches).toBeGreaterThan(0);
      expect(r.focus_map).toMatchObject({ rows: 2, cols: 3 });
      expect(r.defocus_um!).toBeGreaterThan(ctx.config.decision.toleranceUm);
      expect(decide(r, ctx.config.decision.toleranceUm)).toBe('out_of_focus');
    } finally {
      await s.stop();
    }
  });

  it('scattered tissue that no patch holds 25 % of is still scored (fallback), not no_tissue', async () => {
    const { ctx } = scoringContext({ 'scoring.scorer': 'cnn', 'scoring.engine.type': 'onnx' });
    const s = createScorer(ctx);
    await s.start(new AbortController().signal);
    try {
      // glass with bands of 12 rows of blurred tissue every 64 rows
      const g = synthTile({ width: 1600, height: 1200, seed: 41, kind: 'glass' }, optics);
      const t = synthTile({ width: 1600, height: 1200, seed: 42, kind: 'tissue', defocusUm: 4 }, optics);
      for (let y = 0; y < 1200; y += 64) t.rgb.copy(g.rgb, y * 1600 * 3, y * 1600 * 3, (y + 12) * 1600 * 3);
      const r = await s.score({ header, width: 1600, height: 1200, rgb: g.rgb, receivedAt: 0 });
      expect(r.tissue_fraction).toBeGreaterThanOrEqual(ctx.config.tissue.minFraction);
      expect(r.patches).toBeGreaterThan(0);
      expect(r.defocus_um).not.toBeNull();
      expect(decide(r, ctx.config.decision.toleranceUm)).not.toBe('no_tissue');
    } finally {
      await s.stop();
    }
  });

  it('a bundle whose model file does not match the manifest sha256 is refused at start', async () => {
    const bad = join(dir, 'onnx-bad');
    writeOnnxBundle(bad);
    const mf = JSON.parse(readFileSync(join(bad, 'manifest.json'), 'utf8'));
    mf.sha256 = '0'.repeat(64);
    writeFileSync(join(bad, 'manifest.json'), JSON.stringify(mf));
    const { ctx } = scoringContext({ 'scoring.scorer': 'cnn', 'scoring.model': bad });
    await expect(new CnnScorer(ctx).start(new AbortController().signal)).rejects.toThrow(/sha256 mismatch: model.onnx hashes to [0-9a-f]{64}, manifest says 0{64}/);
  });
});
