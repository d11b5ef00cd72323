// The whole daemon in-process (real ZeroMQ, real Mosquitto, real SQLite, classical scorer): overflow policies.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../config/load.js';
import { Daemon } from '../../daemon/daemon.js';
import { createLogger } from '../../core/logger.js';
import type { TileHeader } from '../../core/types.js';
import { synthTile } from '../../sim/procedural.js';
import { TileSender } from '../../sim/replay.js';
import { assertSchema, Collector, until } from '../helpers/mqtt-side.js';
import { freePort, MOSQUITTO_URL, uniqueId } from '../helpers/net.js';

const W = 800;
const H = 600;
let raw: Buffer;
beforeAll(() => {
  raw = synthTile({ width: W, height: H, seed: 5, kind: 'tissue', defocusUm: 0.3 }).rgb;
});

const header = (seq: number): TileHeader => ({
  v: 1, scanner: 'pipe', slide: 's1', scan: 'c1', seq, tile: { index: seq, row: 0, col: seq },
  stage_um: { x: seq * 176, y: 0, z: 100 }, pixel_size_um: 0.22, objective: '20x', acquired_at: new Date().toISOString(),
  attempt: 0, format: 'raw', width: W, height: H, pixel_type: 'RGB24',
});

let daemon: Daemon | null = null;
afterEach(async () => {
  await daemon?.stop('test done');
  daemon = null;
});

async function start(overrides: Record<string, unknown>) {
  const id = uniqueId('pipe');
  const config = loadConfig({
    env: {},
    overrides: {
      'scanner.id': id,
      'ingest.endpoint': `tcp://127.0.0.1:${await freePort()}`,
      'mqtt.url': MOSQUITTO_URL,
      'store.dir': mkdtempSync(join(tmpdir(), 'focusd-pipe-')),
      'scoring.scorer': 'classical',
      'reports.schedule': '',
      'mqtt.statsIntervalS': 0,
      ...overrides,
    },
  });
  daemon = new Daemon(config, { logger: createLogger({ level: 'error', format: 'json' }), env: {} });
  const sub = await Collector.connect(MOSQUITTO_URL, [`focusd/${id}/tile`, `focusd/${id}/error`]);
  await daemon.start();
  return { d: daemon, sub, base: `focusd/${id}` };
}

describe('tiles the model cannot take', () => {
  // the classical scorer's patch is 192 px (CLASSICAL_PATCH), the CNN's 320 px (both at 0.22 µm/px)
  it.each([['classical', 150, 192], ['cnn', 200, 320]] as const)('%s: a tissue tile smaller than one model patch is invalid_header naming the size to send (not scoring_failed); a blank one is no_tissue; bytes are what arrived', async (scorer, px, patch) => {
    const { d, sub, base } = await start({ 'ingest.pattern': 'router', 'scoring.scorer': scorer });
    const sender = new TileSender({ endpoint: d.ingestEndpoint, pattern: 'req', timeoutMs: 30_000 });
    sender.connect();
    try {
      const small = synthTile({ width: px, height: px, seed: 6, kind: 'tissue', defocusUm: 0 }).rgb;
      const h = { ...header(1), width: px, height: px };
      const reply = (await sender.send(h, small)) as { ok: boolean; reason: string; detail: string; received: { bytes: number[] } };
      expect(reply).toMatchObject({ ok: false, reason: 'invalid_header' });
      expect(reply.detail).toMatch(new RegExp(`smaller than one model patch.*send tiles of at least ${patch}x${patch} px`));
      expect(reply.received.bytes).toEqual([Buffer.byteLength(JSON.stringify(h)), small.length]);
      const blank = (await sender.send({ ...h, seq: 2, tile: { index: 2, row: 0, col: 2 } }, Buffer.alloc(px * px * 3, 235))) as { ok: boolean; verdict?: string };
      expect(blank).toMatchObject({ ok: true, verdict: 'no_tissue' });
      expect(d.ctx.metrics.rejected.get('scoring_failed')).toBeUndefined();
      const err = await sub.wait((m) => m.topic === `${base}/error`, 10_000, 'the error message');
      assertSchema('error', err.json);
      expect(err.json).toMatchObject({ reason: 'invalid_header' });
    } finally {
      await sender.close();
      await sub.close();
    }
  }, 60_000);
});

describe('pipeline overflow policy', () => {
  it('backpressure (default): a burst larger than the queue is slowed down at the sender, nothing is lost', async () => {
    const { d, sub, base } = await start({ 'pipeline.queueSize': 1, 'ingest.highWaterMark': 1 });
    const sender = new TileSender({ endpoint: d.ingestEndpoint, pattern: 'push', timeoutMs: 30_000, sendHighWaterMark: 1 });
    sender.connect();
    const n = 12;
    for (let i = 0; i < n; i++) await sender.send(header(i), raw);
    await until(() => sub.on(`${base}/tile`).length === n, 30_000, 'every tile scored');
    expect(sub.on(`${base}/tile`).map((m) => m.json.seq)).toEqual([...Array(n).keys()]);
    expect(d.ctx.metrics.skipped).toBe(0);
    expect(sub.on(`${base}/error`)).toHaveLength(0);
    await sender.close();
    await sub.close();
  });

  it('skip: tiles beyond the queue are dropped, counted and published on the error topic, never silently', async () => {
    const { d, sub, base } = await start({ 'pipeline.queueSize': 1, 'pipeline.overflow': 'skip', 'ingest.highWaterMark': 1000 });
    const sender = new TileSender({ endpoint: d.ingestEndpoint, pattern: 'push', timeoutMs: 30_000 });
    sender.connect();
    const n = 12;
    for (let i = 0; i < n; i++) await sender.send(header(i), raw);
    await until(() => sub.on(`${base}/tile`).length + sub.on(`${base}/error`).length === n, 30_000, 'every tile accounted for');
    const skipped = sub.on(`${base}/error`);
    expect(skipped.length).toBeGreaterThan(0);
    expect(d.ctx.metrics.skipped).toBe(skipped.length);
    for (const m of skipped) {
      assertSchema('error', m.json);
      expect(m.json.reason).toBe('skipped_overload');
    }
    // which tiles were skipped is visible: every seq appears exactly once, as a verdict or as a skip
    const seqs = [...sub.on(`${base}/tile`).map((m) => m.json.seq), ...skipped.map((m) => (m.json.received as { header: { seq: number } }).header.seq)];
    expect(seqs.sort((a, b) => (a as number) - (b as number))).toEqual([...Array(n).keys()]);
    await sender.close();
    await sub.close();
  });
});

describe('pipeline ordering', () => {
  it('scores pipeline.scoreConcurrency tiles at once but emits verdicts in arrival order', async () => {
    const { Pipeline } = await import('../../daemon/pipeline.js');
    const { makeCtx } = await import('../helpers/mqtt-side.js');
    const ctx = makeCtx({ 'pipeline.scoreConcurrency': 2 });
    let inFlight = 0;
    let maxInFlight = 0;
    // a scorer whose speed depends on the tile: even tiles are slow, so odd ones overtake them
    const scorer = {
      name: 'uneven',
      info: { name: 'uneven', version: '1', sha256: 'x', engine: 'test', pixel_size_um: 0.22 },
      async start() {},
      async stop() {},
      async score(t: { header: TileHeader }) {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        await new Promise((r) => setTimeout(r, t.header.seq % 2 === 0 ? 60 : 5));
        inFlight--;
        return { defocus_um: 0.1, uncertainty_um: 0, sign_confidence: 1, tissue_fraction: 0.5, patches: 1, focus_map: null, model: this.info };
      },
    };
    const p = new Pipeline(ctx, { scorer, decode: async (t) => ({ header: t.header, width: W, height: H, rgb: raw, receivedAt: t.receivedAt }) });
    await p.start();
    const order: number[] = [];
    ctx.events.on('tile:scored', (o) => order.push(o.header.seq));
    const replies = await Promise.all([...Array(8).keys()].map((i) => p.submit({ header: header(i), payload: raw, receivedAt: performance.now() })));
    expect(replies.every((r) => r.ok)).toBe(true);
    expect(order).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(maxInFlight).toBe(2);
    await p.stop();
  });
});

describe('pixel size far from the model (issue 10, defect 1)', () => {
  it('pixel_size_um 1000, 220 and 100 on a raw GRAY8 tile of zeros are invalid_header at once; the next tile scores', async () => {
    const { d, sub, base } = await start({ 'ingest.pattern': 'router' });
    const sender = new TileSender({ endpoint: d.ingestEndpoint, pattern: 'req', timeoutMs: 30_000 });
    sender.connect();
    try {
      const zeros = Buffer.alloc(1600 * 1200);
      const gray = (seq: number, px: number): TileHeader => ({ ...header(seq), width: 1600, height: 1200, pixel_type: 'GRAY8', pixel_size_um: px });
      for (const [i, px] of [1000, 220, 100].entries()) {
        const t0 = performance.now();
        const reply = await sender.send(gray(i, px), zeros);
        expect(performance.now() - t0).toBeLessThan(2000);
        expect(reply).toMatchObject({ ok: false, reason: 'invalid_header' });
        expect((reply as { detail: string }).detail).toContain(`/pixel_size_um`);
      }
      const ok = await sender.send(header(10), raw);
      expect(ok).toMatchObject({ ok: true });
      expect(d.ctx.metrics.rejected.get('invalid_header')).toBe(3);
      await until(() => sub.on(`${base}/error`).length === 3, 10_000, 'three error messages');
      for (const m of sub.on(`${base}/error`)) assertSchema('error', m.json);
    } finally {
      await sender.close();
      await sub.close();
    }
  });
});
