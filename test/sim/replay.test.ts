// focusd replay against a real ZmqIngest: folder and manifest input, file bytes and --raw, push/req/dealer.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ZmqIngest } from '../../adapters/zmq-ingest.js';
import type { IncomingTile, Rejection, TileReply, TileSink } from '../../core/types.js';
import { decodeTile } from '../../imaging/decode.js';
import { replayMain } from '../../cli/replay.js';
import { replay, type ReplayOptions, type ReplayResult } from '../../sim/replay.js';
import { freePort } from '../helpers/net.js';
import { referenceRgb, sha256, testContext } from '../helpers/tiles.js';

const W = 24;
const H = 16;

/** Decodes for real; verdict in_focus for even tile indexes, out_of_focus for odd ones; sha of the pixels in model.sha256. */
class Sink implements TileSink {
  readonly tiles: IncomingTile[] = [];
  readonly rejections: Rejection[] = [];
  async ready(): Promise<void> {}
  reject(r: Rejection): void {
    this.rejections.push(r);
  }
  async submit(tile: IncomingTile): Promise<TileReply> {
    this.tiles.push(tile);
    const d = await decodeTile(tile, { maxPixels: 1e6 });
    return {
      ok: true,
      header: tile.header,
      verdict: tile.header.tile.index % 2 ? 'out_of_focus' : 'in_focus',
      latency_ms: 0,
      score: {
        defocus_um: tile.header.tile.index % 2 ? 3 : 0,
        uncertainty_um: 0,
        sign_confidence: 1,
        tissue_fraction: 1,
        patches: 1,
        focus_map: null,
        model: { name: 'sink', version: '0', sha256: sha256(d.rgb), engine: 'test', pixel_size_um: 0.22 },
      },
    };
  }
}

describe('replay', () => {
  let dir: string;
  const refs: Buffer[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'focusd-replay-'));
    // names that sort differently as text and as numbers: tile-2 must come before tile-10
    const names = ['tile-1.png', 'tile-2.png', 'tile-10.png', 'tile-3.tif', 'notes.txt'];
    for (let i = 0; i < 4; i++) {
      const ref = referenceRgb(W + i, H);
      refs.push(ref);
      const img = sharp(ref, { raw: { width: W + i, height: H, channels: 3 } });
      writeFileSync(join(dir, names[i]!), names[i]!.endsWith('.tif') ? await img.tiff({ compression: 'lzw' }).toBuffer() : await img.png().toBuffer());
    }
    writeFileSync(join(dir, 'notes.txt'), 'not an image');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  async function withIngest(pattern: 'pull' | 'router', fn: (endpoint: string, sink: Sink) => Promise<void>): Promise<void> {
    const { ctx } = testContext({ 'ingest.endpoint': `tcp://127.0.0.1:${await freePort()}`, 'ingest.pattern': pattern });
    const sink = new Sink();
    const ingest = new ZmqIngest(ctx, sink);
    await ingest.start(new AbortController().signal);
    try {
      await fn(ingest.boundEndpoint!, sink);
    } finally {
      await ingest.stop();
    }
  }

  const base = (endpoint: string, over: Partial<ReplayOptions>): ReplayOptions => ({
    endpoint,
    pattern: 'req',
    input: dir,
    rate: 0,
    raw: null,
    scanner: 'replay-test',
    slide: 'S1',
    scan: 'c1',
    cols: 2,
    pixelSizeUm: 0.5,
    objective: '20x',
    zUm: 12.5,
    inFlight: 3,
    timeoutMs: 10_000,
    limit: 0,
    ...over,
  });

  // file order 1, 2, 3(.tif), 10 → refs 0, 1, 3, 2
  const order = [0, 1, 3, 2];

  for (const pattern of ['req', 'dealer'] as const) {
    it(`router/${pattern}: sends a folder in numeric name order on a grid and reports every reply`, async () => {
      await withIngest('router', async (endpoint) => {
        const results: ReplayResult[] = [];
        const summary = await replay(base(endpoint, { pattern, onResult: (r) => results.push(r) }));
        expect(summary.sent).toBe(4);
        expect(summary.errors).toBe(0);
        expect(summary.replies).toEqual({ in_focus: 2, out_of_focus: 2 });
        results.sort((a, b) => a.seq - b.seq);
        expect(results.map((r) => r.file.split('/').pop())).toEqual(['tile-1.png', 'tile-2.png', 'tile-3.tif', 'tile-10.png']);
        results.forEach((r, i) => {
          expect(r.reply?.ok).toBe(true);
          if (!r.reply?.ok) return;
          expect(r.reply.score.model.sha256).toBe(sha256(refs[order[i]!]!));
          const h = r.reply.header;
          expect(h.tile).toEqual({ index: i, row: Math.floor(i / 2), col: i % 2 });
          expect(h.stage_um.z).toBe(12.5);
          expect(h.stage_um.x).toBeCloseTo(((i % 2) + 0.5) * (W + order[i]!) * 0.5, 6);
          expect(h.format).toBe(i === 2 ? 'tiff' : 'png');
          expect(h.attempt).toBe(0);
        });
      });
    });
  }

  it('push with --raw bgr24: the daemon receives BGR24 and decodes the original pixels', async () => {
    await withIngest('pull', async (endpoint, sink) => {
      const summary = await replay(base(endpoint, { pattern: 'push', raw: 'bgr24', limit: 2 }));
      expect(summary.sent).toBe(2);
      const deadline = Date.now() + 5000;
      while (sink.tiles.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(sink.tiles.map((t) => t.header.pixel_type)).toEqual(['BGR24', 'BGR24']);
      for (let i = 0; i < 2; i++) {
        const d = await decodeTile(sink.tiles[i]!, { maxPixels: 1e6 });
        expect(d.rgb.equals(refs[i]!)).toBe(true);
      }
    });
  });

  it('push that reaches no pull socket is an error, not "sent": a router daemon (protocol error) and an endpoint nobody binds', async () => {
    await withIngest('router', async (endpoint, sink) => {
      const summary = await replay(base(endpoint, { pattern: 'push', limit: 2, timeoutMs: 3000 }));
      // each tile is an error once: queued and never delivered, or (the pipe gone) refused by send itself
      expect(summary).toMatchObject({ sent: 2, errors: 2 });
      expect(summary.undelivered).toMatch(/closed the connection during the ZeroMQ handshake: it does not take a push socket.*--pattern req or dealer/);
      expect(sink.tiles).toHaveLength(0);
    });
    const t0 = performance.now();
    const none = await replay(base(`tcp://127.0.0.1:${await freePort()}`, { pattern: 'push', limit: 1, timeoutMs: 1500 }));
    expect(none).toMatchObject({ sent: 1, errors: 1 });
    expect(none.undelivered).toMatch(/no ZeroMQ peer answered .* within 1500 ms/);
    // the queued tile is dropped, not lingered on for another timeout
    expect(performance.now() - t0).toBeLessThan(2900);
  });

  it('a JSON-lines manifest sets header fields per tile; a bad line is reported', async () => {
    const manifest = join(dir, 'scan.jsonl');
    writeFileSync(
      manifest,
      [
        '# re-acquisition of tile 7',
        JSON.stringify({ file: 'tile-2.png', tile: { index: 7, row: 3, col: 1 }, attempt: 1, stage_um: { x: 1, y: 2, z: 3 }, x_zen_scene: 4 }),
        '',
        JSON.stringify({ file: 'tile-1.png', seq: 99 }),
      ].join('\n'),
    );
    await withIngest('router', async (endpoint) => {
      const results: ReplayResult[] = [];
      await replay(base(endpoint, { input: manifest, onResult: (r) => results.push(r) }));
      expect(results).toHaveLength(2);
      const [a, b] = results.map((r) => (r.reply?.ok ? r.reply.header : null));
      expect(a).toMatchObject({ tile: { index: 7, row: 3, col: 1 }, attempt: 1, stage_um: { x: 1, y: 2, z: 3 }, x_zen_scene: 4, seq: 0 });
      expect(b).toMatchObject({ seq: 99, tile: { index: 1, row: 0, col: 1 } });
    });
    writeFileSync(manifest, '{"file": "tile-1.png"}\n{not json\n');
    await expect(replay(base('tcp://127.0.0.1:1', { input: manifest }))).rejects.toThrow(/scan\.jsonl:2: not JSON/);
  });

  it('replayMain: usage errors exit 64, a run against a daemon exits 0 and prints a summary', async () => {
    const err: string[] = [];
    const out: string[] = [];
    const origErr = process.stderr.write.bind(process.stderr);
    const origOut = process.stdout.write.bind(process.stdout);
    process.stderr.write = ((s: string) => (err.push(String(s)), true)) as typeof process.stderr.write;
    process.stdout.write = ((s: string) => (out.push(String(s)), true)) as typeof process.stdout.write;
    try {
      expect(await replayMain([])).toBe(64);
      expect(await replayMain(['--rate', 'fast', dir, '--endpoint', 'tcp://127.0.0.1:1', '--pattern', 'req'])).toBe(64);
      expect(err.join('')).toContain('--rate must be a number');
      expect(await replayMain(['--pattern', 'pub', '--endpoint', 'tcp://127.0.0.1:1', dir])).toBe(64);
      await withIngest('router', async (endpoint) => {
        expect(await replayMain(['--endpoint', endpoint, '--pattern', 'dealer', '--json', dir])).toBe(0);
      });
    } finally {
      process.stderr.write = origErr;
      process.stdout.write = origOut;
    }
    const lines = out.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.filter((l) => l.type === 'tile')).toHaveLength(4);
    expect(lines.at(-1)).toMatchObject({ type: 'summary', sent: 4, errors: 0, pattern: 'dealer' });
  });
});
