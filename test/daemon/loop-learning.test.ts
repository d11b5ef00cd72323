// Outcome learning and stop-loss of the controller (FocusController + SignLearner) on scripted scanners that obey
// every action: the model's reported sign is a function of the true defocus (matching, mirrored, random), the truth
// decides whether a move helped. Plus the evidence's persistence in a real SQLite store across a restart.
import { describe, expect, it } from 'vitest';
import { Store } from '../../adapters/store.js';
import { Controller, FocusController, nearer, SHARPNESS_RATIO, type RuntimeView } from '../../daemon/controller.js';
import { binOf, SignLearner } from '../../daemon/sign-learner.js';
import type { Action, LoopAlert } from '../../core/types.js';
import { makeCtx, outcome, tempDir } from '../helpers/mqtt-side.js';
import { rng32 } from '../../sim/procedural.js';

const base = makeCtx().config.controller;
type Settings = typeof base;
const settings = (learning: Partial<Settings['learning']> = {}): Settings => ({ ...structuredClone(base), learning: { ...base.learning, ...learning } });
const live: RuntimeView = { toleranceUm: 1, dryRun: false };
const UNCALIBRATED = { sign: 'model' as const, fitted: false };

/** mulberry32, seeded (the procedural generator's). */
const rng = rng32;

interface SlideRun {
  actions: Action[];
  alerts: LoopAlert[];
  /** truth: |defocus| of each tile's first and final acquisition. */
  first: number[];
  final: number[];
  /** commanded (non-probe) re-acquisitions whose tile ended further from focus than before the move. */
  wrongWay: number;
  /** commanded (non-probe) re-acquisitions that crossed focus and landed out of focus on the other side. */
  overshoots: number;
  acquisitions: number;
}

/**
 * One slide of `n` tiles: true defocus focal(i) + the z_offsets the scanner applied (from the next tile on);
 * every reacquire is executed at once at its target z. The model reports `gain` × |d| (exactly |d| by default),
 * its sign through `sign`.
 */
function scanSlide(ctl: FocusController, slide: string, n: number, focal: (i: number) => number, sign: (trueD: number, i: number, attempt: number) => 1 | -1, calibration = UNCALIBRATED, conf = 0.99, obeyReacquire = true, gain = 1, opts: ScanOpts = {}): SlideRun {
  const run: SlideRun = { actions: [], alerts: [], first: [], final: [], wrongWay: 0, overshoots: 0, acquisitions: 0 };
  let offset = 0;
  let seq = 0;
  const feed = (i: number, attempt: number, z: number, trueD: number): void => {
    run.acquisitions++;
    if (attempt === 0) run.first[i] = Math.abs(trueD);
    run.final[i] = Math.abs(trueD);
    const reported = opts.reads ? opts.reads(trueD) : sign(trueD, i, attempt) * Math.abs(trueD) * gain;
    const sd = Math.min(Math.abs(trueD), opts.sharpnessFlatBeyondUm ?? Infinity);
    const sharp = opts.sharpness ? { sharp: 1 / (1 + sd * sd) } : {};
    const d = ctl.onTile(outcome({ slide, seq: seq++, index: i, attempt, z, d: reported, conf: opts.confOf ? opts.confOf(trueD) : conf, calibration, ...sharp }), 1_000_000 + seq * 1000, live);
    run.alerts.push(...d.alerts);
    for (const a of d.actions) {
      run.actions.push(a);
      if (a.type === 'z_offset') offset += a.z_offset_um;
      else if (obeyReacquire) {
        const target = a.target_z_um as number;
        const nextD = trueD + (target - z);
        if (!a.probe && Math.abs(nextD) > Math.abs(trueD) + 0.05) run.wrongWay++;
        if (!a.probe && Math.sign(nextD) === -Math.sign(trueD) && Math.abs(nextD) > 1) run.overshoots++;
        feed(i, attempt + 1, target, nextD);
      }
    }
  };
  for (let i = 0; i < n; i++) feed(i, 0, 100 + offset, focal(i) + offset + (opts.driftPerAcquisition ?? 0) * run.acquisitions);
  return run;
}

interface ScanOpts {
  /** the tile's sharpness is reported (a falling function of the true |defocus|, like a focus measure). */
  sharpness?: boolean;
  /** the focus measure no longer changes beyond this |defocus| (µm): far from focus every image is as blurry. */
  sharpnessFlatBeyondUm?: number;
  /** the model's sign confidence at a true defocus (replaces the slide's single `conf`). */
  confOf?: (trueD: number) => number;
  /** what the model reads at a true defocus (replaces sign × |d| × gain). */
  reads?: (trueD: number) => number;
  /** the focus drifts with every acquisition (retakes take time), µm. */
  driftPerAcquisition?: number;
}

/** A model whose sign is noise: drawn per tile and acquisition (the same draw when asked again), seeded. */
function randomSigns(seed: number): (trueD: number, i: number, attempt: number) => 1 | -1 {
  const coin = rng(seed);
  const signs = new Map<string, 1 | -1>();
  return (_t, i, attempt) => {
    const k = `${i}/${attempt}`;
    if (!signs.has(k)) signs.set(k, coin() < 0.5 ? 1 : -1);
    return signs.get(k)!;
  };
}

const yieldOf = (r: SlideRun) => r.final.filter((v) => v <= 1).length / r.final.length;
const noFeedbackYield = (r: SlideRun) => r.first.filter((v) => v <= 1).length / r.first.length;

// isolated blurs of ±2.5 µm and a drift of +2.5 µm from tile 30 on
const focal = (i: number) => (i % 9 === 4 ? (i % 2 ? 2.5 : -2.5) : 0) + (i >= 30 ? 2.5 : 0) + 0.2 * Math.sin(i);

describe('outcome learning on scripted instruments', () => {
  it('mirrored instrument, uncalibrated bundle: probes until the outcomes say the sign is reversed, then trusts it reversed; next slide 0 wrong-way moves', () => {
    const ctl = new FocusController(settings());
    const mirrored = (t: number) => (t >= 0 ? -1 : 1) as 1 | -1;
    const s1 = scanSlide(ctl, 'S-1', 60, focal, mirrored);
    expect(s1.wrongWay).toBeLessThanOrEqual(3);
    expect(yieldOf(s1)).toBeGreaterThanOrEqual(noFeedbackYield(s1));
    const inv = s1.alerts.filter((a) => a.reason === 'sign_inverted_detected');
    expect(inv).toHaveLength(1);
    expect(inv[0]!.learning!.direction).toBe(-1);
    expect(inv[0]!.detail).toMatch(/wrong in 3 of 3 experiments/);
    // after learning, the reversed sign is used: the drift gets its z_offset in the right direction
    const z1 = s1.actions.filter((a) => a.type === 'z_offset');
    expect(z1.length).toBeGreaterThan(0);
    expect(z1.every((a) => a.z_offset_um < 0)).toBe(true);
    const s2 = scanSlide(ctl, 'S-2', 60, focal, mirrored);
    expect(s2.wrongWay).toBe(0);
    expect(s2.actions.filter((a) => a.probe)).toHaveLength(0);
    expect(yieldOf(s2)).toBe(1);
    expect(s2.acquisitions / 60).toBeLessThanOrEqual(1.25);
    expect(s2.alerts).toHaveLength(0);
    expect(ctl.learner.snapshot()[0]).toMatchObject({ direction: -1, calibration_sign: 'model', calibrated: false, inverted_detected: true });
  });

  it('matching instrument, uncalibrated bundle: a few probes confirm the sign, then it is trusted', () => {
    const ctl = new FocusController(settings());
    const s1 = scanSlide(ctl, 'S-1', 60, focal, (t) => (t >= 0 ? 1 : -1));
    expect(s1.wrongWay).toBe(0);
    // sign probes (an audit of an in-focus verdict is a probe too, of another kind)
    expect(s1.actions.filter((a) => a.probe && (a.why as { rule: string }).rule === 'probe').length).toBeLessThanOrEqual(3);
    expect(yieldOf(s1)).toBe(1);
    expect(s1.alerts).toHaveLength(0);
    expect(ctl.learner.snapshot()[0]!.direction).toBe(1);
  });

  it('a calibrated bundle is trusted at once; evidence against it raises sign_inverted_detected', () => {
    const ctl = new FocusController(settings({ priorCalibrated: 4 }));
    const cal = { sign: 'model' as const, fitted: true };
    const s1 = scanSlide(ctl, 'S-1', 12, focal, (t) => (t >= 0 ? 1 : -1), cal);
    expect(s1.actions.filter((a) => a.probe)).toHaveLength(0);
    const l = new SignLearner({ trust: 0.8, priorCalibrated: 4, signConfidence: 0.8 });
    const key = { scanner: 's', objective: '20x', model_sha256: 'abc', calibration_sign: 'model' as const, calibrated: true };
    expect(l.judge(key, 0.99).direction).toBe(1);
    // one wrong outcome: no longer trusted (probe), enough of them: reversed, and the contradiction is reported once
    expect(l.record(key, 0.99, false, 1).invertedDetected).toBe(false);
    expect(l.judge(key, 0.99).direction).toBe(0);
    const flips = Array.from({ length: 30 }, (_, k) => l.record(key, 0.99, false, 2 + k).invertedDetected).filter(Boolean);
    expect(flips).toHaveLength(1);
    expect(l.judge(key, 0.99).direction).toBe(-1);
    // a low-confidence sign is never trusted, whatever the evidence; an unrecoverable bundle never either
    expect(l.judge(key, 0.6).direction).toBe(0);
    expect(l.judge({ ...key, calibration_sign: 'unrecoverable' }, 0.99).direction).toBe(0);
    expect([binOf(0.5), binOf(0.85), binOf(0.97), binOf(1)]).toEqual([0, 1, 2, 2]);
  });
});

describe('magnitude learning', () => {
  // a model whose sign is right (calibrated on this instrument) but that reads twice the true |defocus|
  const cal = { sign: 'model' as const, fitted: true };
  const right = (t: number) => (t >= 0 ? 1 : -1) as 1 | -1;

  it('a model that reads 2× the truth: the loop learns a gain of 2 from its own moves and stops overshooting', () => {
    const ctl = new FocusController(settings());
    const s1 = scanSlide(ctl, 'S-1', 60, focal, right, cal, 0.99, true, 2);
    const m = ctl.learner.snapshot()[0]!.magnitude;
    expect(m.experiments).toBeGreaterThanOrEqual(3);
    expect(m.learned).toBeCloseTo(2, 1);
    expect(m.gain).toBeCloseTo(2, 1);
    // the first sized moves overshot (that is how the gain is measured): the retake and the retry of the first
    // two blurred tiles, until learning.gainMinExperiments (3) observations; none after
    expect(s1.overshoots).toBeGreaterThan(0);
    expect(s1.overshoots).toBeLessThanOrEqual(4);
    expect(yieldOf(s1)).toBeGreaterThanOrEqual(noFeedbackYield(s1));
    const s2 = scanSlide(ctl, 'S-2', 60, focal, right, cal, 0.99, true, 2);
    expect(s2.overshoots).toBe(0);
    expect(s2.wrongWay).toBe(0);
    expect(yieldOf(s2)).toBe(1);
    // the drift of +2.5 µm (± the 0.2 µm ripple) read as +5 µm: one z_offset of about −2.5 µm, not −5
    const z2 = s2.actions.filter((a) => a.type === 'z_offset');
    expect(z2).toHaveLength(1);
    expect(Math.abs(z2[0]!.z_offset_um + 2.5)).toBeLessThan(0.25);
    expect(s2.acquisitions / 60).toBeLessThanOrEqual(1.25);
  });

  it('before there is evidence a z_offset is damped: the over-read drift cannot overshoot the tiles to come', () => {
    const ctl = new FocusController(settings());
    // no re-acquisitions obeyed: no move measures the gain, only the drift's z_offset is applied
    const s = scanSlide(ctl, 'S-1', 40, (i) => (i >= 5 ? 1.5 : 0), right, cal, 0.99, false, 2);
    const z = s.actions.filter((a) => a.type === 'z_offset');
    expect(z[0]!.z_offset_um).toBeCloseTo(-1.5, 6); // read as 3 µm, damped by learning.zOffsetPriorDamping (0.5)
    expect((z[0]!.why as { detail: string }).detail).toMatch(/damped/);
    expect(ctl.learner.snapshot()[0]!.magnitude).toMatchObject({ learned: null, experiments: 0, gain: 1, z_offset_gain: 2 });
    for (let i = 5; i < s.final.length; i++) expect(s.final[i]!, `tile ${i}`).toBeLessThanOrEqual(s.first[i]! + 1e-9);
  });

  it('the learned gain survives a restart (SQLite store) and a gain estimate is clamped', async () => {
    const overrides = { 'store.dir': tempDir() };
    const store = new Store(makeCtx(overrides));
    await store.start(new AbortController().signal);
    const ctl = new FocusController(settings(), undefined, store);
    scanSlide(ctl, 'S-1', 40, focal, right, cal, 0.99, true, 2);
    const learned = ctl.learner.snapshot()[0]!.magnitude;
    expect(learned.learned).toBeCloseTo(2, 1);
    const store2 = new Store(makeCtx(overrides));
    await store2.start(new AbortController().signal);
    const ctl2 = new FocusController(settings(), undefined, store2);
    const key = { scanner: 'scanner-a', objective: '20x', model_sha256: 'abc', calibration_sign: 'model' as const, calibrated: true };
    expect(ctl2.learner.state(key).magnitude).toEqual(learned);
    // a model that reads 10× the truth still moves at least a third of its reading: clamped to GAIN_MAX
    const l = new SignLearner({ trust: 0.8, priorCalibrated: 4, signConfidence: 0.8 });
    for (let k = 0; k < 3; k++) l.recordGain(key, 9, -0.9, -1.8, k);
    expect(l.gain(key)).toMatchObject({ reacquire: 3, zOffset: 3, learned: 5.5 });
    await store2.stop();
    await store.stop();
  });
});

describe('stop-loss', () => {
  it('a confidently calibrated model whose sign is noise: two wrong-way moves freeze the slide, then it probes and never ends worse than no feedback', () => {
    // the bundle claims a calibration strong enough to be trusted through the first wrong outcomes
    const ctl = new FocusController(settings({ priorCalibrated: 20 }));
    // the sign is noise: random per tile and acquisition, independent of the true defocus
    const random = randomSigns(7);
    const s1 = scanSlide(ctl, 'S-1', 80, focal, random, { sign: 'model', fitted: true });
    const div = s1.alerts.filter((a) => a.reason === 'loop_diverging');
    expect(div).toHaveLength(1);
    expect(div[0]!.detail).toMatch(/every sign is probed, z_offsets only from probe-settled signs/);
    expect(ctl.diverging()).toEqual([expect.objectContaining({ slide: 'S-1' })]);
    // after the stop-loss, no z_offset rests on the model's sign: only the taking back of a bad one, or one whose
    // signs probes settled; every re-acquisition starts with a probe
    const at = s1.actions.findIndex((a) => a.reason.includes('wrong') && a.why && (a.why as { rule: string }).rule === 'wrong_way');
    expect(at).toBeGreaterThanOrEqual(0);
    const after = s1.actions.slice(s1.actions.findIndex((a) => a.created_at >= div[0]!.diverging!.since));
    const zAfter = after.filter((a) => a.type === 'z_offset' && (a.why as { rule: string }).rule !== 'revert');
    for (const a of zAfter) expect((a.why as { sign_from: string }).sign_from, a.reason).toBe('probes');
    // no tile ends further from focus than its first acquisition, and the slide is no worse than without feedback
    for (let i = 0; i < s1.final.length; i++) expect(s1.final[i]!, `tile ${i}`).toBeLessThanOrEqual(s1.first[i]! + 1e-9);
    expect(yieldOf(s1)).toBeGreaterThanOrEqual(noFeedbackYield(s1));
  });

  it('a sign learned far from focus that is wrong near it: a near-focus move whose landing proves it wrong counts, and the loop stops repeating it', () => {
    // like the virtual scanner's `none` optics: the model reads 2.2 µm backwards but 1.2 µm right. The first
    // experiments (2.2 µm tiles) teach "reversed"; then tiles 1.2 µm out are moved the wrong way and land 2.4 µm
    // out. From a tile read within twice the tolerance a worse landing alone proves nothing (an over-read
    // overshoots too), but a landing read twice as far out does: counted, learned from, stop-loss
    const ctl = new FocusController(settings());
    const focalMixed = (i: number) => (i < 15 ? (i % 3 === 0 ? -2.2 : 0) : i % 2 === 0 ? 1.2 : 0);
    const reads = (t: number) => (Math.abs(t) >= 2 ? -t : t);
    const s = scanSlide(ctl, 'S-near', 50, focalMixed, () => 1, UNCALIBRATED, 0.99, true, 1, { reads, sharpness: true });
    const worse = s.actions.filter((a) => a.type === 'reacquire' && !a.probe && (a.why as { rule: string }).rule === 'isolated');
    expect(worse.length).toBeGreaterThan(0);
    // it does not go on moving 1.2 µm tiles the wrong way and putting them back: the first wrong-way landing is
    // evidence against "reversed", the sign is no longer trusted, later tiles are probed and end in focus
    expect(s.wrongWay).toBeLessThanOrEqual(2);
    expect(s.actions.filter((a) => (a.why as { rule: string }).rule === 'wrong_way').length).toBeGreaterThanOrEqual(1);
    expect(s.actions.filter((a) => (a.why as { rule: string }).rule === 'restore').length).toBeLessThanOrEqual(2);
    const nearTiles = [...Array(50).keys()].filter((i) => i >= 15 && i % 2 === 0);
    const endedIn = nearTiles.filter((i) => s.final[i]! <= 1).length;
    expect(endedIn).toBeGreaterThanOrEqual(nearTiles.length - 2);
    expect(yieldOf(s)).toBeGreaterThanOrEqual(noFeedbackYield(s));
  });

  it('a z_offset after which the next tiles got worse is taken back and the slide freezes', () => {
    // a calibrated model that reads a drift backwards, on a scanner that applies z_offsets but does not retake
    // tiles (so no per-tile move catches the wrong sign first)
    const ctl = new FocusController(settings({ priorCalibrated: 20 }));
    const backwards = (t: number) => (t >= 0 ? -1 : 1) as 1 | -1;
    const s = scanSlide(ctl, 'S-9', 40, (i) => (i >= 5 ? 2 : 0), backwards, { sign: 'model', fitted: true }, 0.99, false);
    const z = s.actions.filter((a) => a.type === 'z_offset');
    expect(z[0]!.z_offset_um).toBeGreaterThan(0); // the wrong way
    const revert = z.find((a) => (a.why as { rule: string }).rule === 'revert');
    expect(revert).toBeDefined();
    expect(revert!.z_offset_um).toBeCloseTo(-z[0]!.z_offset_um, 6);
    expect(s.alerts.some((a) => a.reason === 'loop_diverging' && /made the next tiles worse/.test(a.detail))).toBe(true);
    expect(ctl.cumulative('scanner-a', 'S-9')).toBeCloseTo(0, 6);
    expect(z.filter((a) => (a.why as { rule: string }).rule !== 'revert')).toHaveLength(1);
  });

  it('isolated blurs among the tiles that judge a right z_offset do not take it back: when they disagree, two more tiles decide', () => {
    // the focus steps 2 µm at tile 5; the z_offset after tiles 5-7 is right, and two of the three tiles that judge it
    // (10 and 12; 8 and 9 are in flight) are bumps of the section, 3.5 µm out: worse than the 2 µm the
    // step would have left without the z_offset (seen on a perfect scorer: it reverted
    // a right z_offset and put the slide under the stop-loss)
    const ctl = new FocusController(settings({ priorCalibrated: 20, zOffsetPriorDamping: 1 }));
    const focal = (i: number) => (i < 5 ? 0 : 2) + (i === 10 || i === 12 ? 3.5 : 0);
    const s = scanSlide(ctl, 'S-bumps', 30, focal, (t) => (t >= 0 ? 1 : -1), { sign: 'model', fitted: true }, 0.99, true);
    const z = s.actions.filter((a) => a.type === 'z_offset');
    expect(z[0]!.z_offset_um).toBeCloseTo(-2, 1);
    expect(z.filter((a) => (a.why as { rule: string }).rule === 'revert')).toEqual([]);
    expect(s.alerts.filter((a) => a.reason === 'loop_diverging')).toEqual([]);

    // the same z_offset the wrong way (a model that reads the step backwards; the scanner applies z_offsets only,
    // so that no retake catches the wrong sign first) is still taken back, bumps or not
    const wrong = new FocusController(settings({ priorCalibrated: 20, zOffsetPriorDamping: 1 }));
    const w = scanSlide(wrong, 'S-bumps-w', 30, focal, (t) => (t >= 0 ? -1 : 1), { sign: 'model', fitted: true }, 0.99, false);
    expect(w.actions.some((a) => a.type === 'z_offset' && (a.why as { rule: string }).rule === 'revert')).toBe(true);
    expect(w.alerts.some((a) => a.reason === 'loop_diverging' && /made the next tiles worse/.test(a.detail))).toBe(true);
  });
});

describe('judging moves by the tile\'s own sharpness', () => {
  it('nearer(): sharpness of the same tile decides over the scores; without it the scores beyond the margin', () => {
    // the score says the second image is in focus, its sharpness says it is far blurrier: it is further
    expect(nearer({ abs: 4.8, sharp: 0.1 }, { abs: 0.1, sharp: 0.02 }, 0.25)).toBe(1);
    expect(nearer({ abs: 0.1, sharp: 0.02 }, { abs: 4.8, sharp: 0.1 }, 0.25)).toBe(-1);
    // within the sharpness ratio the scores cannot make it nearer (a fooled model reads 9 µm out as in focus) ...
    expect(nearer({ abs: 3, sharp: 0.1 }, { abs: 0.2, sharp: 0.105 }, 0.25)).toBe(0);
    // ... but can make it further: far from focus the focus measure flattens (4.4 -> 9.2 µm out, ratio ~1)
    expect(nearer({ abs: 4.65, sharp: 0.1 }, { abs: 7.6, sharp: 0.095 }, 0.25)).toBe(1);
    expect(nearer({ abs: 4.65, sharp: 0.1 }, { abs: 4.8, sharp: 0.095 }, 0.25)).toBe(0);
    expect(SHARPNESS_RATIO).toBeGreaterThan(1);
    // no sharpness: the scores
    expect(nearer({ abs: 3, sharp: null }, { abs: 0.2, sharp: null }, 0.25)).toBe(-1);
    expect(nearer({ abs: 0.2, sharp: null }, { abs: 0.3, sharp: null }, 0.25)).toBe(0);
    expect(nearer({ abs: 0.2, sharp: 0.1 }, { abs: 0.9, sharp: null }, 0.25)).toBe(1);
  });

  // A model fooled by the instrument: it reads the sign backwards beyond 2 µm and reads anything beyond 6 µm as in
  // focus (seen on the sa-reversed instrument: 9.7 µm out read as 0.08 µm). Its own score then calls a wrong-way
  // move a success; the tile's sharpness does not.
  const fooled = (t: number) => (Math.abs(t) > 6 ? 0.1 : Math.abs(t) > 2 ? -t : t);
  const bumps = (i: number) => (i % 7 === 3 ? -4.5 : 0.2 * Math.sin(i));

  it('without sharpness the fooled score hides wrong-way moves; with it every one is caught and undone', () => {
    const blind = scanSlide(new FocusController(settings({ priorCalibrated: 20 })), 'S-b', 40, bumps, () => 1, { sign: 'model', fitted: true }, 0.99, true, 1, { reads: fooled });
    const seeing = scanSlide(new FocusController(settings({ priorCalibrated: 20 })), 'S-s', 40, bumps, () => 1, { sign: 'model', fitted: true }, 0.99, true, 1, { reads: fooled, sharpness: true });
    const far = (r: SlideRun) => r.final.filter((v) => v > 4.5 + 1e-9).length;
    // the fooled score leaves bump tiles 9 µm out, "in focus"
    expect(far(blind)).toBeGreaterThan(0);
    expect(far(seeing)).toBe(0);
    // with sharpness no tile ends further from focus than its first acquisition, and the slide is not worse
    for (let i = 0; i < seeing.final.length; i++) expect(seeing.final[i]!, `tile ${i}`).toBeLessThanOrEqual(seeing.first[i]! + 1e-9);
    expect(yieldOf(seeing)).toBeGreaterThanOrEqual(noFeedbackYield(seeing));
  });

  it('a move between two images too blurry for the focus measure to tell apart is judged by the scores when they say it got worse', () => {
    // the sign is right near focus and backwards beyond 3 µm (the shipped model on the matching optics beyond
    // −3.5 µm); the focus measure is flat beyond 3 µm. A bump tile 4.4 µm out is moved the wrong way to 8.8 µm:
    // the sharpness cannot tell, the score (8.8 vs 4.4) can. Before, the retry went on the same way (to 17 µm)
    const backwardsFar = (t: number) => (Math.abs(t) > 3 ? -t : t);
    const bumps44 = (i: number) => (i % 7 === 3 ? 4.4 : 0.2 * Math.sin(i));
    const s = scanSlide(new FocusController(settings({ priorCalibrated: 20 })), 'S-flat', 40, bumps44, () => 1, { sign: 'model', fitted: true }, 0.99, true, 1, { reads: backwardsFar, sharpness: true, sharpnessFlatBeyondUm: 3 });
    expect(s.wrongWay).toBeGreaterThan(0);
    for (let i = 0; i < s.final.length; i++) expect(s.final[i]!, `tile ${i}: ${s.actions.filter((a) => a.tile.index === i).map((a) => a.reason).join(' | ')}`).toBeLessThanOrEqual(s.first[i]! + 1e-9);
    // each wrong-way move was caught at once: no tile was moved the wrong way twice in a row
    expect(s.wrongWay).toBeLessThanOrEqual(s.first.filter((v) => v > 4).length);
  });

  it('a probe that comes back sharper but still out of focus is followed by a retry when the landing\'s sign is trusted', () => {
    // the model is sure of its sign near focus (learned from the first tiles) and unsure beyond 2.5 µm, where it also
    // over-reads (2.8 µm reads 4.2): the bumps are probed, the probe overshoots to +1.4 µm, sharper than before but
    // out of focus, and there the sign is trusted. Before, the tile ended there
    const overReadFar = (t: number) => (Math.abs(t) > 2.5 ? 1.5 * t : t);
    const f = (i: number) => (i % 8 === 5 ? -2.8 : i % 4 === 2 ? (i % 8 === 2 ? 1.5 : -1.5) : 0.2 * Math.sin(i));
    const ctl = new FocusController(settings());
    const s = scanSlide(ctl, 'S-over', 48, f, () => 1, UNCALIBRATED, 0.99, true, 1, { reads: overReadFar, sharpness: true, confOf: (t) => (Math.abs(t) > 2.5 ? 0.6 : 0.99) });
    // (tile 5 comes before the near-focus sign is learned: its landing's sign is not trusted, and it stays where
    // the probe left it)
    const bumps = [13, 21, 29, 37, 45];
    for (const i of bumps) {
      const rules = s.actions.filter((a) => a.tile.index === i).map((a) => (a.why as { rule: string }).rule);
      expect(rules, `tile ${i}`).toEqual(['probe', 'retry']);
      expect(s.final[i]!, `tile ${i}`).toBeLessThanOrEqual(1);
    }
    expect(s.wrongWay).toBe(0);
  });

  it('a probe that spends the last re-acquisition and comes back blurrier is followed by a restore to the best z', () => {
    // virtual scanner, colour-reversed: a bump moved from 2.9 to 1.6 µm, the landing's sign unsure, probed to 4.7 µm,
    // and the probe_result refused by the per-tile limit left the tile there: worse than without feedback
    const run = (probeLost: boolean) => {
      const ctl = new FocusController(settings({ priorCalibrated: 20 }));
      const first = ctl.onTile(outcome({ slide: 'S-p', seq: 0, index: 7, z: 100, d: 2, conf: 0.99, sharp: 0.1 }), 1_000_000, live);
      expect(first.actions.map((a) => [(a.why as { rule: string }).rule, a.target_z_um])).toEqual([['isolated', 98]]);
      const landed = ctl.onTile(outcome({ slide: 'S-p', seq: 1, index: 7, attempt: 1, z: 98, d: -1.5, conf: 0.6, sharp: 0.3 }), 1_001_000, live);
      expect(landed.actions.map((a) => [(a.why as { rule: string }).rule, a.probe, a.target_z_um])).toEqual([['probe', true, 99.5]]);
      const probed = ctl.onTile(outcome({ slide: 'S-p', seq: 2, index: 7, attempt: 2, z: 99.5, ...(probeLost ? { d: null } : { d: 2.5, conf: 0.7, sharp: 0.05 }) }), 1_002_000, live);
      return probed;
    };
    for (const lost of [false, true]) {
      const probed = run(lost);
      expect(probed.refused.map((r) => r.limit), `tissue lost: ${lost}`).toEqual(['max_reacquire_per_tile']);
      expect(probed.actions.map((a) => [(a.why as { rule: string }).rule, a.target_z_um]), `tissue lost: ${lost}`).toEqual([['restore', 98]]);
    }
  });

  it('a move that finds no tissue on a tile that barely had any is not a wrong-way move; on a tile full of tissue, or read far out, it is', () => {
    // edge tiles of bare glass read 6-7 % tissue out of focus (the threshold is 5 %) and none nearer focus
    const run = (tissue: number, d = 1.9) => {
      const ctl = new FocusController(settings({ priorCalibrated: 20 }), undefined, undefined, 0.05);
      const first = ctl.onTile(outcome({ slide: 'S-t', seq: 0, index: 7, z: 100, d, conf: 0.99, tissue, sharp: 0.1 }), 1_000_000, live);
      expect(first.actions.map((a) => a.target_z_um)).toEqual([100 - d]);
      const landed = ctl.onTile(outcome({ slide: 'S-t', seq: 1, index: 7, attempt: 1, z: 100 - d, d: null }), 1_001_000, live);
      const cell = ctl.learner.snapshot()[0]!.bins[binOf(0.99, d)]!;
      return { landed, wrong: cell.wrong };
    };
    const marginal = run(0.07);
    expect(marginal.landed.wrongWay).toBe(0);
    expect(marginal.landed.actions).toHaveLength(0);
    expect(marginal.wrong).toBe(0);
    for (const [what, r] of [['full', run(0.6)], ['read far out', run(0.07, 3.6)]] as const) {
      // a tile full of tissue 3.6 µm out of focus reads little of it too (virtual scanner, colour-reversed: 84 %)
      expect(r.landed.wrongWay, what).toBe(1);
      expect(r.landed.actions.map((a) => (a.why as { rule: string }).rule), what).toEqual(['wrong_way']);
      expect(r.wrong, what).toBe(1);
    }
  });

  it('under the stop-loss the focus is still followed from probe-settled signs: a drift that grows with every acquisition does not run away', () => {
    const random = randomSigns(11);
    const drift = 0.06;
    // isolated blurs of 3 µm: moves from there that go the wrong way are proof of a wrong sign (from a tile read
    // within twice the tolerance they are not: an over-read |d| overshoots as well)
    const flat = (i: number) => (i % 6 === 2 ? 3 : 0.2 * Math.sin(i));
    const ctl = new FocusController(settings({ priorCalibrated: 20 }));
    const s = scanSlide(ctl, 'S-d', 80, flat, random, { sign: 'model', fitted: true }, 0.99, true, 1, { sharpness: true, driftPerAcquisition: drift });
    expect(s.alerts.some((a) => a.reason === 'loop_diverging')).toBe(true);
    const zs = s.actions.filter((a) => a.type === 'z_offset' && (a.why as { sign_from?: string }).sign_from === 'probes');
    expect(zs.length).toBeGreaterThan(0);
    // every probe-settled correction followed the drift (true defocus grows positive: the stage has to come down)
    for (const a of zs) expect(a.z_offset_um, a.reason).toBeLessThan(0);
    // the same scan without feedback, at its own (smaller) number of acquisitions
    const without = Array.from({ length: 80 }, (_, i) => Math.abs(flat(i) + drift * i));
    const share = (xs: number[]) => xs.filter((v) => v <= 1).length / xs.length;
    expect(share(s.final)).toBeGreaterThanOrEqual(share(without));
    for (let i = 0; i < s.final.length; i++) expect(s.final[i]!, `tile ${i}: ${s.actions.filter((a) => a.tile.index === i).map((a) => a.reason).join(' | ')}`).toBeLessThanOrEqual(s.first[i]! + 1e-9);
  });
});

describe('tilted z_offsets', () => {
  /** A raster slide (10 columns, 500 µm apart in x) whose best focus rises along x; the scanner plans flat. */
  function rasterTilt(ctl: FocusController, slide: string, applyPlane: boolean, tiltUmPerMm: number, rt: RuntimeView = live) {
    const shifts: Array<{ c0: number; plane?: { origin_um: { x: number; y: number }; dz_dx_um_per_mm: number; dz_dy_um_per_mm: number } }> = [];
    const actions: Action[] = [];
    const first: number[] = [];
    let seq = 0;
    for (let i = 0; i < 80; i++) {
      const x = (i % 10) * 500;
      const y = Math.floor(i / 10) * 500;
      const shift = shifts.reduce((a, k) => a + k.c0 + (applyPlane && k.plane ? (k.plane.dz_dx_um_per_mm * (x - k.plane.origin_um.x) + k.plane.dz_dy_um_per_mm * (y - k.plane.origin_um.y)) / 1000 : 0), 0);
      const z = 100 + shift;
      const d = z - (100 + (tiltUmPerMm * (x - 2250)) / 1000);
      first.push(Math.abs(d));
      const out = ctl.onTile(outcome({ slide, seq: seq++, index: i, x, y, z, d, conf: 0.99, sharp: 1 / (1 + d * d) }), 1_000_000 + seq * 1000, rt);
      for (const a of out.actions) {
        actions.push(a);
        if (a.type === 'z_offset' && !a.dry_run) shifts.push({ c0: a.z_offset_um, plane: a.plane as never });
      }
    }
    return { actions, first };
  }

  it('a tilt z_offset carries the slide\'s tilt along the rows; a scanner that applies it takes sharper first acquisitions than one that applies the flat offset', () => {
    const tilt = 0.8; // µm per mm: 3.6 µm from one end of a row to the other
    const flat = rasterTilt(new FocusController(settings({ priorCalibrated: 20 })), 'T-flat', false, tilt);
    const tilted = rasterTilt(new FocusController(settings({ priorCalibrated: 20 })), 'T-plane', true, tilt);
    const planes = tilted.actions.filter((a) => a.type === 'z_offset' && a.plane).map((a) => a.plane as { dz_dx_um_per_mm: number; dz_dy_um_per_mm: number });
    expect(planes.length).toBeGreaterThan(0);
    // the first one carries the tilt along x (within 30 %), nothing across the rows
    expect(planes[0]!.dz_dx_um_per_mm).toBeGreaterThan(tilt * 0.7);
    expect(planes[0]!.dz_dx_um_per_mm).toBeLessThan(tilt * 1.3);
    expect(planes[0]!.dz_dy_um_per_mm).toBe(0);
    const inTol = (xs: number[]) => xs.slice(20).filter((v) => v <= 1).length;
    expect(inTol(tilted.first)).toBeGreaterThan(inTol(flat.first));
  });

  it('limits.maxTiltUmPerMm clamps the tilt, 0 sends flat offsets', () => {
    const clamped = new FocusController({ ...settings({ priorCalibrated: 20 }), limits: { ...base.limits, maxTiltUmPerMm: 0.3 } });
    const p = rasterTilt(clamped, 'T-c', true, 0.8).actions.filter((a) => a.plane).map((a) => (a.plane as { dz_dx_um_per_mm: number }).dz_dx_um_per_mm);
    expect(p.length).toBeGreaterThan(0);
    for (const g of p) expect(Math.abs(g)).toBeLessThanOrEqual(0.3 + 1e-9);
    const off = new FocusController({ ...settings({ priorCalibrated: 20 }), limits: { ...base.limits, maxTiltUmPerMm: 0 } });
    const r = rasterTilt(off, 'T-0', true, 0.8);
    // the tiles still get re-acquired, but no z_offset carries a plane
    expect(r.actions.some((a) => a.type === 'reacquire')).toBe(true);
    expect(r.actions.some((a) => a.plane)).toBe(false);
  });
  it('in dry-run mode the tilt rule is shadow-published too (marked dry_run, nothing spent)', () => {
    const ctl = new FocusController(settings({ priorCalibrated: 20 }));
    const r = rasterTilt(ctl, 'T-dry', true, 0.8, { toleranceUm: 1, dryRun: true });
    const z = r.actions.filter((a) => a.type === 'z_offset');
    expect(z.some((a) => (a.why as { rule: string }).rule === 'tilt' && a.plane)).toBe(true);
    for (const a of r.actions) expect(a.dry_run).toBe(true);
    expect(ctl.cumulative('scanner-a', 'T-dry')).toBe(0);
  });
});

describe('learned direction across a restart (SQLite store)', () => {
  it('the evidence is written per experiment and a new controller on the same file starts with it', async () => {
    const overrides = { 'store.dir': tempDir() };
    const mirrored = (t: number) => (t >= 0 ? -1 : 1) as 1 | -1;
    const ctx = makeCtx(overrides);
    const store = new Store(ctx);
    await store.start(new AbortController().signal);
    const ctl = new FocusController(settings(), undefined, store);
    scanSlide(ctl, 'S-1', 40, focal, mirrored);
    expect(ctl.learner.snapshot()[0]!.direction).toBe(-1);
    // no stop(): the process "dies" here; the evidence is already committed
    const ctx2 = makeCtx(overrides);
    const store2 = new Store(ctx2);
    await store2.start(new AbortController().signal);
    const c = new Controller(ctx2, { store: store2 });
    await c.start(new AbortController().signal);
    expect(ctx2.metrics.loop.sign_learning).toEqual([expect.objectContaining({ scanner: 'scanner-a', objective: '20x', model_sha256: 'abc', direction: -1 })]);
    const got: Action[] = [];
    ctx2.events.on('action', (a) => got.push(a));
    // a confident +3 µm reading on the mirrored instrument: re-acquired straight at +3 (reversed), no probe
    ctx2.events.emit('tile:scored', outcome({ slide: 'S-2', seq: 0, index: 0, d: 3, conf: 0.99, calibration: UNCALIBRATED }));
    expect(got).toEqual([expect.objectContaining({ type: 'reacquire', probe: false, z_offset_um: 3 })]);
    await c.stop();
    await store2.stop();
    await store.stop();
  });
});

describe('auditing in-focus verdicts (blind zones)', () => {
  const auditOff = (): Settings => ({ ...settings({ priorCalibrated: 20 }), audit: { ...base.audit, enabled: false } });
  // the focus drifts away from the scanner's plan from tile 20 on, 0.2 µm per tile
  const ramp = (i: number) => (i < 20 ? 0.2 * Math.sin(i) : 0.2 * (i - 20));
  // a model blind between 1.2 and 3.6 µm on this instrument's optics: reads them as a quarter of the truth (in focus)
  const blindReads = (t: number) => (Math.abs(t) > 1.2 && Math.abs(t) < 3.6 ? 0.25 * t : t);
  const audits = (r: SlideRun) => r.actions.filter((a) => (a.why as { rule: string }).rule === 'audit');

  it('a model blind to 1.2-3.6 µm: neighbours settled out of focus get its in-focus verdicts audited, and the slide ends better than without audits', () => {
    const on = scanSlide(new FocusController(settings({ priorCalibrated: 20 })), 'S-a1', 60, ramp, () => 1, { sign: 'model', fitted: true }, 0.99, true, 1, { reads: blindReads, sharpness: true });
    const off = scanSlide(new FocusController(auditOff()), 'S-a0', 60, ramp, () => 1, { sign: 'model', fitted: true }, 0.99, true, 1, { reads: blindReads, sharpness: true });
    expect(audits(on).length).toBeGreaterThan(0);
    expect(audits(off)).toHaveLength(0);
    // an audit is an experiment (a probe): it carries the neighbours' evidence, and no model sign
    for (const a of audits(on)) {
      expect(a.probe).toBe(true);
      expect(a.reason).toMatch(/settled tiles/);
    }
    expect(yieldOf(on)).toBeGreaterThan(yieldOf(off));
    // audits that came back no sharper were taken back: no tile ends further from focus than its first acquisition
    for (let i = 0; i < on.final.length; i++) expect(on.final[i]!, `tile ${i}`).toBeLessThanOrEqual(on.first[i]! + 1e-9);
  });

  it('a model that reads true: audits stay rare (they only follow settled tiles) and never leave a tile worse', () => {
    const on = scanSlide(new FocusController(settings({ priorCalibrated: 20 })), 'S-t1', 60, ramp, () => 1, { sign: 'model', fitted: true }, 0.99, true, 1, { sharpness: true });
    const off = scanSlide(new FocusController(auditOff()), 'S-t0', 60, ramp, () => 1, { sign: 'model', fitted: true }, 0.99, true, 1, { sharpness: true });
    expect(audits(on).length).toBeLessThanOrEqual(3);
    expect(yieldOf(on)).toBeGreaterThanOrEqual(yieldOf(off));
    for (let i = 0; i < on.final.length; i++) expect(on.final[i]!, `tile ${i}`).toBeLessThanOrEqual(on.first[i]! + 1e-9);
  });

  it('audits stop on an instrument where they keep coming back no sharper', () => {
    // every tile is in focus but the settled neighbours say otherwise (bumps in pairs): audits fail, then stop
    const pairs = (i: number) => (i % 8 === 1 || i % 8 === 2 ? 2.5 : 0.1);
    const s = scanSlide(new FocusController(settings({ priorCalibrated: 20 })), 'S-p', 80, pairs, () => 1, { sign: 'model', fitted: true }, 0.99, true, 1, { sharpness: true });
    const a = audits(s).length;
    expect(a).toBeGreaterThan(0);
    expect(a).toBeLessThanOrEqual(4);
    for (let i = 0; i < s.final.length; i++) expect(s.final[i]!, `tile ${i}`).toBeLessThanOrEqual(s.first[i]! + 1e-9);
  });
});

describe('a re-acquisition that loses the tissue', () => {
  const ctlOf = () => new FocusController(settings({ priorCalibrated: 20 }));
  it('a move that blurred the tile beyond tissue detection is a wrong-way move: retaken on the other side, not taken as "nothing to do"', () => {
    const ctl = ctlOf();
    const first = ctl.onTile(outcome({ slide: 'S-l', seq: 0, index: 3, z: 100, d: 3, conf: 0.99, sharp: 0.1 }), 1_000_000, live);
    const move = first.actions.find((a) => a.type === 'reacquire')!;
    expect(move.target_z_um).toBeCloseTo(97, 3);
    const lost = ctl.onTile(outcome({ slide: 'S-l', seq: 1, index: 3, attempt: 1, z: 97, d: null }), 1_001_000, live);
    expect(lost.wrongWay).toBe(1);
    const retake = lost.actions.find((a) => a.type === 'reacquire');
    expect(retake, 'a retake on the other side').toBeDefined();
    expect((retake!.why as { rule: string }).rule).toBe('wrong_way');
    expect(retake!.target_z_um).toBeCloseTo(103, 3);
  });

  it('a probe that comes back blurrier is followed up even where the model reads it in focus', () => {
    const ctl = ctlOf();
    const first = ctl.onTile(outcome({ slide: 'S-q', seq: 0, index: 5, z: 100, d: -2.5, conf: 0.3, sharp: 0.1 }), 1_000_000, live);
    const probe = first.actions.find((a) => a.type === 'reacquire')!;
    expect(probe.probe).toBe(true);
    expect(probe.target_z_um).toBeCloseTo(102.5, 3);
    // 5 µm out, read as 0.1 µm (a blind zone); its sharpness says it is far blurrier than the first image
    const back = ctl.onTile(outcome({ slide: 'S-q', seq: 1, index: 5, attempt: 1, z: 102.5, d: 0.1, conf: 0.3, sharp: 0.01 }), 1_001_000, live);
    const re = back.actions.find((a) => a.type === 'reacquire');
    expect(re, 'probe_result re-acquisition').toBeDefined();
    expect((re!.why as { rule: string }).rule).toBe('probe_result');
    expect(re!.target_z_um).toBeCloseTo(97.5, 3);
  });
});
