import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TileHeader } from '../../core/types.js';
import { synthTile } from '../../sim/procedural.js';
import { DefocusOptics } from '../../imaging/optics.js';
import { ClassicalScorer, DEFAULT_CLASSICAL_CALIBRATION, estimateAbsUm, loadClassicalCalibration } from '../../models/classical.js';
import { createScorer } from '../../models/index.js';
import { LoopProbe } from '../helpers/loop-probe.js';
import { scoringContext } from '../helpers/scoring-ctx.js';

const optics = new DefocusOptics();
const header = (px = 0.22) => ({ pixel_size_um: px }) as TileHeader;
// seeds other than the calibration's (1000..1002)
const SEEDS = [11, 12];

describe('classical scorer', () => {
  const { ctx } = scoringContext({ 'scoring.patches.maxPerTile': 8 });
  const scorer = new ClassicalScorer(ctx);
  beforeAll(() => scorer.start());
  afterAll(() => scorer.stop());

  const score = (seed: number, z: number, extra: Partial<Parameters<typeof synthTile>[0]> = {}, px = 0.22) => {
    const t = synthTile({ width: 960, height: 720, seed, defocusUm: z, pixelSizeUm: px, ...extra }, optics);
    return scorer.score({ header: header(px), width: t.width, height: t.height, rgb: t.rgb, receivedAt: 0 });
  };

  it('is ~0 in focus and |d| grows with |z| (both signs); it cannot read the sign: +|d| with sign confidence 0.5', async () => {
    for (const seed of SEEDS) {
      const d: number[] = [];
      for (const z of [0, 2, 4, 8]) {
        const r = await score(seed, z);
        d.push(r.defocus_um!);
        expect(r.sign_confidence).toBe(0.5);
        expect(r.defocus_um!).toBeGreaterThanOrEqual(0);
        expect(r.patches).toBeGreaterThan(0);
        expect(r.patches).toBeLessThanOrEqual(8);
        expect(r.model.engine).toBe('classical');
      }
      expect(d[0]!, `in focus, seed ${seed}`).toBeLessThanOrEqual(1);
      for (let i = 1; i < d.length; i++) expect(d[i]!, `seed ${seed}: ${d.join(', ')}`).toBeGreaterThan(d[i - 1]!);
      expect(Math.abs(d[2]! - 4)).toBeLessThan(1.5);
      const neg = await score(seed, -4);
      expect(neg.defocus_um!).toBeGreaterThan(2);
      expect(neg.defocus_um!).toBeLessThan(6);
    }
  });

  it('does not depend on the stain intensity: pale PAS-like tissue reads the same defocus', async () => {
    for (const z of [0, 4]) {
      const t = synthTile({ width: 960, height: 720, seed: 13, kind: 'pale', defocusUm: z }, optics);
      const r = await scorer.score({ header: header(), width: t.width, height: t.height, rgb: t.rgb, receivedAt: 0 });
      expect(Math.abs(r.defocus_um! - z)).toBeLessThan(1.5);
    }
  });

  it('tiles of another pixel size are rescaled to the calibration pixel size', async () => {
    const r = await score(14, 4, {}, 0.3);
    expect(Math.abs(r.defocus_um! - 4)).toBeLessThan(1.8);
  });

  it('a tile with half its area defocused shows it in the focus map', async () => {
    const { ctx: all } = scoringContext({ 'scoring.patches.maxPerTile': 0 });
    const s = new ClassicalScorer(all);
    await s.start();
    try {
      const t = synthTile({ width: 1536, height: 768, seed: 15, defocusUm: 6, halfDefocus: true }, optics);
      const r = await s.score({ header: header(), width: t.width, height: t.height, rgb: t.rgb, receivedAt: 0 });
      const m = r.focus_map!;
      expect(m.cols).toBe(8);
      const left: number[] = [];
      const right: number[] = [];
      for (let row = 0; row < m.rows; row++)
        for (let col = 0; col < m.cols; col++) {
          const v = m.defocus_um[row * m.cols + col];
          if (v === null || v === undefined) continue;
          if (col < m.cols / 2 - 0.5) left.push(v);
          else if (col > m.cols / 2) right.push(v);
        }
      expect(left.length).toBeGreaterThan(1);
      expect(right.length).toBeGreaterThan(1);
      const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
      expect(mean(left)).toBeLessThan(1.5);
      expect(mean(right)).toBeGreaterThan(4);
      expect(r.uncertainty_um!).toBeGreaterThan(0);
    } finally {
      await s.stop();
    }
  });

  it('scores in a worker: timers keep firing all through each tile (relative to the tile time, load-robust)', async () => {
    // every tissue patch (maxPerTile 0) of a 2400x1800 tile: ≥ 300 ms of CPU per tile even on an idle machine
    const t = synthTile({ width: 2400, height: 1800, seed: 16, defocusUm: 2 }, optics);
    const { ctx: all } = scoringContext({ 'scoring.patches.maxPerTile': 0 });
    const s = new ClassicalScorer(all);
    await s.start();
    const probe = new LoopProbe();
    probe.start();
    try {
      for (let i = 0; i < 3; i++) await probe.time(() => s.score({ header: header(), width: t.width, height: t.height, rgb: t.rgb, receivedAt: 0 }));
    } finally {
      probe.stop();
      await s.stop();
    }
    console.log(`classical: ${probe.summary()}`);
    // were the tile scored on the loop, the longest timer gap would be a whole tile and no tick would fire inside
    // one; in the worker, gaps are scheduler noise (tens of ms on a loaded 2-core box), far below a tile
    expect(probe.shortest).toBeGreaterThan(300);
    expect(probe.maxGap).toBeLessThan(0.5 * probe.shortest);
    for (const n of probe.ticksPerSpan) expect(n).toBeGreaterThanOrEqual(5);
  });

  it('the calibration table is monotone enough to invert: each tabulated row maps back to its own |z|', () => {
    const cal = loadClassicalCalibration(DEFAULT_CLASSICAL_CALIBRATION);
    for (const row of cal.table) expect(Math.abs(estimateAbsUm(cal, row.mean) - row.abs_um)).toBeLessThan(0.3);
  });
});

describe('createScorer', () => {
  it('chooses the scorer named by scoring.scorer', () => {
    const { ctx } = scoringContext({ 'scoring.scorer': 'classical' });
    expect(createScorer(ctx)).toBeInstanceOf(ClassicalScorer);
  });

  it('a missing calibration file is a clear start() error', async () => {
    const { ctx } = scoringContext({ 'scoring.classical.calibration': '/nonexistent/cal.json' });
    await expect(new ClassicalScorer(ctx).start()).rejects.toThrow(/calibration not found: \/nonexistent\/cal.json/);
  });
});
