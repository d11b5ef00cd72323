/**
 * focusd benchmark: real daemon (child process) fed over ZeroMQ (router pattern, TileSender dealer) with synthetic
 * 1600x1200 tiles, raw and PNG; plus bare decode, bare inference and the classical scorer on the same tiles.
 *
 *   npm run bench                       # build first (npm run build); or: npx tsx bench/run.ts
 *   npx tsx bench/run.ts --tiles 300 --rate 13 --fixed-seconds 20 --model models/default
 *   npx tsx bench/run.ts --soak 10      # 10 minutes at the fixed rate, RSS drift
 *
 * Writes bench/results/<timestamp>.json and bench/results/latest.md.
 *
 *   npm run bench -- --loop             # instead: the closed-loop scenario matrix of the virtual scanner (bench/loop.ts)
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadConfig, PACKAGE_ROOT } from '../config/load.js';
import { createContext, type Context } from '../core/context.js';
import { createLogger } from '../core/logger.js';
import type { DecodedTile, IncomingTile, TileHeader, TileReply } from '../core/types.js';
import { decodeTile } from '../imaging/decode.js';
import { encodePng, synthTile } from '../sim/procedural.js';
import { DefocusOptics } from '../imaging/optics.js';
import { detectTissue } from '../imaging/tissue.js';
import { ClassicalScorer } from '../models/classical.js';
import { CnnScorer } from '../models/cnn-scorer.js';
import { PatchBytes, planPatches } from '../models/patches.js';
import { freePort } from '../core/net.js';
import { TileSender } from '../sim/replay.js';

const BENCH_USAGE = `usage: npm run bench -- [options]          (results: bench/results/<timestamp>.json and latest.md)

throughput (default): the forked daemon fed over ZeroMQ, against bare decode and bare inference on the same tiles
  --tiles N (240) --distinct N (8) --rate TILES_PER_S (13) --fixed-seconds S (20) --window N (12)
  --model DIR (models/default) --threads N (0: onnxruntime's default) --soak MINUTES (0) --out DIR (bench/results)
closed loop (--loop): the virtual scanner's instrument matrix, with and without feedback (bench/loop.ts)
  --loop-instruments all|NAME,... --loop-slides N (3) --loop-seed N|N,N,... (1) --loop-grid COLSxROWS (8x6)
  --loop-tile WxH (640x320) --loop-tissue procedural|heldout|PATHS --loop-calibrate --loop-merge A.json,B.json
  --scorer cnn|classical (cnn)
comparing two loop runs (bench/loop-compare.ts): paired by instrument, seed and slide, better / worse / within noise
  --loop-compare BEFORE[,...] --loop-compare-to AFTER[,...]   (loop-*.json results, focusd simulate --json files, or folders)
`;

let parsed;
try {
  parsed = parseArgs({ options: { ...benchOptions(), help: { type: 'boolean', short: 'h' } } });
} catch (err) {
  process.stderr.write(`bench: ${(err as Error).message}\n${BENCH_USAGE}`);
  process.exit(64);
}
if (parsed.values.help) {
  process.stdout.write(BENCH_USAGE);
  process.exit(0);
}
const args = parsed.values;

function benchOptions() {
  return {
    tiles: { type: 'string', default: '240' },
    distinct: { type: 'string', default: '8' },
    rate: { type: 'string', default: '13' },
    'fixed-seconds': { type: 'string', default: '20' },
    window: { type: 'string', default: '12' },
    model: { type: 'string', default: '' },
    soak: { type: 'string', default: '0' },
    threads: { type: 'string', default: '0' },
    out: { type: 'string', default: resolve(PACKAGE_ROOT, 'bench/results') },
    loop: { type: 'boolean', default: false },
    'loop-instruments': { type: 'string', default: 'all' },
    'loop-slides': { type: 'string', default: '3' },
    'loop-seed': { type: 'string', default: '1' },
    'loop-grid': { type: 'string', default: '8x6' },
    'loop-tile': { type: 'string', default: '640x320' },
    'loop-merge': { type: 'string', default: '' },
    'loop-compare': { type: 'string', default: '' },
    'loop-compare-to': { type: 'string', default: '' },
    'loop-tissue': { type: 'string', default: 'procedural' },
    'loop-calibrate': { type: 'boolean', default: false },
    scorer: { type: 'string', default: 'cnn' },
  } as const;
}
const N = Number(args.tiles);
const DISTINCT = Number(args.distinct);
const RATE = Number(args.rate);
const FIXED_S = Number(args['fixed-seconds']);
const WINDOW = Number(args.window);
const SOAK_MIN = Number(args.soak);
const W = 1600;
const H = 1200;
const PX = 0.22;

const pct = (v: number[], p: number) => {
  if (v.length === 0) return null;
  const s = [...v].sort((a, b) => a - b);
  return +s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!.toFixed(2);
};
const r2 = (x: number) => Math.round(x * 100) / 100;
const log = (...a: unknown[]) => console.log('[bench]', ...a);

// ------------------------------------------------------------------ model

function resolveModel(tmp: string): { dir: string; note: string } {
  const want = args.model ? resolve(args.model) : resolve(PACKAGE_ROOT, 'models/default');
  if (existsSync(join(want, 'manifest.json'))) return { dir: want, note: `bundle ${want}` };
  // no trained default yet: the same architecture, untrained, costs the same to run
  const dir = join(tmp, 'standin');
  execFileSync('/usr/bin/python3', [resolve(PACKAGE_ROOT, 'models/training/export_onnx.py'), '--random-init', '--arch', 'focusnet', '--width', '16', '--seed', '0', '--out', dir], { stdio: 'pipe' });
  return { dir, note: `STAND-IN: ${want} has no manifest.json; untrained focusnet-w16 exported by models/training/export_onnx.py --random-init (same architecture and compute as the default)` };
}

// ------------------------------------------------------------------ tiles

interface BenchTile {
  z: number;
  raw: Buffer;
  png: Buffer;
}

async function makeTiles(): Promise<BenchTile[]> {
  const optics = new DefocusOptics();
  const zs = [0, 0.5, -1, 2, -3, 5, 1.5, -0.5, 8, -6, 3, 0.8];
  const out: BenchTile[] = [];
  for (let i = 0; i < DISTINCT; i++) {
    const z = zs[i % zs.length]!;
    const t = synthTile({ width: W, height: H, seed: 500 + i, kind: i % 5 === 4 ? 'pale' : 'tissue', defocusUm: z, pixelSizeUm: PX }, optics);
    out.push({ z, raw: t.rgb, png: await encodePng(t, 6) });
  }
  return out;
}

function header(seq: number, format: 'raw' | 'png', z: number): TileHeader {
  return {
    v: 1,
    scanner: 'bench',
    slide: 'bench-slide',
    scan: 'bench-scan',
    seq,
    tile: { index: seq, row: Math.floor(seq / 40), col: seq % 40 },
    stage_um: { x: (seq % 40) * 352, y: Math.floor(seq / 40) * 264, z },
    pixel_size_um: PX,
    objective: '20x/0.8',
    acquired_at: new Date().toISOString(),
    attempt: 1,
    format,
    ...(format === 'raw' ? { width: W, height: H, pixel_type: 'RGB24' as const } : {}),
  };
}

// ------------------------------------------------------------------ daemon child

class Child {
  private proc: ChildProcess | null = null;
  private waiters = new Map<number, (m: Record<string, unknown>) => void>();
  private id = 1;
  ready!: { endpoint: string; engine: string; model: unknown };

  async start(overrides: Record<string, unknown>): Promise<void> {
    const here = fileURLToPath(import.meta.url);
    const ts = here.endsWith('.ts');
    const entry = resolve(here, '..', ts ? 'daemon-child.ts' : 'daemon-child.js');
        // FOCUSD_BENCH_CHILD_ARGS: extra node flags for the daemon child, e.g. --cpu-prof
    const extra = process.env.FOCUSD_BENCH_CHILD_ARGS ? process.env.FOCUSD_BENCH_CHILD_ARGS.split(' ') : [];
    const p = fork(entry, [JSON.stringify(overrides)], { execArgv: [...(ts ? ['--import', 'tsx'] : []), ...extra], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.proc = p;
    this.ready = await new Promise((res, rej) => {
      p.on('message', (m: Record<string, unknown>) => {
        if (m.type === 'ready') res(m as never);
        else if (m.type === 'failed') rej(new Error(String(m.error)));
        else if (m.type === 'usage') this.waiters.get(m.id as number)?.(m);
      });
      p.on('exit', (code) => rej(new Error(`daemon child exited with ${code}`)));
    });
  }

  usage(): Promise<{ ru: NodeJS.ResourceUsage; rss: number; metrics: Record<string, unknown> }> {
    const id = this.id++;
    return new Promise((res) => {
      this.waiters.set(id, res as never);
      this.proc!.send({ type: 'usage', id });
    });
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (!p) return;
    await new Promise<void>((res) => {
      p.once('exit', () => res());
      p.send({ type: 'stop' });
      setTimeout(() => p.kill('SIGKILL'), 30_000).unref();
    });
  }
}

interface RunStats {
  tiles: number;
  ok: number;
  rejected: Record<string, number>;
  seconds: number;
  tiles_per_s: number;
  patches_per_s: number;
  patches_per_tile: number;
  latency_ms: { p50: number | null; p95: number | null; p99: number | null; max: number | null };
  roundtrip_ms: { p50: number | null; p99: number | null };
  daemon_cpu_cores: number;
  daemon_peak_rss_mb: number;
}

/** Sends n tiles, at most `window` in flight (rate 0) or at a fixed rate; collects the daemon's replies. */
async function drive(child: Child, tiles: BenchTile[], format: 'raw' | 'png', n: number, rate: number, seq0: number): Promise<RunStats> {
  const sender = new TileSender({ endpoint: child.ready.endpoint, pattern: 'dealer', timeoutMs: 120_000, sendHighWaterMark: 64 });
  sender.connect();
  const u0 = await child.usage();
  const lat: number[] = [];
  const rt: number[] = [];
  const rejected: Record<string, number> = {};
  let patches = 0;
  let ok = 0;
  const t0 = performance.now();
  const inflight = new Set<Promise<void>>();
  for (let i = 0; i < n; i++) {
    if (rate > 0) {
      const due = t0 + (i * 1000) / rate;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    } else {
      while (inflight.size >= WINDOW) await Promise.race(inflight);
    }
    const t = tiles[i % tiles.length]!;
    const s = performance.now();
    const p: Promise<void> = sender
      .send(header(seq0 + i, format, t.z), format === 'raw' ? t.raw : t.png)
      .then((reply: TileReply | null) => {
        rt.push(performance.now() - s);
        if (reply && reply.ok) {
          ok++;
          lat.push(reply.latency_ms);
          patches += reply.score.patches;
        } else if (reply) rejected[reply.reason] = (rejected[reply.reason] ?? 0) + 1;
      })
      .finally(() => inflight.delete(p));
    inflight.add(p);
  }
  await Promise.all(inflight);
  const seconds = (performance.now() - t0) / 1000;
  const u1 = await child.usage();
  await sender.close();
  const cpuS = (u1.ru.userCPUTime + u1.ru.systemCPUTime - u0.ru.userCPUTime - u0.ru.systemCPUTime) / 1e6;
  return {
    tiles: n,
    ok,
    rejected,
    seconds: r2(seconds),
    tiles_per_s: r2(ok / seconds),
    patches_per_s: r2(patches / seconds),
    patches_per_tile: r2(patches / Math.max(1, ok)),
    latency_ms: { p50: pct(lat, 50), p95: pct(lat, 95), p99: pct(lat, 99), max: pct(lat, 100) },
    roundtrip_ms: { p50: pct(rt, 50), p99: pct(rt, 99) },
    daemon_cpu_cores: r2(cpuS / seconds),
    daemon_peak_rss_mb: r2(u1.ru.maxRSS / 1024),
  };
}

// ------------------------------------------------------------------ bare parts

function benchContext(overrides: Record<string, unknown>): Context {
  return createContext(loadConfig({ overrides, env: {} }), createLogger({ level: 'warn', format: 'json', stream: process.stderr }));
}

async function bareDecode(tiles: BenchTile[], format: 'raw' | 'png', n: number): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const t = tiles[i % tiles.length]!;
    const inc: IncomingTile = { header: header(i, format, t.z), payload: format === 'raw' ? t.raw : t.png, receivedAt: performance.now() };
    await decodeTile(inc, { maxPixels: 40_000_000 });
  }
  return r2(n / ((performance.now() - t0) / 1000));
}

async function bareInference(ctx: Context, tiles: BenchTile[], n: number) {
  const cnn = new CnnScorer(ctx);
  await cnn.start(new AbortController().signal);
  try {
    const m = cnn.manifest;
    const bs = ctx.config.scoring.engine.batchSize;
    const b = new PatchBytes(m.input, bs);
    // the same patches the daemon scores: tissue-selected cells of the same tiles
    const batches: Uint8Array[] = [];
    const counts: number[] = [];
    let prep = 0;
    // one untimed pass warms the JIT, the timed pass is what a running daemon pays per tile
    for (const t of tiles) {
      const tis = detectTissue(t.raw, W, H, ctx.config.tissue);
      planPatches(W, H, PX, m.input, tis, ctx.config.scoring.patches).selected.slice(0, bs).forEach((c, k) => b.fill(k, t.raw, W, H, c));
    }
    for (const t of tiles) {
      const p0 = performance.now();
      const tis = detectTissue(t.raw, W, H, ctx.config.tissue);
      const plan = planPatches(W, H, PX, m.input, tis, ctx.config.scoring.patches);
      const cells = plan.selected.slice(0, bs);
      cells.forEach((c, k) => b.fill(k, t.raw, W, H, c));
      prep += performance.now() - p0;
      batches.push(b.take());
      counts.push(cells.length);
    }
    const t0 = performance.now();
    let patches = 0;
    for (let i = 0; i < n; i++) {
      const k = i % batches.length;
      const out = await cnn.inference.runBytes(batches[k]!, counts[k]!, { transfer: true });
      batches[k] = new Uint8Array(out.returned!);
      patches += counts[k]!;
    }
    const s = (performance.now() - t0) / 1000;
    return {
      engine: cnn.inference.info.engine,
      model: { ...cnn.info, architecture: m.architecture },
      patches_per_s: r2(patches / s),
      tiles_per_s: r2(n / s),
      patches_per_tile: r2(patches / n),
      preprocess_ms_per_tile: r2(prep / tiles.length),
    };
  } finally {
    await cnn.stop();
  }
}

async function bareClassical(tiles: BenchTile[], n: number) {
  const ctx = benchContext({ 'scoring.scorer': 'classical' });
  const s = new ClassicalScorer(ctx);
  await s.start();
  try {
    const t0 = performance.now();
    const res: Array<{ z: number; d: number | null }> = [];
    for (let i = 0; i < n; i++) {
      const t = tiles[i % tiles.length]!;
      const tile: DecodedTile = { header: header(i, 'raw', t.z), width: W, height: H, rgb: t.raw, receivedAt: 0 };
      const r = await s.score(tile);
      if (i < tiles.length) res.push({ z: t.z, d: r.defocus_um });
    }
    return { tiles_per_s: r2(n / ((performance.now() - t0) / 1000)), estimates: res };
  } finally {
    await s.stop();
  }
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  if (args['loop-compare'] || args['loop-compare-to']) {
    const { compareLoopResults } = await import('./loop-compare.js');
    try {
      if (!args['loop-compare'] || !args['loop-compare-to']) throw new Error('--loop-compare BEFORE needs --loop-compare-to AFTER (and the other way round)');
      compareLoopResults(args['loop-compare'].split(','), args['loop-compare-to'].split(','), args.out!);
    } catch (err) {
      // a usage error (a missing file, results of other slides): the message, not a stack; anything else is a crash
      if (!(err as Error).message.startsWith('--loop-compare')) throw err;
      process.stderr.write(`bench: ${(err as Error).message}\n${BENCH_USAGE}`);
      process.exit(64);
    }
    return;
  }
  if (args.loop) {
    const [cols, rows] = args['loop-grid']!.split('x').map(Number);
    const [width, height] = args['loop-tile']!.split('x').map(Number);
    const { loopBench, mergeLoopResults } = await import('./loop.js');
    if (args['loop-merge']) {
      mergeLoopResults(args['loop-merge'].split(','), args.out!);
      return;
    }
    await loopBench({
      instruments: args['loop-instruments']!,
      slides: Number(args['loop-slides']),
      seeds: args['loop-seed']!.split(',').map((x) => (x.trim() === '' ? Number.NaN : Number(x.trim()))),
      cols: cols!,
      rows: rows!,
      width: width!,
      height: height!,
      scorer: args.scorer!,
      tissue: args['loop-tissue']!,
      calibrate: args['loop-calibrate']!,
      out: args.out!,
    });
    return;
  }
  const tmp = mkdtempSync(join(tmpdir(), 'focusd-bench-'));
  const started = new Date();
  try {
    const model = resolveModel(tmp);
    log(model.note);
    log(`rendering ${DISTINCT} distinct ${W}x${H} tiles ...`);
    const tiles = await makeTiles();
    const port = await freePort();
    const mport = await freePort();
    const overrides = {
      'scanner.id': 'bench',
      'ingest.endpoint': `tcp://127.0.0.1:${port}`,
      'ingest.pattern': 'router',
      'mqtt.url': 'embedded',
      'mqtt.embedded.port': mport,
      'store.dir': join(tmp, 'state'),
      'scoring.scorer': 'cnn',
      'scoring.model': model.dir,
      'scoring.engine.threads': Number(args.threads),
      'log.level': 'warn',
    };
    const ctx = benchContext(overrides);

    log('bare decode ...');
    const decodeRaw = await bareDecode(tiles, 'raw', Math.min(N, 120));
    const decodePng = await bareDecode(tiles, 'png', Math.min(N, 60));
    log(`decode raw ${decodeRaw} tiles/s, png ${decodePng} tiles/s`);
    log('bare inference ...');
    const inference = await bareInference(ctx, tiles, Math.min(N, 120));
    log(`inference ${inference.patches_per_s} patches/s (${inference.tiles_per_s} tiles/s at ${inference.patches_per_tile} patches/tile) on ${inference.engine}`);

    const child = new Child();
    await child.start(overrides);
    log(`daemon ready on ${child.ready.endpoint}: ${child.ready.engine}`);
    let seq = 0;
    // warm the daemon's path (JIT, arenas) before measuring
    await drive(child, tiles, 'raw', 24, 0, seq);
    seq += 24;
    log(`max rate, raw, ${N} tiles ...`);
    const maxRaw = await drive(child, tiles, 'raw', N, 0, seq);
    seq += N;
    log(JSON.stringify(maxRaw));
    log(`max rate, png, ${Math.round(N / 2)} tiles ...`);
    const maxPng = await drive(child, tiles, 'png', Math.round(N / 2), 0, seq);
    seq += Math.round(N / 2);
    log(JSON.stringify(maxPng));
    log(`fixed rate ${RATE} tiles/s for ${FIXED_S} s, raw ...`);
    const fixed = await drive(child, tiles, 'raw', Math.round(RATE * FIXED_S), RATE, seq);
    seq += Math.round(RATE * FIXED_S);
    log(JSON.stringify(fixed));

    let soak: Record<string, unknown> | null = null;
    if (SOAK_MIN > 0) {
      log(`soak: ${SOAK_MIN} min at ${RATE} tiles/s ...`);
      const samples: Array<{ t_s: number; rss_mb: number }> = [];
      const t0 = performance.now();
      const chunk = Math.round(RATE * 10);
      while (performance.now() - t0 < SOAK_MIN * 60_000) {
        await drive(child, tiles, 'raw', chunk, RATE, seq);
        seq += chunk;
        const u = await child.usage();
        samples.push({ t_s: r2((performance.now() - t0) / 1000), rss_mb: r2(u.rss / 2 ** 20) });
      }
      const k = Math.max(1, Math.floor(samples.length / 4));
      const first = samples.slice(0, k).reduce((a, s) => a + s.rss_mb, 0) / k;
      const last = samples.slice(-k).reduce((a, s) => a + s.rss_mb, 0) / k;
      const minutes = (samples[samples.length - 1]!.t_s - samples[0]!.t_s) / 60 || 1;
      soak = { minutes: SOAK_MIN, tiles: seq, samples, rss_first_quarter_mb: r2(first), rss_last_quarter_mb: r2(last), drift_mb_per_min: r2((last - first) / minutes) };
      log(`soak RSS ${r2(first)} → ${r2(last)} MB`);
    }
    const final = await child.usage();
    await child.stop();

    log('classical scorer ...');
    const classical = await bareClassical(tiles, Math.min(N, 40));
    const decodePlusInfer = 1 / (1 / decodeRaw + 1 / inference.tiles_per_s);
    const result = {
      started_at: started.toISOString(),
      machine: { cpus: cpus().length, cpu_model: cpus()[0]?.model ?? '?', mem_gb: r2(totalmem() / 2 ** 30), node: process.version },
      model: model.note,
      engine: child.ready.engine,
      tile: { width: W, height: H, pixel_size_um: PX, distinct: DISTINCT, max_patches_per_tile: ctx.config.scoring.patches.maxPerTile, batch_size: ctx.config.scoring.engine.batchSize },
      daemon: { max_rate_raw: maxRaw, max_rate_png: maxPng, fixed_rate_raw: { rate: RATE, ...fixed }, final_metrics: final.metrics },
      bare: { decode_raw_tiles_per_s: decodeRaw, decode_png_tiles_per_s: decodePng, inference },
      ratio_daemon_vs_decode_plus_inference: r2(maxRaw.tiles_per_s / decodePlusInfer),
      classical,
      soak,
      targets: {
        'raw ≥ 30 tiles/s end-to-end': maxRaw.tiles_per_s >= 30,
        'p99 ≤ 150 ms at 13 tiles/s': (fixed.latency_ms.p99 ?? Infinity) <= 150,
        'daemon ≥ 0.8 × (decode + inference)': maxRaw.tiles_per_s / decodePlusInfer >= 0.8,
      },
    };
    mkdirSync(args.out!, { recursive: true });
    const stamp = started.toISOString().replace(/[:.]/g, '-');
    writeFileSync(join(args.out!, `${stamp}.json`), JSON.stringify(result, null, 2) + '\n');
    writeFileSync(join(args.out!, 'latest.md'), markdown(result, stamp));
    log(`wrote ${join(args.out!, `${stamp}.json`)} and latest.md`);
    console.log(readFileSync(join(args.out!, 'latest.md'), 'utf8'));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

function markdown(r: Record<string, any>, stamp: string): string {
  const d = r.daemon;
  const row = (name: string, s: RunStats) =>
    `| ${name} | ${s.ok}/${s.tiles} | ${s.tiles_per_s} | ${s.patches_per_s} | ${s.latency_ms.p50} / ${s.latency_ms.p95} / ${s.latency_ms.p99} | ${s.daemon_cpu_cores} | ${s.daemon_peak_rss_mb} |`;
  return `# focusd benchmark (${stamp})

Machine: ${r.machine.cpus} CPU (${r.machine.cpu_model}), ${r.machine.mem_gb} GB, Node ${r.machine.node}.
Model: ${r.model}. Engine: ${r.engine}. Tiles: ${r.tile.width}x${r.tile.height} synthetic (sim/procedural.ts), ≤ ${r.tile.max_patches_per_tile} patches/tile, batch ${r.tile.batch_size}.

## Daemon (child process, ZeroMQ router ← TileSender dealer)

| run | ok/sent | tiles/s | patches/s | latency p50 / p95 / p99 ms (first frame → verdict) | daemon CPU cores | peak RSS MB |
|---|---|---|---|---|---|---|
${row('max rate, raw', d.max_rate_raw)}
${row('max rate, png', d.max_rate_png)}
${row(`fixed ${d.fixed_rate_raw.rate} tiles/s, raw`, d.fixed_rate_raw)}

## Bare parts (this process, serial)

- decode: raw ${r.bare.decode_raw_tiles_per_s} tiles/s, png ${r.bare.decode_png_tiles_per_s} tiles/s
- inference: ${r.bare.inference.patches_per_s} patches/s = ${r.bare.inference.tiles_per_s} tiles/s at ${r.bare.inference.patches_per_tile} patches/tile (${r.bare.inference.engine}); tissue + patch copy ${r.bare.inference.preprocess_ms_per_tile} ms/tile on the event loop
- daemon raw / (decode + inference) = **${r.ratio_daemon_vs_decode_plus_inference}**
- classical scorer (worker thread): ${r.classical.tiles_per_s} tiles/s

## Targets

${Object.entries(r.targets).map(([k, v]) => `- ${v ? 'MET' : 'NOT MET'}: ${k}`).join('\n')}
${r.soak ? `\n## Soak\n\n${r.soak.minutes} min at ${d.fixed_rate_raw.rate} tiles/s: RSS ${r.soak.rss_first_quarter_mb} → ${r.soak.rss_last_quarter_mb} MB (${r.soak.drift_mb_per_min} MB/min)\n` : ''}`;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
