// The magnitude calibration in |d| (calibration.magnitude: abs): toPrediction applies it, the manifest schema takes
// it, and fitCalibration chooses it over the signed line exactly when it does better on held-out data.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBundle, validateManifest } from '../../models/bundle.js';
import { boundaryOf, type CalibrationSample, fitCalibration, MAX_BOUNDARY_SHIFT_UM, signByAbsZ, writeCalibratedBundle } from '../../models/calibration.js';
import { type ModelManifest, toPrediction } from '../../models/manifest.js';
import { rng32 } from '../../sim/procedural.js';
import { linearStack } from '../helpers/calibration-samples.js';

const DEFAULT = resolve(import.meta.dirname, '..', '..', 'models', 'default');
const grid = (from: number, to: number, step: number) => Array.from({ length: Math.round((to - from) / step) + 1 }, (_, i) => from + i * step);

/**
 * A stack on which the model over-reads |d| by `over` µm on both sides of focus (what the simulator's matching
 * instrument shows): |raw| = |z| + over + noise, the sign right beyond 0.5 µm and a coin toss nearer focus.
 */
function overRead(positions: number, zs: number[], seed: number, over = 0.8, noise = 0.1): CalibrationSample[] {
  const r = rng32(seed);
  const out: CalibrationSample[] = [];
  for (let p = 0; p < positions; p++)
    for (const z of zs) {
      const abs = Math.max(0, Math.abs(z) + over + noise * (r() - 0.5) * 2);
      const sign = Math.abs(z) >= 0.5 ? Math.sign(z) : r() < 0.5 ? 1 : -1;
      out.push({ z_rel_um: z, abs_um: abs, sign_logit: 3 * sign, position: `p${p}` });
    }
  return out;
}


describe('calibration.magnitude abs', () => {
  let manifest: ModelManifest;
  let dir: string;
  beforeAll(async () => {
    manifest = (await loadBundle(DEFAULT)).manifest;
    dir = await mkdtemp(join(tmpdir(), 'focusd-cal-abs-'));
  });
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('toPrediction: sign · max(0, slope·|raw| + intercept), sign confidence and sigma as with the signed form; absent = signed', async () => {
    const abs = { ...manifest, calibration: { slope: 1, intercept: -0.8, sign: 'model' as const, magnitude: 'abs' as const, source: 'test' } };
    const p = toPrediction(abs, 1.8, 2);
    expect(p.defocus_um).toBeCloseTo(1.0, 12);
    expect(p.sign_confidence).toBeCloseTo(1 / (1 + Math.exp(-2)), 12);
    expect(toPrediction(abs, 1.8, -2).defocus_um).toBeCloseTo(-1.0, 12);
    expect(toPrediction(abs, 1.8, -2).sign_confidence).toBeCloseTo(p.sign_confidence, 12);
    // within the over-read: in focus, whichever sign
    expect(Math.abs(toPrediction(abs, 0.5, 2).defocus_um)).toBe(0);
    expect(Math.abs(toPrediction(abs, 0.5, -2).defocus_um)).toBe(0);
    expect(toPrediction(abs, 3, 1, Math.log(0.25)).sigma_um).toBeCloseTo(0.5, 12);
    // inverted: the sign flips, the magnitude is the same
    const inv = { ...abs, calibration: { ...abs.calibration, sign: 'inverted' as const } };
    expect(toPrediction(inv, 1.8, 2).defocus_um).toBeCloseTo(-1.0, 12);
    // the signed form with the same numbers moves the signed value: +1.8 → 1.0 but −1.8 → −2.6
    const signed = { ...abs, calibration: { ...abs.calibration, magnitude: 'signed' as const } };
    expect(toPrediction(signed, 1.8, 2).defocus_um).toBeCloseTo(1.0, 12);
    expect(toPrediction(signed, 1.8, -2).defocus_um).toBeCloseTo(-2.6, 12);
    const { magnitude: _m, ...absent } = signed.calibration;
    expect(toPrediction({ ...manifest, calibration: absent }, 1.8, -2).defocus_um).toBeCloseTo(-2.6, 12);
    // unrecoverable: |d| either way
    const un = { ...abs, calibration: { ...abs.calibration, sign: 'unrecoverable' as const } };
    expect(toPrediction(un, 1.8, -2)).toMatchObject({ defocus_um: expect.closeTo(1.0, 12), sign_confidence: 0.5 });
    // the schema takes it, a calibrated bundle keeps it, an unknown form is refused
    const out = join(dir, 'abs-bundle');
    const b = await writeCalibratedBundle(DEFAULT, out, abs.calibration);
    expect(b.manifest.calibration.magnitude).toBe('abs');
    expect(toPrediction(b.manifest, 1.8, -2).defocus_um).toBeCloseTo(-1.0, 12);
    await expect(validateManifest({ ...manifest, calibration: { ...abs.calibration, magnitude: 'log' as never } }, 'x')).rejects.toThrow(/magnitude/);
  });

  it('a symmetric +0.8 µm over-read: the fit chooses abs and puts the held-out in/out boundary within 0.1 µm of ±1 µm', () => {
    const s = overRead(3, grid(-5, 5, 0.25), 7);
    const f = fitCalibration(manifest, s);
    expect(f.calibration.sign).toBe('model');
    expect(f.calibration.magnitude).toBe('abs');
    expect(f.magnitude.form).toBe('abs');
    expect(f.magnitude.applied).toBe(true);
    expect(f.calibration.slope).toBeCloseTo(1, 1);
    expect(f.calibration.intercept).toBeCloseTo(-0.8, 1);
    // both forms were checked on held-out positions; abs wins on MAE, and its boundary is where it should be
    const { signed, abs } = f.magnitude_forms;
    expect(abs!.method).toBe('leave-one-position-out');
    expect(abs!.heldout.mae_um.fit!).toBeLessThan(signed.heldout.mae_um.fit ?? Infinity);
    expect(abs!.heldout.boundary.fit.error_um!).toBeLessThanOrEqual(MAX_BOUNDARY_SHIFT_UM);
    expect(Math.abs(abs!.heldout.boundary.fit.positive_um! - 1)).toBeLessThanOrEqual(MAX_BOUNDARY_SHIFT_UM);
    expect(Math.abs(abs!.heldout.boundary.fit.negative_um! + 1)).toBeLessThanOrEqual(MAX_BOUNDARY_SHIFT_UM);
    // without calibration the boundary is far inside: ±0.2 µm is called out of focus
    expect(abs!.heldout.boundary.identity.error_um!).toBeGreaterThan(0.5);
    expect(f.calibration.source).toMatch(/fit applied \(abs form\)/);
    expect(f.calibration.source).toMatch(/signed form: /);
    expect(f.magnitude_choice).toMatch(/^abs form/);
    // on a fresh stack of the same instrument: the boundary within 0.1 µm of ±1 on both sides
    const fresh = overRead(2, grid(-4.9, 4.9, 0.2), 99);
    const cal = { ...manifest, calibration: f.calibration };
    const pred = fresh.map((x) => toPrediction(cal, x.abs_um, x.sign_logit).defocus_um);
    const b = boundaryOf(fresh.map((x) => x.z_rel_um), pred, 1, false);
    expect(b.error_um!).toBeLessThanOrEqual(MAX_BOUNDARY_SHIFT_UM);
    // the signed line cannot: whatever it does, one side stays off
    const sl = { ...manifest, calibration: { ...f.calibration, magnitude: 'signed' as const, slope: signed.fitted.slope, intercept: signed.fitted.intercept } };
    const ps = fresh.map((x) => toPrediction(sl, x.abs_um, x.sign_logit).defocus_um);
    expect(boundaryOf(fresh.map((x) => x.z_rel_um), ps, 1, false).error_um!).toBeGreaterThan(0.3);
  });

  it('a prediction that hardly changes with z has its crossing at the edge of the slices, not hundreds of µm out', () => {
    // predictions ~0.3 µm whatever z (a model blind on this side): the fitted line is nearly flat
    const z = grid(0.2, 2.8, 0.2);
    const pred = z.map((v, i) => 0.3 + 0.002 * v + (i % 2 ? 0.01 : -0.01));
    const b = boundaryOf(z, pred, 1, false);
    expect(b.positive_um).toBeCloseTo(Math.max(...z), 9);
    expect(b.error_um).toBeCloseTo(Math.max(...z) - 1, 9);
    // a line that crosses inside the slices is untouched
    const good = boundaryOf(z, z.map((v) => 1.2 * v), 1, false);
    expect(good.positive_um).toBeCloseTo(1 / 1.2, 9);
  });

  it('a clean signed line (shifted focus, scale error) keeps the signed form', () => {
    const f = fitCalibration(manifest, linearStack(3, grid(-5, 5, 0.25), 11));
    expect(f.calibration.magnitude).toBe('signed');
    expect(f.magnitude.form).toBe('signed');
    expect(f.magnitude.applied).toBe(true);
    expect(f.calibration.slope).toBeCloseTo(1 / 1.157, 1);
    expect(f.magnitude_forms.abs).not.toBeNull();
    // the abs line was fitted and checked too, and lost (failed, or a higher held-out MAE)
    const abs = f.magnitude_forms.abs!;
    expect(!abs.applied || abs.heldout.mae_um.fit! >= f.magnitude.heldout.mae_um.fit!).toBe(true);
    expect(f.calibration.source).toMatch(/fit applied \(signed form\)/);
    expect(f.calibration.source).toMatch(/abs form: /);
  });

  it('an unrecoverable sign has one form (the line is in |d| already); identity when nothing passes', () => {
    const coin = rng32(5);
    const s = overRead(3, grid(-5, 5, 0.25), 8).map((x) => ({ ...x, sign_logit: coin() < 0.5 ? 2 : -2 }));
    const f = fitCalibration(manifest, s);
    expect(f.sign.decision).toBe('unrecoverable');
    expect(f.magnitude_forms.abs).toBeNull();
    expect(f.calibration.magnitude).toBe('signed');
    // too few slices: neither form is applied, the sign is still decided
    const few = fitCalibration(manifest, linearStack(1, [-3, -1.5, 1.5, 3], 1, 0.59, 1.157, 0.4), { minAbsZ: 1, alpha: 0.1 });
    expect(few.calibration).toMatchObject({ slope: 1, intercept: 0, sign: 'model', magnitude: 'signed' });
    expect(few.magnitude_forms.abs!.applied).toBe(false);
    expect(few.magnitude_choice).toMatch(/neither/);
  });

  it('signByAbsZ: the sign agreement per band of |z| shows where the model sign flips', () => {
    // right within 3 µm, wrong beyond (what the shipped model does below −3.5 µm on the matching optics)
    const s = grid(-5, 5, 0.5).map((z) => ({ z_rel_um: z, sign_logit: (Math.abs(z) < 3 ? 1 : -1) * Math.sign(z) }));
    const b = signByAbsZ(s);
    expect(b.map((x) => [x.from_um, x.to_um])).toEqual([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6]]);
    expect(b.map((x) => x.agreement)).toEqual([1, 1, 1, 0, 0, 0]);
    expect(b.map((x) => x.n)).toEqual([2, 4, 4, 4, 4, 2]); // z = 0 has no sign; [0, 1) holds ±0.5, [5, 6) ±5
    expect(signByAbsZ([])).toEqual([]);
  });
});
