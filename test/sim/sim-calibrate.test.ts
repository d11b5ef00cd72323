// focusd simulate --calibrate's pieces: a focus stack taken on the virtual matching instrument (other tissue than
// the slides) calibrates through the same code as focusd calibrate, and the calibrated bundle stops calling tiles
// at a true |z| of 0.5 µm out of focus (the shipped model over-reads |d| there: uncalibrated they sit at ~1 µm).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { calibrateOnSimulatedStack } from '../../cli/sim-calibrate.js';
import { simulateMain } from '../../cli/simulate.js';
import { DEFAULT_MODEL_DIR } from '../../config/load.js';
import type { ScoreResult, TileHeader } from '../../core/types.js';
import { decide } from '../../daemon/pipeline.js';
import { loadBundle } from '../../models/bundle.js';
import { listStack } from '../../models/calibrate-stack.js';
import { createScorer } from '../../models/index.js';
import { instrumentOptics } from '../../sim/instruments.js';
import { TileRenderer } from '../../sim/render.js';
import { slideSeed } from '../../sim/run.js';
import { isTissueKind, VirtualSlide } from '../../sim/slide.js';
import { scoringContext } from '../helpers/scoring-ctx.js';

describe('simulated calibration stack', () => {
  const dir = mkdtempSync(join(tmpdir(), 'focusd-sim-cal-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('matching instrument: the stack calibrates (sign model, a magnitude fit applied, a guard band); tiles at |z| = 0.5 µm read nearer 0.5 µm', async () => {
    // a smaller stack than simulate --calibrate takes (8 positions, −6..+6 µm), to keep the test short
    const c = await calibrateOnSimulatedStack({ instrument: 'matching', dir, modelDir: DEFAULT_MODEL_DIR, seed: 1, positions: 6, zFromUm: -3, zToUm: 3, stepUm: 0.5, fitRangeUm: 3 });
    // the format focusd calibrate reads: manifest.csv with file,z_um,ix,iy; 6 positions × 13 slices
    expect(readFileSync(join(c.stack.dir, 'manifest.csv'), 'utf8').split('\n')[0]).toBe('file,z_um,ix,iy');
    const listed = await listStack(c.stack.dir);
    expect(listed).toHaveLength(6 * 13);
    expect(new Set(listed.map((s) => s.position)).size).toBe(6);
    expect(c.sign.decision).toBe('model');
    expect(c.magnitude.applied).toBe(true);
    expect(c.magnitude.forms.signed).not.toBeNull();
    expect(c.magnitude.forms.abs).not.toBeNull();
    const { manifest } = await loadBundle(c.bundle);
    expect(manifest.calibration).toEqual(c.calibration);
    expect(manifest.calibration.fitted_at).toEqual(expect.any(String));

    // score tissue tiles of a slide the simulation would scan (other tissue than the stack) at ±0.5 µm
    const slide = new VirtualSlide({ seed: slideSeed(1, 0) });
    const tiles = slide.tiles.filter((t) => isTissueKind(t.kind)).slice(0, 5);
    const renderer = new TileRenderer(instrumentOptics('matching'), 16);
    const scores = async (model: string) => {
      const { ctx } = scoringContext({ 'scoring.scorer': 'cnn', 'scoring.engine.type': 'onnx', 'scoring.model': model });
      const scorer = createScorer(ctx);
      await scorer.start(new AbortController().signal);
      const out: ScoreResult[] = [];
      try {
        for (const t of tiles)
          for (const z of [-0.5, 0.5]) {
            const img = renderer.render(slide, t, z);
            out.push(await scorer.score({ header: { pixel_size_um: 0.22 } as TileHeader, width: img.width, height: img.height, rgb: img.rgb, receivedAt: 0 }));
          }
      } finally {
        await scorer.stop();
      }
      return out;
    };
    const share = (v: ScoreResult[]) => v.filter((x) => decide(x, 1) === 'in_focus').length / v.length;
    const err = (v: ScoreResult[]) => v.reduce((a, x) => a + Math.abs(Math.abs(x.defocus_um!) - 0.5), 0) / v.length;
    const before = await scores(DEFAULT_MODEL_DIR);
    const after = await scores(c.bundle);
    // the magnitude fit undoes the model's over-read of procedural tiles: |d| nearer 0.5 µm
    expect(err(after)).toBeLessThan(err(before) - 0.1);
    // the guard band comes from the stack's scatter at ±1 µm (procedural tissue scatters a lot there: a sizeable
    // band, never more than a quarter of the tolerance); the tile events carry it and the verdict applies it
    expect(c.calibration.guard_um).toBeGreaterThan(0.05);
    expect(c.calibration.guard_um).toBeLessThanOrEqual(0.25);
    expect(c.calibration.source).toMatch(/guard band [0-9.]+ µm: in focus up to [0-9.]+ µm \(held-out readings near ±1 µm: sd [0-9.]+ µm/);
    for (const x of after) {
      expect(x.model.calibration).toEqual({ sign: 'model', fitted: true, guard_um: c.calibration.guard_um });
      expect(decide(x, 1)).toBe(Math.abs(x.defocus_um!) <= 1 - c.calibration.guard_um! ? 'in_focus' : 'out_of_focus');
    }
    // even with the band, no fewer of these sharp tiles are called in focus than without calibration
    expect(share(after)).toBeGreaterThanOrEqual(share(before));
  }, 60_000);

  it('focusd simulate --calibrate: usage errors exit 64 (an external daemon, a bad fit range, the classical scorer)', async () => {
    const errs: string[] = [];
    const orig = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((s: string) => (errs.push(String(s)), true)) as typeof process.stderr.write;
    try {
      expect(await simulateMain(['--calibrate', '--endpoint', 'tcp://127.0.0.1:5555'])).toBe(64);
      expect(await simulateMain(['--calibrate', '--calibration-fit-range', '0'])).toBe(64);
      expect(await simulateMain(['--calibrate', '--scorer', 'classical'])).toBe(64);
    } finally {
      process.stderr.write = orig;
    }
    expect(errs.join('')).toMatch(/--calibrate needs the in-process daemon/);
    expect(errs.join('')).toMatch(/--calibration-fit-range: "0"/);
    expect(errs.join('')).toMatch(/--calibrate calibrates a model bundle; the scorer is classical/);
  });
});
