// The guard band of a calibrated bundle: a calibrated reading is unbiased at the tolerance, so tiles just beyond it
// pass as often as not; the band moves the in/out decision inside by the held-out scatter there (minus an over-read,
// plus an under-read), and the verdict rule applies it.
import { resolve } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import type { ModelInfo, ScoreResult } from '../../core/types.js';
import { decide } from '../../daemon/pipeline.js';
import { loadBundle, validateManifest } from '../../models/bundle.js';
import { fitCalibration, GUARD_MAX_SHARE, GUARD_MIN_SLICES, guardBandOf } from '../../models/calibration.js';
import type { ModelManifest } from '../../models/manifest.js';
import { linearStack } from '../helpers/calibration-samples.js';

const DEFAULT = resolve(import.meta.dirname, '..', '..', 'models', 'default');
const grid = (from: number, to: number, step: number) => Array.from({ length: Math.round((to - from) / step) + 1 }, (_, i) => from + i * step);

/** n held-out slices at ±1 µm read as |z| + bias + a known scatter (symmetric, exact sd), plus slices far away. */
function atTolerance(n: number, bias: number, sd: number): { z: number[]; pred: number[] } {
  const z: number[] = [];
  const pred: number[] = [];
  for (let i = 0; i < n; i++) {
    const side = i % 2 ? 1 : -1;
    // alternating ±sd·c around the bias: sample sd = sd exactly for the right c
    const c = Math.sqrt((n - 1) / n);
    z.push(side);
    pred.push(side * (1 + bias + (Math.floor(i / 2) % 2 ? 1 : -1) * sd * c));
  }
  // slices far from the tolerance do not count
  z.push(3, -3, 0);
  pred.push(9, -9, 4);
  return { z, pred };
}

describe('calibration guard band', () => {
  let manifest: ModelManifest;
  beforeAll(async () => {
    manifest = (await loadBundle(DEFAULT)).manifest;
  });

  it('is the scatter at the tolerance minus the bias there, capped at half the tolerance, 0 without enough slices', () => {
    const unbiased = guardBandOf(...Object.values(atTolerance(16, 0, 0.15)) as [number[], number[]], 1);
    expect(unbiased).toMatchObject({ slices: 16, bias_um: 0 });
    expect(unbiased.sd_um).toBeCloseTo(0.15, 3);
    expect(unbiased.guard_um).toBeCloseTo(0.15, 3);
    // an under-read widens it: a tile at 1 µm reads 0.9 on average
    expect(guardBandOf(...Object.values(atTolerance(16, -0.1, 0.1)) as [number[], number[]], 1).guard_um).toBeCloseTo(0.2, 3);
    // an over-read larger than the scatter is a margin already
    expect(guardBandOf(...Object.values(atTolerance(16, 0.3, 0.1)) as [number[], number[]], 1).guard_um).toBe(0);
    // never more than GUARD_MAX_SHARE of the tolerance
    expect(guardBandOf(...Object.values(atTolerance(16, 0, 0.8)) as [number[], number[]], 1).guard_um).toBe(GUARD_MAX_SHARE);
    // too few slices at the tolerance: no band, and it says so (sd null)
    const few = guardBandOf(...Object.values(atTolerance(GUARD_MIN_SLICES - 1, 0, 0.3)) as [number[], number[]], 1);
    expect(few).toEqual({ guard_um: 0, sd_um: null, bias_um: null, slices: GUARD_MIN_SLICES - 1 });
  });

  it('focusd calibrate stores the band of the magnitude it applies, and says how it was measured', () => {
    // three positions in 0.25 µm steps with ±0.3 µm of uniform noise (sd ≈ 0.17 µm after the 1/1.157 line)
    const f = fitCalibration(manifest, linearStack(3, grid(-5, 5, 0.25), 11, 0.59, 1.157, 0.3));
    expect(f.magnitude.applied).toBe(true);
    const g = f.magnitude.heldout.guard.fit;
    expect(g.slices).toBeGreaterThanOrEqual(GUARD_MIN_SLICES);
    expect(f.calibration.guard_um).toBe(g.guard_um);
    expect(f.calibration.guard_um!).toBeGreaterThan(0.05);
    expect(f.calibration.guard_um!).toBeLessThan(0.35);
    expect(f.calibration.source).toMatch(/guard band [0-9.]+ µm: in focus up to [0-9.]+ µm \(held-out readings near ±1 µm: sd [0-9.]+ µm, bias [-+][0-9.]+ µm, \d+ slices\)/);
    // a noiseless stack needs none
    const clean = fitCalibration(manifest, linearStack(3, grid(-5, 5, 0.25), 11, 0.59, 1.157, 0));
    expect(clean.calibration.guard_um!).toBeLessThan(0.01);
    // the random draw does not matter much: another seed gives a band within 0.1 µm
    const other = fitCalibration(manifest, linearStack(3, grid(-5, 5, 0.25), 12, 0.59, 1.157, 0.3));
    expect(Math.abs(other.calibration.guard_um! - f.calibration.guard_um!)).toBeLessThan(0.1);
  });

  it('a manifest with a negative or absurd guard band is refused, naming the field', async () => {
    await expect(validateManifest({ ...manifest, calibration: { ...manifest.calibration, guard_um: -0.1 } }, 'x')).rejects.toThrow(/guard_um/);
    await expect(validateManifest({ ...manifest, calibration: { ...manifest.calibration, guard_um: 1e9 } }, 'x')).rejects.toThrow(/guard_um/);
    await expect(validateManifest({ ...manifest, calibration: { ...manifest.calibration, guard_um: '0.2' as unknown as number } }, 'x')).rejects.toThrow(/guard_um/);
    expect((await validateManifest({ ...manifest, calibration: { ...manifest.calibration, guard_um: 0.2 } }, 'x')).calibration.guard_um).toBe(0.2);
  });

  it('the verdict rule applies the bundle guard band: in focus only up to tolerance − guard', () => {
    const model = (guard: number | undefined): ModelInfo => ({
      name: 'm',
      version: '1',
      sha256: 'x',
      engine: 'onnxruntime/cpu',
      pixel_size_um: 0.22,
      ...(guard === undefined ? {} : { calibration: { sign: 'model' as const, fitted: true, guard_um: guard } }),
    });
    const score = (d: number | null, guard: number | undefined): ScoreResult => ({ defocus_um: d, uncertainty_um: 0.1, sign_confidence: 0.9, tissue_fraction: 0.5, patches: 4, focus_map: null, model: model(guard) });
    expect(decide(score(0.9, 0), 1)).toBe('in_focus');
    expect(decide(score(-0.9, 0.15), 1)).toBe('out_of_focus');
    expect(decide(score(0.85, 0.15), 1)).toBe('in_focus');
    expect(decide(score(0.9, undefined), 1)).toBe('in_focus'); // classical: no calibration, no band
    expect(decide(score(null, 0.15), 1)).toBe('no_tissue');
    // a tolerance lowered at run time (set_tolerance 0.2): the band is capped by the tolerance in force
    expect(GUARD_MAX_SHARE).toBe(0.25);
    expect(decide(score(0.15, 0.25), 0.2)).toBe('in_focus');
    expect(decide(score(0.16, 0.25), 0.2)).toBe('out_of_focus');
  });
});
