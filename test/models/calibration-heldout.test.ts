// Calibration never hurts: the magnitude fit is applied only when it helps on stack positions / slices it was not
// fitted to, and must keep the in/out boundary within 0.1 µm on held-out data; otherwise identity, with the reason.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { calibrateMain } from '../../cli/calibrate.js';
import { loadBundle } from '../../models/bundle.js';
import { boundaryOf, fitCalibration, MAX_BOUNDARY_SHIFT_UM } from '../../models/calibration.js';
import { type ModelManifest, toPrediction } from '../../models/manifest.js';
import { encodePng, rng32, synthTile } from '../../sim/procedural.js';
import { linearStack } from '../helpers/calibration-samples.js';

const DEFAULT = resolve(import.meta.dirname, '..', '..', 'models', 'default');

const grid = (from: number, to: number, step: number) => Array.from({ length: Math.round((to - from) / step) + 1 }, (_, i) => from + i * step);

describe('calibration never hurts', () => {
  let manifest: ModelManifest;
  beforeAll(async () => {
    manifest = (await loadBundle(DEFAULT)).manifest;
  });

  it('a bad stack (4 slices, one position) falls back to identity magnitude and says why; the sign is still decided', () => {
    const f = fitCalibration(manifest, linearStack(1, [-3, -1.5, 1.5, 3], 1, 0.59, 1.157, 0.4), { minAbsZ: 1, alpha: 0.1 });
    expect(f.magnitude.applied).toBe(false);
    expect(f.magnitude.method).toBe('z-parity');
    expect(f.magnitude.reason).toMatch(/too few slices to check the fit on data it did not see/);
    expect(f.calibration).toMatchObject({ slope: 1, intercept: 0, sign: 'model' });
    expect(f.calibration.source).toMatch(/magnitude identity: too few slices/);
    // both are reported: the fit that was not applied, too
    expect(f.magnitude.fitted.slope).toBeGreaterThan(0);
    expect(f.magnitude.fitted.slope).not.toBe(1);
  });

  it('a fit that does not help on held-out positions is not applied (identity, with the held-out numbers)', () => {
    // the model is already right on average, and each position has its own offset: a fit learns noise
    const r = rng32(3);
    const s = linearStack(3, grid(-4, 4, 0.5), 5, 0, 1, 0.05).map((x) => {
      const off = { p0: 0.6, p1: -0.6, p2: 0 }[x.position as 'p0'] + 0.05 * (r() - 0.5);
      const raw = x.z_rel_um + off;
      return { ...x, abs_um: Math.abs(raw), sign_logit: raw >= 0 ? 4 : -4 };
    });
    const f = fitCalibration(manifest, s);
    expect(f.magnitude.method).toBe('leave-one-position-out');
    expect(f.magnitude.folds).toBe(3);
    expect(f.magnitude.applied).toBe(false);
    expect(f.magnitude.reason).toMatch(/on held-out slices \(leave-one-position-out\)/);
    expect(f.calibration).toMatchObject({ slope: 1, intercept: 0 });
  });

  it('a good stack: the fit is applied and the in/out boundary on held-out slices moves ≤ 0.1 µm from the truth', () => {
    // three positions, 0.25 µm steps: the model reads raw = 0.59 + 1.157 z (boundary far off without calibration)
    const f = fitCalibration(manifest, linearStack(3, grid(-5, 5, 0.25), 11));
    expect(f.magnitude.applied).toBe(true);
    expect(f.magnitude.heldout.mae_um.fit!).toBeLessThan(f.magnitude.heldout.mae_um.identity!);
    expect(f.magnitude.heldout.boundary.fit.error_um!).toBeLessThanOrEqual(MAX_BOUNDARY_SHIFT_UM);
    expect(f.magnitude.heldout.boundary.identity.error_um!).toBeGreaterThan(0.3);
    expect(f.calibration.slope).toBeCloseTo(1 / 1.157, 1);
    // and on a fresh stack of the same instrument the fit never saw (other positions, z between the old slices)
    const fresh = linearStack(2, grid(-4.9, 4.9, 0.2), 99);
    const cal = { ...manifest, calibration: f.calibration };
    const pred = fresh.map((x) => toPrediction(cal, x.abs_um, x.sign_logit).defocus_um);
    const b = boundaryOf(fresh.map((x) => x.z_rel_um), pred, 1, false);
    expect(b.error_um!).toBeLessThanOrEqual(MAX_BOUNDARY_SHIFT_UM);
    // one position: the split by z parity checks it the same way
    const one = fitCalibration(manifest, linearStack(1, grid(-5, 5, 0.25), 12));
    expect(one.magnitude.method).toBe('z-parity');
    expect(one.magnitude.applied).toBe(true);
    expect(one.magnitude.heldout.boundary.fit.error_um!).toBeLessThanOrEqual(MAX_BOUNDARY_SHIFT_UM);
  });
});

describe('focusd calibrate on a procedural bad stack', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'focusd-cal-heldout-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('four slices at one position: identity magnitude, the reason in the report and the bundle', async () => {
    const st = join(dir, 'stack');
    await mkdir(st, { recursive: true });
    for (const z of [-3, -1, 1, 3]) {
      const t = synthTile({ width: 320, height: 320, seed: 21, defocusUm: z, pixelSizeUm: 0.22 });
      const name = `pos_z${z >= 0 ? '+' : '-'}${Math.abs(z).toFixed(3).padStart(7, '0')}um.png`;
      await writeFile(join(st, name), await encodePng(t));
    }
    const out = join(dir, 'out');
    const writes: string[] = [];
    const errs: string[] = [];
    const orig = process.stdout.write.bind(process.stdout);
    const origErr = process.stderr.write.bind(process.stderr);
    process.stdout.write = ((s: string) => (writes.push(String(s)), true)) as typeof process.stdout.write;
    process.stderr.write = ((s: string) => (errs.push(String(s)), true)) as typeof process.stderr.write;
    let code: number;
    try {
      code = await calibrateMain([st, '--out', out, '--pixel-size', '0.22', '--patches', '1']);
    } finally {
      process.stdout.write = orig;
      process.stderr.write = origErr;
    }
    // no held-out slices at ±1 µm were checked: no guard band, and the summary says why
    expect(errs.join('')).toMatch(/\nguard band 0 µm \(0 held-out slices within 0.25 µm of ±1 µm, needs 6\)/);
    expect(code).toBe(0);
    const report = JSON.parse(writes.join('')) as { magnitude: { applied: boolean; reason: string; fitted: { slope: number } }; calibration: { slope: number; intercept: number; source: string } };
    expect(report.magnitude.applied).toBe(false);
    expect(report.magnitude.reason).toMatch(/too few slices/);
    expect(report.calibration).toMatchObject({ slope: 1, intercept: 0, guard_um: 0 });
    const b = await loadBundle(out);
    expect(b.manifest.calibration.guard_um).toBe(0);
    expect(b.manifest.calibration.source).toMatch(/magnitude identity: too few slices/);
    expect((b.manifest.metrics as { calibration: { magnitude: { applied: boolean } } }).calibration.magnitude.applied).toBe(false);
  });
});
