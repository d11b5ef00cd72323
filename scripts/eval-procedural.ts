/**
 * The default CNN (or any bundle) on procedural tiles (sim/procedural.ts): the tests/demo/benchmark domain.
 * Renders tiles at known z, scores them through the daemon's own scorer (createScorer: tissue detection,
 * patching, aggregation, calibration) and prints the metrics of the model card.
 *
 *   npx tsx scripts/eval-procedural.ts [--seeds 3] [--kinds tissue,pale] [--z -5:5:0.5] [--size 1600x1200]
 *       [--model DIR] [--synth MODULE] [--out FILE.json]
 *
 * --synth loads another copy of the synth module (e.g. an older sim/procedural.ts, to measure "before").
 * --write-sharp DIR only writes noise-free in-focus tiles as PNG (input of scripts/procedural-exact-blur.py);
 * --png DIR scores the PNGs there instead of rendering (z from the name: <kind>_<seed>_z<z>.png).
 */
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import sharp from 'sharp';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { loadConfig } from '../config/load.js';
import type { Context } from '../core/context.js';
import { TypedEmitter, type DaemonEvents } from '../core/events.js';
import { createLogger } from '../core/logger.js';
import { Metrics } from '../core/metrics.js';
import type { TileHeader } from '../core/types.js';
import { DefocusOptics } from '../imaging/optics.js';
import type * as SynthModule from '../sim/procedural.js';
import { createScorer } from '../models/index.js';

const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
};
const seeds = Number(arg('seeds', '3'));
const kinds = arg('kinds', 'tissue,pale').split(',') as SynthModule.SynthKind[];
const [z0, z1, dz] = arg('z', '-5:5:0.5').split(':').map(Number) as [number, number, number];
const [W, H] = arg('size', '1600x1200').split('x').map(Number) as [number, number];
const PX = 0.22;
const synthPath = arg('synth', '');
const synth: typeof SynthModule = synthPath ? await import(pathToFileURL(resolve(synthPath)).href) : await import('../sim/procedural.js');

const overrides: Record<string, unknown> = { 'scoring.scorer': 'cnn' };
if (arg('model', '')) overrides['scoring.model'] = resolve(arg('model', ''));
const config = loadConfig({ overrides, env: {} });
const ctx: Context = {
  config,
  logger: createLogger({ level: 'warn', format: 'pretty', stream: process.stderr }),
  metrics: new Metrics(),
  events: new TypedEmitter<DaemonEvents>(),
  runtime: { toleranceUm: config.decision.toleranceUm, dryRun: true, paused: false },
};
const scorer = createScorer(ctx);
await scorer.start(new AbortController().signal);
const header = { pixel_size_um: PX } as TileHeader;
// an alternative generator (--synth) may bring its own optics; ours otherwise
const optics = new ((synth as { DefocusOptics?: typeof DefocusOptics }).DefocusOptics ?? DefocusOptics)();

interface Row { kind: string; seed: number; z: number; d: number | null; signConf: number | null; patches: number }
const rows: Row[] = [];
const zs: number[] = [];
for (let z = z0; z <= z1 + 1e-9; z += dz) zs.push(Math.round(z * 1000) / 1000);
const t0 = Date.now();
const writeSharp = arg('write-sharp', '');
const pngDir = arg('png', '');
if (writeSharp) {
  mkdirSync(writeSharp, { recursive: true });
  for (const kind of kinds)
    for (let s = 0; s < seeds; s++) {
      const t = synth.synthTile({ width: W, height: H, seed: 501 + s, kind, defocusUm: 0, pixelSizeUm: PX, noise: false }, optics);
      await sharp(t.rgb, { raw: { width: W, height: H, channels: 3 } }).png().toFile(resolve(writeSharp, `${kind}_${501 + s}.png`));
    }
  await scorer.stop();
  process.exit(0);
}
try {
  if (pngDir) {
    for (const f of readdirSync(pngDir).filter((n) => n.endsWith('.png')).sort()) {
      const m = /^([a-z]+)_(\d+)_z([-+0-9.]+)\.png$/.exec(f);
      if (!m) throw new Error(`--png: cannot read kind/seed/z from ${f}`);
      const { data, info } = await sharp(resolve(pngDir, f)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      const r = await scorer.score({ header, width: info.width, height: info.height, rgb: data, receivedAt: 0 });
      rows.push({ kind: m[1]!, seed: Number(m[2]), z: Number(m[3]), d: r.defocus_um, signConf: r.sign_confidence, patches: r.patches });
    }
  }
  for (const kind of pngDir ? [] : kinds) {
    for (let s = 0; s < seeds; s++) {
      const seed = 501 + s; // not the classical calibration's seeds (1000..)
      for (const z of zs) {
        const t = synth.synthTile({ width: W, height: H, seed, kind, defocusUm: z, pixelSizeUm: PX }, optics);
        const r = await scorer.score({ header, width: t.width, height: t.height, rgb: t.rgb, receivedAt: 0 });
        rows.push({ kind, seed, z, d: r.defocus_um, signConf: r.sign_confidence, patches: r.patches });
      }
      process.stderr.write(`${kind} seed ${seed}: ${rows.length} tiles, ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    }
  }
} finally {
  await scorer.stop();
}

function metrics(rs: Row[]) {
  const scored = rs.filter((r) => r.d !== null) as Array<Row & { d: number }>;
  const near = scored.filter((r) => Math.abs(r.z) <= 4 + 1e-9);
  const mae = near.reduce((a, r) => a + Math.abs(r.d - r.z), 0) / near.length;
  const maeAbs = near.reduce((a, r) => a + Math.abs(Math.abs(r.d) - Math.abs(r.z)), 0) / near.length;
  const mz = near.reduce((a, r) => a + r.z, 0) / near.length;
  const md = near.reduce((a, r) => a + r.d, 0) / near.length;
  const sxx = near.reduce((a, r) => a + (r.z - mz) ** 2, 0);
  const sxy = near.reduce((a, r) => a + (r.z - mz) * (r.d - md), 0);
  const slope = sxy / sxx;
  const intercept = md - slope * mz;
  const ssRes = near.reduce((a, r) => a + (r.d - r.z) ** 2, 0);
  const ssTot = near.reduce((a, r) => a + (r.z - mz) ** 2, 0);
  const within1 = near.filter((r) => Math.abs(r.d - r.z) <= 1).length / near.length;
  const far = scored.filter((r) => Math.abs(r.z) >= 1 - 1e-9);
  const signOk = far.filter((r) => Math.sign(r.d) === Math.sign(r.z)).length / far.length;
  const wrong = far.filter((r) => Math.sign(r.d) !== Math.sign(r.z));
  const confWrong = wrong.length ? wrong.reduce((a, r) => a + (r.signConf ?? 0), 0) / wrong.length : null;
  const r3 = (v: number) => Math.round(v * 1000) / 1000;
  return {
    tiles: rs.length, no_tissue: rs.length - scored.length, n_abs_le_4: near.length,
    mae_signed_um: r3(mae), mae_abs_um: r3(maeAbs), r2_signed: r3(1 - ssRes / ssTot),
    fit_slope: r3(slope), fit_intercept_um: r3(intercept), within_1um: r3(within1),
    n_abs_ge_1: far.length, sign_accuracy: r3(signOk), mean_sign_confidence_when_wrong: confWrong === null ? null : r3(confWrong),
  };
}

const result = {
  command: `npx tsx scripts/eval-procedural.ts ${process.argv.slice(2).join(' ')}`.trim(),
  model: scorer.info,
  tiles: pngDir ? `PNG files in ${pngDir}` : `${kinds.join('+')} ${W}x${H} @${PX} µm/px, seeds 501..${500 + seeds}, z ${z0}..${z1} step ${dz} µm`,
  all: metrics(rows),
  by_kind: Object.fromEntries([...new Set(rows.map((r) => r.kind))].map((k) => [k, metrics(rows.filter((r) => r.kind === k))])),
  rows,
};
const outFile = arg('out', '');
if (outFile) writeFileSync(outFile, JSON.stringify(result, null, 1) + '\n');
const { rows: _omit, ...summary } = result;
console.log(JSON.stringify(summary, null, 1));
