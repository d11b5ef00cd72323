// The loop benchmark's pooling over seeds (bench/loop.ts): yields and ratios from summed counts, wrong-way moves
// kept per run, the targets judged on the pool.
import { describe, expect, it } from 'vitest';
import { loopBench, pool, pooledOf, targets } from '../../bench/loop.js';
import type { SimulationReport } from '../../sim/run.js';

const counts = (tissue: number, inTol: number, tiles: number, acq: number, ww: number) => ({ tiles, tissue_tiles: tissue, in_tolerance: inTol, acquisitions: acq, wrong_way_moves: ww, yield: inTol / tissue, acquisitions_per_tile: acq / tiles });

function report(seed: number, fb: ReturnType<typeof counts>[], off: ReturnType<typeof counts>[]): SimulationReport {
  const total = (xs: ReturnType<typeof counts>[]) => ({ ...pool(xs), wrong_way_moves: xs.reduce((a, x) => a + x.wrong_way_moves, 0) });
  return {
    instrument: 'mirrored',
    seed,
    with_feedback: { slides: fb, after_first: fb.length > 1 ? total(fb.slice(1)) : null },
    without_feedback: { slides: off, after_first: null },
  } as unknown as SimulationReport;
}

describe('loop bench pooling', () => {
  it('pools counts, not percentages, and keeps wrong-way moves per run', () => {
    const p = pool([counts(40, 40, 48, 60, 0), counts(20, 18, 24, 30, 2)]);
    expect(p.yield).toBeCloseTo(58 / 60, 9); // not the mean of 100 % and 90 %
    expect(p.acquisitions_per_tile).toBeCloseTo(90 / 72, 9);
    expect(p.wrong_way).toEqual([0, 2]);
  });

  it('judges the targets on the pool: one run with a wrong-way move on slide 2 fails "0 wrong-way moves"', () => {
    const runs = [
      report(1, [counts(44, 44, 48, 60, 1), counts(44, 44, 48, 58, 0)], [counts(44, 26, 48, 48, 0), counts(44, 26, 48, 48, 0)]),
      report(2, [counts(44, 43, 48, 62, 0), counts(44, 43, 48, 59, 1)], [counts(44, 27, 48, 48, 0), counts(44, 27, 48, 48, 0)]),
    ];
    const { first, firstOff, later } = pooledOf(runs);
    expect(first.yield).toBeCloseTo(87 / 88, 9);
    expect(firstOff.yield).toBeCloseTo(53 / 88, 9);
    expect(later!.acquisitions_per_tile).toBeCloseTo(117 / 96, 9);
    const t = targets(runs);
    expect(t[0]).toMatch(/^MET: first slide yield/);
    expect(t[1]).toMatch(/^MET: first slide ≤ 3 wrong-way moves \(1 over 2 runs: 1, 0\)/);
    expect(t[2]).toMatch(/^MET: later slides yield ≥ 98 % \(98.9 %, 87\/88\)/);
    expect(t[3]).toMatch(/^MET: later slides ≤ 1.25 acquisitions per tile \(1.22\)/);
    expect(t[4]).toMatch(/^NOT MET: later slides 0 wrong-way moves \(1 over 2 runs: 0, 1\)/);
    // uncalibrated runs are not judged by the calibrated target
    expect(t.some((l) => l.includes('after calibration'))).toBe(false);
  });

  it('refuses --loop-calibrate with the classical scorer before doing anything (there is no bundle to calibrate)', async () => {
    const o = { instruments: 'matching', slides: 1, seeds: [1], cols: 2, rows: 2, width: 640, height: 320, out: '/nonexistent/focusd-bench' };
    await expect(loopBench({ ...o, scorer: 'classical', calibrate: true })).rejects.toThrow(/--loop-calibrate calibrates a model bundle; the scorer is classical/);
    await expect(loopBench({ ...o, scorer: 'cnn', instruments: 'matching,hubble' })).rejects.toThrow(/--loop-instruments: hubble not among/);
  });

  it('judges calibrated runs by "≥ 98 % from the first slide" on the first slide and on all slides pooled', () => {
    const calibrated = (r: SimulationReport) => ({ ...r, calibration: { sign: { decision: 'inverted' } } }) as SimulationReport;
    const off = [counts(44, 26, 48, 48, 0), counts(44, 26, 48, 48, 0)];
    const good = [calibrated(report(1, [counts(44, 44, 48, 55, 0), counts(44, 43, 48, 55, 0)], off)), calibrated(report(2, [counts(44, 43, 48, 55, 0), counts(44, 44, 48, 55, 0)], off))];
    expect(targets(good).at(-4)).toMatch(/^MET: after calibration yield ≥ 98 % from the first slide \(first 98.9 %, all slides 98.9 %\)/);
    // 86/88 on the first slide pooled is 97.7 %: not met, though the later slides are perfect
    const firstShort = [calibrated(report(1, [counts(44, 43, 48, 55, 0), counts(44, 44, 48, 55, 0)], off)), calibrated(report(2, [counts(44, 43, 48, 55, 0), counts(44, 44, 48, 55, 0)], off))];
    expect(targets(firstShort).find((l) => l.includes('after calibration'))).toMatch(/^NOT MET: .*\(first 97.7 %, all slides 98.9 %\)/);
  });
});
