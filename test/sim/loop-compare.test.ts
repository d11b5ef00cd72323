// Comparing two closed-loop runs (bench/loop-compare.ts): the slides of the same instrument and seed paired, the
// mean difference judged against its standard error; result files on disk as the bench and `focusd simulate --json`
// write them, and the bench command's usage errors.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { compareLoopResults, compareLoopRuns, loadLoopRuns, pairedDiff, verdictOf } from '../../bench/loop-compare.js';
import type { SimulationReport } from '../../sim/run.js';

const slide = (inTol: number, acq: number, ww = 0, tissue = 44) => ({ tiles: 48, tissue_tiles: tissue, in_tolerance: inTol, acquisitions: acq, wrong_way_moves: ww });
const run = (instrument: string, seed: number, slides: ReturnType<typeof slide>[], calibrated = false) =>
  ({ instrument, seed, ...(calibrated ? { calibration: { sign: { decision: 'model' } } } : {}), with_feedback: { slides }, without_feedback: null }) as unknown as SimulationReport;
const seeds = [1, 2, 3, 4, 5, 6, 7, 8];

describe('paired comparison of loop runs', () => {
  it('pairedDiff: mean, standard error and total of after − before', () => {
    const p = pairedDiff([10, 10, 10, 10], [11, 12, 11, 12]);
    expect(p).toMatchObject({ n: 4, mean: 1.5, total: 6 });
    expect(p.se).toBeCloseTo(Math.sqrt(1 / 3 / 4), 9);
    expect(pairedDiff([1], [2]).se).toBeNull();
    expect(() => pairedDiff([1, 2], [1])).toThrow(/2 values before, 1 after/);
  });

  it('a consistent gain is better, a consistent loss worse, scatter around zero within noise; fewer than 5 pairs too few', () => {
    expect(verdictOf(pairedDiff([0, 0, 0, 0, 0, 0], [1, 1, 2, 1, 1, 2]), true)).toBe('better');
    expect(verdictOf(pairedDiff([0, 0, 0, 0, 0, 0], [1, 1, 2, 1, 1, 2]), false)).toBe('worse');
    expect(verdictOf(pairedDiff([0, 0, 0, 0, 0, 0], [2, -2, 1, -1, 3, -2]), true)).toBe('within noise');
    expect(verdictOf(pairedDiff([0, 0, 0], [5, 5, 5]), true)).toBe('too few pairs');
  });

  it('pairs by instrument, seed, calibration and slide: a change that gains a tile on every later slide is better there, the first slides unchanged within noise', () => {
    const before = seeds.map((s) => run('mirrored', s, [slide(42, 70), slide(42, 60)]));
    // after: one more tile in tolerance on every second slide, the first slides scattered ±1 around the same
    const after = seeds.map((s) => run('mirrored', s, [slide(42 + (s % 2 ? 1 : -1), 70 + (s % 3) - 1), slide(43, 60)]));
    const c = compareLoopRuns(before, after);
    expect(c.pairs).toBe(16);
    const row = (instrument: string, part: string) => c.rows.find((r) => r.instrument === instrument && r.part === part)!;
    expect(row('mirrored', 'slides 2+').in_tolerance).toMatchObject({ n: 8, mean: 1, total: 8, se: 0 });
    expect(row('mirrored', 'slides 2+').verdict.in_tolerance).toBe('better');
    expect(row('mirrored', 'slide 1').verdict.in_tolerance).toBe('within noise');
    expect(row('mirrored', 'slides 2+').verdict.acquisitions).toBe('within noise');
    expect(row('all', 'slides 2+').pairs).toBe(8);
    // a calibrated run is not paired with an uncalibrated one; runs on one side only are listed, not compared
    const c2 = compareLoopRuns([...before, run('matching', 1, [slide(44, 50)], true)], [...after, run('matching', 1, [slide(44, 50)]), run('none', 3, [slide(40, 80)])]);
    expect(c2.pairs).toBe(16);
    expect(c2.unmatched).toEqual({ before: ['matching, seed 1, calibrated'], after: ['matching, seed 1', 'none, seed 3'] });
  });

  it('refuses to pair other slides (another grid or tissue), a run given twice, and two sides with nothing in common', () => {
    expect(() => compareLoopRuns([run('none', 1, [slide(40, 60, 0, 44)])], [run('none', 1, [slide(40, 60, 0, 30)])])).toThrow(/none, seed 1, slide 1 is not the same slide before and after/);
    expect(() => compareLoopRuns([run('none', 1, [slide(40, 60)]), run('none', 1, [slide(41, 60)])], [run('none', 1, [slide(40, 60)])])).toThrow(/none, seed 1 appears twice among the before results/);
    expect(() => compareLoopRuns([run('none', 1, [slide(40, 60)])], [run('none', 2, [slide(40, 60)])])).toThrow(/no instrument and seed was run on both sides/);
  });

  it('reads bench results and focusd simulate --json files, or folders of them, writes the table; bad files are named', () => {
    const dir = mkdtempSync(join(tmpdir(), 'focusd-loop-compare-'));
    const a = join(dir, 'before');
    mkdirSync(a);
    // focusd simulate --json: one file per run
    for (const s of seeds) writeFileSync(join(a, `mirrored-${s}.json`), JSON.stringify({ runs: [run('mirrored', s, [slide(40, 70), slide(41, 64)])] }));
    writeFileSync(join(a, 'notes.txt'), 'not a result');
    // a loop benchmark result: all runs in one file
    const b = join(dir, 'loop-after.json');
    writeFileSync(b, JSON.stringify({ schema: 'focusd/bench-loop/1', runs: seeds.map((s) => run('mirrored', s, [slide(40, 66 + (s % 2)), slide(41, 60 + (s % 2))])) }));
    expect(loadLoopRuns([a])).toHaveLength(8);
    const out = join(dir, 'results');
    const c = compareLoopResults([a], [b], out);
    expect(c.rows.find((r) => r.instrument === 'all' && r.part === 'slide 1')!.verdict.acquisitions).toBe('better');
    const md = readFileSync(join(out, 'loop-compare-latest.md'), 'utf8');
    expect(md).toMatch(/\| all \| slide 1 \| 8 \| \+0\.00 \(SE 0\.00, total \+0\): within noise \| −3\.50 \(SE 0\.19, total −28\): better \|/);
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, '{"runs": [{"instrument": "mirrored"}]}');
    expect(() => loadLoopRuns([bad])).toThrow(/bad\.json: not a loop benchmark result or focusd simulate --json report/);
    writeFileSync(bad, JSON.stringify({ runs: [run('mirrored', 1, [{ ...slide(40, 60), in_tolerance: 'forty' as unknown as number }])] }));
    expect(() => loadLoopRuns([bad])).toThrow(/bad\.json: mirrored, seed 1, slide 1: in_tolerance not a count/);
    writeFileSync(bad, '{"runs": [');
    expect(() => loadLoopRuns([bad])).toThrow(/bad\.json: not JSON/);
    expect(() => loadLoopRuns([join(dir, 'missing.json')])).toThrow(/missing\.json: no such file or folder/);
    // a folder without results (the comparison's own output folder holds only .md)
    expect(() => loadLoopRuns([out])).toThrow(/no \.json results in .*results/);
  });

  it('npm run bench -- --loop-compare without --loop-compare-to, or with a missing file: the message and the usage, exit 64', async () => {
    const bench = resolve(import.meta.dirname, '../../dist/bench/run.js');
    type Exit = { code?: number; stderr: string };
    const run1 = (await promisify(execFile)(process.execPath, [bench, '--loop-compare', '/nonexistent/a.json']).catch((e: Exit) => e)) as Exit;
    expect(run1.code).toBe(64);
    expect(run1.stderr).toMatch(/^bench: --loop-compare BEFORE needs --loop-compare-to AFTER/);
    expect(run1.stderr).toMatch(/usage: npm run bench/);
    const run2 = (await promisify(execFile)(process.execPath, [bench, '--loop-compare', '/nonexistent/a.json', '--loop-compare-to', '/nonexistent/b.json']).catch((e: Exit) => e)) as Exit;
    expect(run2.code).toBe(64);
    expect(run2.stderr).toMatch(/^bench: --loop-compare: \/nonexistent\/a\.json: no such file or folder/);
  });
});
