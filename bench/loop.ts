/**
 * `npm run bench -- --loop`: the closed-loop scenario matrix of the virtual scanner (sim/): every instrument
 * variant, several slides in a row on one daemon (in-process, embedded broker, router), with feedback and without.
 * Writes bench/results/loop-<time>.json and bench/results/loop-latest.md.
 *
 *   npm run bench -- --loop                               # 5 instruments x 3 slides of 8x6 tiles
 *   npm run bench -- --loop --loop-instruments matching,mirrored --loop-slides 2
 *   npm run bench -- --loop --loop-merge a.json,b.json      # one table from runs made one instrument at a time
 *   npm run bench -- --loop --loop-tissue heldout          # tissue from the development data's held-out images
 *                                                          # (sim/tissue-images.ts): writes loop-heldout-latest.md
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { inProcessDaemons } from '../cli/simulate.js';
import { INSTRUMENTS, isInstrument, type InstrumentName } from '../sim/instruments.js';
import { markdownTable, slideLine } from '../sim/report.js';
import { runSimulation, type SimulationReport } from '../sim/run.js';
import type { ScanCounts } from '../sim/scanner.js';
import { imageSceneSource, loadTissueImages, resolveTissueSpec } from '../sim/tissue-images.js';

export interface LoopBenchOptions {
  instruments: string;
  slides: number;
  seed: number;
  cols: number;
  rows: number;
  width: number;
  height: number;
  scorer: string;
  /** procedural (default), or a `focusd simulate --tissue` spec: real images for the tissue tiles. */
  tissue?: string;
  out: string;
}

const pct = (x: number) => `${(x * 100).toFixed(0)} %`;

/** The issue's targets (benchmark, not tests), judged per instrument. */
function targets(r: SimulationReport): string[] {
  const f = r.with_feedback!;
  const off = r.without_feedback!;
  const first = f.slides[0]!;
  const later: ScanCounts | null = f.after_first;
  const lines = [
    `${first.yield >= off.slides[0]!.yield ? 'MET' : 'NOT MET'}: first slide yield ≥ no feedback (${pct(first.yield)} vs ${pct(off.slides[0]!.yield)})`,
    `${first.wrong_way_moves <= 3 ? 'MET' : 'NOT MET'}: first slide ≤ 3 wrong-way moves (${first.wrong_way_moves})`,
  ];
  if (later) {
    lines.push(
      `${later.yield >= 0.98 ? 'MET' : 'NOT MET'}: later slides yield ≥ 98 % (${pct(later.yield)})`,
      `${later.acquisitions_per_tile <= 1.25 ? 'MET' : 'NOT MET'}: later slides ≤ 1.25 acquisitions per tile (${later.acquisitions_per_tile.toFixed(2)})`,
      `${later.wrong_way_moves === 0 ? 'MET' : 'NOT MET'}: later slides 0 wrong-way moves (${later.wrong_way_moves})`,
    );
  }
  return lines;
}

export async function loopBench(o: LoopBenchOptions): Promise<void> {
  const names = o.instruments === 'all' ? [...INSTRUMENTS] : o.instruments.split(',').map((s) => s.trim());
  const bad = names.filter((n) => !isInstrument(n));
  if (bad.length) throw new Error(`--loop-instruments: ${bad.join(', ')} not among ${INSTRUMENTS.join(', ')}`);
  for (const k of ['slides', 'cols', 'rows', 'width', 'height'] as const)
    if (!Number.isInteger(o[k]) || o[k] < 1) throw new Error(`loop bench: ${k} must be a positive integer, got ${o[k]} (--loop-slides N, --loop-grid COLSxROWS, --loop-tile WxH)`);
  const tissue = o.tissue ?? 'procedural';
  const scenes = tissue === 'procedural' ? undefined : imageSceneSource(await loadTissueImages(resolveTissueSpec(tissue)), { width: o.width, height: o.height });
  const started = new Date();
  const reports: SimulationReport[] = [];
  for (const name of names as InstrumentName[]) {
    console.log(`[bench] loop: instrument ${name}, ${o.slides} slides of ${o.cols}x${o.rows} tiles ...`);
    const r = await runSimulation({
      instrument: name,
      slides: o.slides,
      seed: o.seed,
      cols: o.cols,
      rows: o.rows,
      width: o.width,
      height: o.height,
      daemon: inProcessDaemons({
        load: { file: null, args: [], env: {}, overrides: { 'scanner.id': `bench-${name}`, 'mqtt.url': 'embedded', 'scoring.scorer': o.scorer, 'log.level': 'error' } },
        pattern: 'router',
      }),
      ...(scenes ? { scenes, tissue } : {}),
      onSlide: (run, s) => console.log(slideLine(run === 'feedback' ? 'feedback' : 'no feedback', s)),
    });
    reports.push(r);
  }
  writeLoopResults(reports, o, started, Math.round((Date.now() - started.getTime()) / 100) / 10, null);
}

interface LoopResult {
  schema: 'focusd/bench-loop/1';
  started_at: string;
  time_s: number;
  machine: Record<string, unknown>;
  settings: Record<string, unknown>;
  daemon: Record<string, unknown>;
  merged_from: string[] | null;
  runs: SimulationReport[];
}

function withoutTileDetail(r: SimulationReport): SimulationReport {
  const strip = (run: SimulationReport['with_feedback']) => (run ? { ...run, slides: run.slides.map((s) => ({ ...s, tiles_detail: [], acquisitions_detail: [] })) } : null);
  return { ...r, with_feedback: strip(r.with_feedback), without_feedback: strip(r.without_feedback) };
}

/** Re-tables runs written earlier (e.g. one instrument per invocation, to keep each run short on a shared machine). */
export function mergeLoopResults(files: string[], out: string): void {
  const parts = files.map((f) => JSON.parse(readFileSync(f, 'utf8')) as LoopResult);
  const bad = files.filter((_, i) => parts[i]!.schema !== 'focusd/bench-loop/1');
  if (bad.length) throw new Error(`--loop-merge: not a loop benchmark result: ${bad.join(', ')}`);
  const first = parts[0]!;
  const o = { ...(first.settings as unknown as LoopBenchOptions), instruments: parts.flatMap((p) => p.runs.map((r) => r.instrument)).join(','), out };
  const time = parts.reduce((a, p) => a + p.time_s, 0);
  writeLoopResults(parts.flatMap((p) => p.runs), o, new Date(first.started_at), Math.round(time * 10) / 10, files);
}

function writeLoopResults(reports: SimulationReport[], o: LoopBenchOptions, started: Date, timeS: number, mergedFrom: string[] | null): void {
  const d = reports[0]?.with_feedback?.daemon ?? {};
  const result: LoopResult = {
    schema: 'focusd/bench-loop/1',
    started_at: started.toISOString(),
    time_s: timeS,
    machine: { cpus: cpus().length, cpu_model: cpus()[0]?.model ?? '?', mem_gb: Math.round((totalmem() / 2 ** 30) * 100) / 100, node: process.version },
    settings: { ...o, out: undefined } as Record<string, unknown>,
    daemon: { scorer: d.scorer, engine: d.engine, model: d.model },
    merged_from: mergedFrom,
    // per-tile details stay out of the results folder (focusd simulate --json writes them); moves stay in
    runs: reports.map((r) => withoutTileDetail(r)),
  };
  const stamp = started.toISOString().replace(/[:.]/g, '-');
  const md = `# focusd closed-loop benchmark (${stamp})

Machine: ${result.machine.cpus} CPU (${result.machine.cpu_model}), Node ${result.machine.node}. Scorer ${String(d.scorer)} on ${String(d.engine)}, model ${JSON.stringify(d.model)}.
Virtual scanner (sim/, \`focusd simulate\`): ${o.slides} slides in a row per instrument on one daemon (in-process, embedded broker, router),
${o.cols}x${o.rows} tiles of ${o.width}x${o.height} px (0.22 µm/px), seed ${o.seed}; the same slides without feedback (commands received and ignored).
Tissue tiles: ${tissueOf(o) === 'procedural' ? 'procedural (sim/procedural.ts)' : `cropped from real in-focus images (\`--loop-tissue ${tissueOf(o)}\`${tissueOf(o) === 'heldout' ? ': the training code\'s held-out sources and stains, never seen by the model' : ''}), blurred by each instrument's optics`}.
Yield: tissue tiles whose final acquisition is within ±1 µm of the true focus. Wrong-way: a re-acquisition (not a probe) or z_offset
that left the tile further from focus than before. Total ${result.time_s} s${mergedFrom ? ` (${mergedFrom.length} invocations, merged)` : ''}.

${markdownTable(reports)}

## Targets (issue 11)

${reports.map((r) => `${r.instrument}:\n${targets(r).map((l) => `- ${l}`).join('\n')}`).join('\n\n')}
`;
  mkdirSync(o.out, { recursive: true });
  const tag = tissueOf(o) === 'procedural' ? '' : tissueOf(o) === 'heldout' ? 'heldout-' : 'images-';
  writeFileSync(join(o.out, `loop-${tag}${stamp}.json`), JSON.stringify(result, null, 2) + '\n');
  writeFileSync(join(o.out, `loop-${tag}latest.md`), md);
  console.log(`[bench] wrote ${join(o.out, `loop-${tag}${stamp}.json`)} and loop-${tag}latest.md\n`);
  console.log(md);
}

function tissueOf(o: LoopBenchOptions): string {
  return o.tissue ?? 'procedural';
}
