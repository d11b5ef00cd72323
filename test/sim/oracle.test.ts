import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DecodedTile, TileHeader } from '../../core/types.js';
import { DefocusOptics } from '../../imaging/optics.js';
import { ClassicalScorer } from '../../models/classical.js';
import { ORACLE_TRUTH_FIELD, OracleScorer, oracleLabel, parseOracleSpec } from '../../sim/oracle.js';
import { synthTile, type SynthKind } from '../../sim/procedural.js';
import { scoringContext } from '../helpers/scoring-ctx.js';
import { runFocusd } from '../helpers/proc.js';

describe('oracle spec', () => {
  it('parses perfect, gain, sd and the three sign modes', () => {
    expect(parseOracleSpec('perfect')).toEqual({ gain: 1, sdUm: 0, signRight: 1 });
    expect(parseOracleSpec('')).toEqual({ gain: 1, sdUm: 0, signRight: 1 });
    expect(parseOracleSpec('gain=1.12, sd=0.2,sign=none')).toEqual({ gain: 1.12, sdUm: 0.2, signRight: null });
    expect(parseOracleSpec('sign=0.9')).toEqual({ gain: 1, sdUm: 0, signRight: 0.9 });
    expect(oracleLabel(parseOracleSpec('sd=0.3,sign=0.9'))).toBe('gain=1,sd=0.3,sign=0.9');
  });

  it('rejects hostile specs with an error naming the part', () => {
    const bad: Array<[string, RegExp]> = [
      ['sd=-1', /sd "-1" is not a number of µm/],
      ['sd=NaN', /sd "NaN"/],
      ['sd=1e999', /sd "1e999"/],
      ['gain=0', /gain "0" is not a number in \[0.2, 5\]/],
      ['gain=abc', /gain "abc"/],
      ['sign=2', /sign "2" is not true, none or a probability/],
      ['sign=0.4', /sign "0.4"/],
      ['sd=0.1,sd=0.2', /sd given twice/],
      ['noise=1', /"noise=1" is not gain=G/],
      ['sd==1', /"sd==1"/],
      ['x'.repeat(500), /longer than 200 characters/],
    ];
    for (const [spec, msg] of bad) expect(() => parseOracleSpec(spec), spec.slice(0, 20)).toThrow(msg);
  });
});

describe('oracle scorer over the classical scorer (real procedural tiles)', () => {
  const { ctx } = scoringContext({ 'scoring.patches.maxPerTile': 4 });
  const optics = new DefocusOptics();
  const inners: ClassicalScorer[] = [];
  const oracle = (spec: string) => {
    const inner = new ClassicalScorer(ctx);
    inners.push(inner);
    return new OracleScorer(inner, parseOracleSpec(spec));
  };
  const perfect = oracle('perfect');
  const noisy = oracle('sd=0.3');
  const signless = oracle('sign=none');
  const coinFlip = oracle('sign=0.5');
  const reference = new ClassicalScorer(ctx);
  beforeAll(async () => {
    const s = new AbortController().signal;
    for (const o of [perfect, noisy, signless, coinFlip]) await o.start(s);
    await reference.start();
  });
  afterAll(async () => {
    for (const o of [perfect, noisy, signless, coinFlip]) await o.stop();
    await reference.stop();
  });

  const tile = (truth: number | undefined, opts: { index?: number; attempt?: number; kind?: SynthKind } = {}): DecodedTile => {
    const t = synthTile({ width: 480, height: 360, seed: 21, defocusUm: truth ?? 0, kind: opts.kind ?? 'tissue' }, optics);
    const header = {
      v: 1, scanner: 's', slide: 'sl', scan: 'sc', seq: 0, tile: { index: opts.index ?? 0, row: 0, col: 0 },
      stage_um: { x: 0, y: 0, z: 0 }, pixel_size_um: 0.22, objective: 'o', acquired_at: '', attempt: opts.attempt ?? 0, format: 'raw',
      ...(truth === undefined ? {} : { [ORACLE_TRUTH_FIELD]: truth }),
    } as TileHeader;
    return { header, width: t.width, height: t.height, rgb: t.rgb, receivedAt: 0 };
  };

  it('reads the truth, keeps what the image says (tissue, sharpness) and has a model identity of its own', async () => {
    const t = tile(-2.5);
    const r = await perfect.score(t);
    const seen = await reference.score(t);
    expect(r.defocus_um).toBe(-2.5);
    expect(r.sign_confidence).toBe(0.99);
    expect(r.sharpness).toBe(seen.sharpness);
    expect(r.tissue_fraction).toBe(seen.tissue_fraction);
    expect(r.model.name).toBe('oracle');
    expect(r.model.sha256).not.toBe(seen.model.sha256);
    expect(r.model.calibration).toEqual({ sign: 'model', fitted: false, guard_um: 0 });
  });

  it('noise is independent per acquisition and repeatable; no sign means confidence 0.5 and both signs', async () => {
    const reads: number[] = [];
    for (let i = 0; i < 12; i++) reads.push((await noisy.score(tile(1.5, { index: i })))!.defocus_um!);
    expect(new Set(reads).size).toBeGreaterThan(8);
    const mean = reads.reduce((a, b) => a + b, 0) / reads.length;
    expect(Math.abs(mean - 1.5)).toBeLessThan(0.35);
    expect((await noisy.score(tile(1.5, { index: 3 }))).defocus_um).toBe(reads[3]);
    expect((await noisy.score(tile(1.5, { index: 3, attempt: 1 }))).defocus_um).not.toBe(reads[3]);

    const signs = new Set<number>();
    const flips = new Set<number>();
    for (let i = 0; i < 12; i++) {
      const r = await signless.score(tile(2, { index: i }));
      expect(r.sign_confidence).toBe(0.5);
      expect(Math.abs(r.defocus_um!)).toBe(2);
      signs.add(Math.sign(r.defocus_um!));
      const c = await coinFlip.score(tile(2, { index: i }));
      expect(c.sign_confidence).toBe(0.99);
      flips.add(Math.sign(c.defocus_um!));
    }
    expect(signs.size).toBe(2);
    expect(flips.size).toBe(2);
    expect(signless.info.calibration?.sign).toBe('unrecoverable');
  });

  it('no tissue stays no tissue; a tile without the truth is an error, not a reading of 0', async () => {
    const glass = await perfect.score(tile(3, { kind: 'glass' }));
    expect(glass.defocus_um).toBeNull();
    await expect(perfect.score(tile(undefined))).rejects.toThrow(/without a finite x_sim_defocus_um/);
  });
});

describe('focusd simulate --oracle', () => {
  it('rejects a bad spec and the modes it cannot run in, with exit 64', async () => {
    const bad = await runFocusd(['simulate', '--oracle', 'sign=2']);
    expect(bad.code).toBe(64);
    expect(bad.stderr).toMatch(/--oracle: sign "2"/);
    const ext = await runFocusd(['simulate', '--oracle', 'perfect', '--endpoint', 'tcp://127.0.0.1:1']);
    expect(ext.code).toBe(64);
    expect(ext.stderr).toMatch(/--oracle needs the in-process daemon/);
    expect((await runFocusd(['simulate', '--oracle', 'perfect', '--calibrate'])).stderr).toMatch(/exclude each other/);
  });

  it('scans a slide with the oracle in the daemon and names it in the JSON report', async () => {
    const { mkdtempSync, readFileSync } = await import('node:fs');
    const { join } = await import('node:path');
    const { tmpdir } = await import('node:os');
    const out = join(mkdtempSync(join(tmpdir(), 'focusd-oracle-')), 'r.json');
    const r = await runFocusd(['simulate', '--oracle', 'perfect', '--instrument', 'mirrored', '--slides', '1', '--cols', '4', '--rows', '3', '--json', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/scored by the oracle \(gain=1,sd=0,sign=true\), not by the model/);
    const rep = JSON.parse(readFileSync(out, 'utf8')).runs[0];
    expect(rep.oracle).toBe('gain=1,sd=0,sign=true');
    const acqs = rep.with_feedback.slides[0].acquisitions_detail as Array<{ defocus_um: number; scored_defocus_um: number | null }>;
    const scored = acqs.filter((a) => a.scored_defocus_um !== null);
    expect(scored.length).toBeGreaterThan(6);
    // the daemon's readings are the truth the scanner rendered
    for (const a of scored) expect(a.scored_defocus_um).toBeCloseTo(a.defocus_um, 2);
  });
});
