import { describe, expect, it } from 'vitest';
import { aggregate, type PatchEstimate } from '../../models/aggregate.js';
import type { ModelInfo } from '../../core/types.js';

const model: ModelInfo = { name: 't', version: '0', sha256: 'x', engine: 'onnxruntime/cpu', pixel_size_um: 0.22, calibration: { sign: 'model', fitted: false, guard_um: 0 } };
const plan = { rows: 2, cols: 3 };
const est = (vals: Array<[number, number]>): PatchEstimate[] =>
  vals.map(([d, c], i) => ({ row: Math.floor(i / 3), col: i % 3, defocus_um: d, sign_confidence: c, sigma_um: null }));

describe('aggregate', () => {
  it('patches that agree: |defocus| is the median magnitude, sign theirs, confidence their mean', () => {
    const r = aggregate(model, 0.8, plan, est([[-2.1, 0.95], [-1.9, 0.9], [-2.0, 0.99], [-2.4, 0.97], [-1.8, 0.9]]));
    expect(r.defocus_um).toBeCloseTo(-2.0, 6);
    expect(r.sign_confidence).toBeCloseTo((0.95 + 0.9 + 0.99 + 0.97 + 0.9) / 5, 3);
    expect(r.uncertainty_um!).toBeGreaterThan(0);
    expect(r.focus_map!.defocus_um.filter((v) => v !== null)).toHaveLength(5);
  });

  it('patches that split on the sign keep the magnitude: a tile 2 µm out is not read in focus, and the split shows in the confidence', () => {
    // the signed median of these is ~0 ("in focus"): the blind zone measured on optics the model was not trained for
    const r = aggregate(model, 0.8, plan, est([[2.0, 0.99], [-2.1, 0.97], [1.9, 0.98], [-2.2, 0.99], [2.05, 0.6], [-1.95, 0.95]]));
    expect(Math.abs(r.defocus_um!)).toBeGreaterThan(1.9);
    expect(Math.abs(r.defocus_um!)).toBeLessThan(2.15);
    // the sure patches outvote: 3 negatives at 0.97-0.99 against 2 sure positives and one at 0.6
    expect(r.defocus_um!).toBeLessThan(0);
    expect(r.sign_confidence!).toBeLessThan(0.6);
    // the spread of the magnitudes is small: the disagreement is about the sign, not about how far
    expect(r.uncertainty_um!).toBeLessThan(0.2);
  });

  it('no sign information (confidence 0.5 everywhere, the classical scorer) falls back to the signed median', () => {
    const pos = aggregate(model, 0.8, plan, est([[1.2, 0.5], [1.4, 0.5], [1.0, 0.5]]));
    expect(pos.defocus_um).toBeCloseTo(1.2, 6);
    expect(pos.sign_confidence).toBe(0.5);
    const neg = aggregate(model, 0.8, plan, est([[-1.2, 0.5], [-1.4, 0.5], [1.0, 0.5]]));
    expect(neg.defocus_um).toBeCloseTo(-1.2, 6);
  });

  it('one wild patch (a fold) moves neither the magnitude nor the sign', () => {
    const r = aggregate(model, 0.8, plan, est([[0.3, 0.7], [0.2, 0.6], [-0.25, 0.6], [7.5, 0.99], [0.35, 0.7]]));
    expect(Math.abs(r.defocus_um!)).toBeLessThan(0.4);
  });

  it('no patches: no_tissue shape', () => {
    expect(aggregate(model, 0.01, plan, []).defocus_um).toBeNull();
  });
});
