/**
 * `npm run bench -- --loop-compare BEFORE --loop-compare-to AFTER`: is a change to the loop better, worse, or
 * within the noise? One closed-loop run moves by ±1–3 tiles with MQTT timing (the same code on the same slides
 * does), so pooled yields of two benchmark runs differ by a point per instrument for nothing. Pairing removes most
 * of that: the same instrument, seed and slide scanned before and after share their slides, so the difference of
 * each pair (tiles in tolerance, acquisitions, wrong-way moves) is the change plus timing noise, and the mean of
 * the differences over many pairs has a standard error to judge it by.
 *
 * BEFORE and AFTER are comma-separated lists of loop benchmark results (bench/results/loop-*.json) or
 * `focusd simulate --json` files, or folders of them. Writes bench/results/loop-compare-<time>.md and
 * loop-compare-latest.md.
 */
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SimulationReport } from '../sim/run.js';
import type { ScanCounts } from '../sim/scanner.js';

/** Mean of paired differences (after − before) and its standard error (null below two pairs). */
export interface PairedDiff {
  n: number;
  mean: number;
  se: number | null;
  total: number;
}

export function pairedDiff(before: number[], after: number[]): PairedDiff {
  if (before.length !== after.length) throw new Error(`pairedDiff: ${before.length} values before, ${after.length} after`);
  const d = after.map((v, i) => v - before[i]!);
  const n = d.length;
  const total = d.reduce((a, v) => a + v, 0);
  const mean = n ? total / n : 0;
  const se = n >= 2 ? Math.sqrt(d.reduce((a, v) => a + (v - mean) ** 2, 0) / (n - 1) / n) : null;
  return { n, mean, se, total };
}

/** better / worse when the mean difference is at least twice its standard error (about 95 %), else noise. */
export function verdictOf(p: PairedDiff, higherIsBetter: boolean): 'better' | 'worse' | 'within noise' | 'too few pairs' {
  if (p.se === null || p.n < 5) return 'too few pairs';
  if (p.mean === 0 || Math.abs(p.mean) < 2 * p.se) return 'within noise';
  return p.mean > 0 === higherIsBetter ? 'better' : 'worse';
}

const COUNTS = ['tiles', 'tissue_tiles', 'in_tolerance', 'acquisitions', 'wrong_way_moves'] as const;
type SlideCounts = Pick<ScanCounts, (typeof COUNTS)[number]>;

interface Pair {
  instrument: string;
  seed: number;
  slide: number;
  before: SlideCounts;
  after: SlideCounts;
}

export interface ComparisonRow {
  instrument: string;
  part: 'slide 1' | 'slides 2+';
  pairs: number;
  in_tolerance: PairedDiff;
  acquisitions: PairedDiff;
  wrong_way_moves: PairedDiff;
  verdict: { in_tolerance: string; acquisitions: string; wrong_way_moves: string };
}

export interface LoopComparison {
  pairs: number;
  /** runs (instrument, seed, calibrated) found on one side only: not compared. */
  unmatched: { before: string[]; after: string[] };
  rows: ComparisonRow[];
}

const runKey = (r: SimulationReport) => `${r.instrument}, seed ${r.seed}${r.calibration ? ', calibrated' : ''}`;

/** Pairs the feedback runs' slides by instrument, seed, calibration and slide position; refuses pairs of other slides. */
export function compareLoopRuns(before: SimulationReport[], after: SimulationReport[]): LoopComparison {
  const index = (runs: SimulationReport[], side: string) => {
    const m = new Map<string, SimulationReport>();
    for (const r of runs) {
      if (!r.with_feedback) continue;
      const k = runKey(r);
      // a run given twice on one side would count twice: name it rather than guess which one is meant
      if (m.has(k)) throw new Error(`--loop-compare: ${k} appears twice among the ${side} results`);
      m.set(k, r);
    }
    return m;
  };
  const a = index(before, 'before');
  const b = index(after, 'after');
  const pairs: Pair[] = [];
  for (const [k, ra] of a) {
    const rb = b.get(k);
    if (!rb) continue;
    const n = Math.min(ra.with_feedback!.slides.length, rb.with_feedback!.slides.length);
    for (let i = 0; i < n; i++) {
      const sa = ra.with_feedback!.slides[i]!;
      const sb = rb.with_feedback!.slides[i]!;
      // the same seed must have drawn the same slide; another grid or tissue makes the difference meaningless
      if (sa.tiles !== sb.tiles || sa.tissue_tiles !== sb.tissue_tiles) {
        throw new Error(`--loop-compare: ${k}, slide ${i + 1} is not the same slide before and after (${sa.tiles} tiles, ${sa.tissue_tiles} with tissue vs ${sb.tiles}, ${sb.tissue_tiles}): compare runs of the same grid, tissue and seeds`);
      }
      pairs.push({ instrument: ra.instrument, seed: ra.seed, slide: i, before: sa, after: sb });
    }
  }
  if (pairs.length === 0) throw new Error(`--loop-compare: no instrument and seed was run on both sides (before: ${[...a.keys()].join('; ') || 'none'}; after: ${[...b.keys()].join('; ') || 'none'})`);
  const rows: ComparisonRow[] = [];
  const instruments = [...new Set(pairs.map((p) => p.instrument))];
  for (const instrument of [...instruments, 'all']) {
    for (const part of ['slide 1', 'slides 2+'] as const) {
      const ps = pairs.filter((p) => (instrument === 'all' || p.instrument === instrument) && (part === 'slide 1' ? p.slide === 0 : p.slide > 0));
      if (ps.length === 0) continue;
      const of = (f: (c: SlideCounts) => number) => pairedDiff(ps.map((p) => f(p.before)), ps.map((p) => f(p.after)));
      const in_tolerance = of((c) => c.in_tolerance);
      const acquisitions = of((c) => c.acquisitions);
      const wrong_way_moves = of((c) => c.wrong_way_moves);
      rows.push({
        instrument,
        part,
        pairs: ps.length,
        in_tolerance,
        acquisitions,
        wrong_way_moves,
        verdict: { in_tolerance: verdictOf(in_tolerance, true), acquisitions: verdictOf(acquisitions, false), wrong_way_moves: verdictOf(wrong_way_moves, false) },
      });
    }
  }
  return {
    pairs: pairs.length,
    unmatched: { before: [...a.keys()].filter((k) => !b.has(k)), after: [...b.keys()].filter((k) => !a.has(k)) },
    rows,
  };
}

/** Loop benchmark results or `focusd simulate --json` files (both hold `runs`), or folders of them. */
export function loadLoopRuns(paths: string[]): SimulationReport[] {
  const files = paths.flatMap((p) => {
    if (!statSync(p, { throwIfNoEntry: false })) throw new Error(`--loop-compare: ${p}: no such file or folder`);
    return statSync(p).isDirectory()
      ? readdirSync(p)
          .filter((f) => f.endsWith('.json'))
          .sort()
          .map((f) => join(p, f))
      : [p];
  });
  if (files.length === 0) throw new Error(`--loop-compare: no .json results in ${paths.join(', ')}`);
  return files.flatMap((f) => {
    let doc: unknown;
    try {
      doc = JSON.parse(readFileSync(f, 'utf8'));
    } catch (err) {
      throw new Error(`--loop-compare: ${f}: not JSON (${(err as Error).message})`);
    }
    const runs = (doc as { runs?: unknown }).runs;
    const ok = (r: unknown): r is SimulationReport => {
      const x = r as Partial<SimulationReport> | null;
      return !!x && typeof x.instrument === 'string' && Number.isFinite(x.seed) && (x.with_feedback === null || Array.isArray(x.with_feedback?.slides));
    };
    if (!Array.isArray(runs) || !runs.every(ok)) throw new Error(`--loop-compare: ${f}: not a loop benchmark result or focusd simulate --json report (no runs with instrument, seed and slides)`);
    // a count that is not a number would come out of the table as NaN, looking like a result
    for (const r of runs) {
      (r.with_feedback?.slides ?? []).forEach((sl, i) => {
        const bad = COUNTS.filter((k) => !(typeof sl[k] === 'number' && Number.isFinite(sl[k]) && sl[k] >= 0));
        if (bad.length) throw new Error(`--loop-compare: ${f}: ${runKey(r)}, slide ${i + 1}: ${bad.join(', ')} not a count`);
      });
    }
    return runs;
  });
}

const sgn = (v: number, digits = 2) => `${v >= 0 ? '+' : '−'}${Math.abs(v).toFixed(digits)}`;
const cell = (p: PairedDiff, v: string) => `${sgn(p.mean)} (SE ${p.se === null ? '–' : p.se.toFixed(2)}, total ${sgn(p.total, 0)}): ${v}`;

export function comparisonMarkdown(c: LoopComparison, before: string[], after: string[], stamp: string): string {
  const rows = c.rows.map((r) => `| ${r.instrument} | ${r.part} | ${r.pairs} | ${cell(r.in_tolerance, r.verdict.in_tolerance)} | ${cell(r.acquisitions, r.verdict.acquisitions)} | ${cell(r.wrong_way_moves, r.verdict.wrong_way_moves)} |`);
  const un = [...c.unmatched.before.map((k) => `before only: ${k}`), ...c.unmatched.after.map((k) => `after only: ${k}`)];
  return `# focusd closed-loop comparison (${stamp})

Before: ${before.join(', ')}
After: ${after.join(', ')}

Paired by instrument, seed and slide (the same slides scanned before and after): per slide, the mean difference
after − before, its standard error, the total; **better** / **worse** when the mean is at least twice its standard
error, else within noise (fewer than 5 pairs: too few). Each cell is its own test at about 95 %: among many rows,
about one in twenty crosses by chance; the \`all\` rows are the ones to judge a change by. ${c.pairs} pairs.

| instrument | part | pairs | tiles in tolerance per slide | acquisitions per slide | wrong-way moves per slide |
|---|---|---|---|---|---|
${rows.join('\n')}
${un.length ? `\nNot compared (run on one side only): ${un.join('; ')}.\n` : ''}`;
}

export function compareLoopResults(before: string[], after: string[], out: string): LoopComparison {
  const c = compareLoopRuns(loadLoopRuns(before), loadLoopRuns(after));
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const md = comparisonMarkdown(c, before, after, stamp);
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, `loop-compare-${stamp}.md`), md);
  writeFileSync(join(out, 'loop-compare-latest.md'), md);
  console.log(md);
  console.log(`[bench] wrote ${join(out, `loop-compare-${stamp}.md`)} and loop-compare-latest.md`);
  return c;
}
