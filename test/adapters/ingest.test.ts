// The ingest edge end to end over real ZeroMQ sockets on loopback: sender (TileSender) → ZmqIngest → a sink that
// really decodes (decodeTile) and answers with a digest of the decoded pixels, so a round trip proves they arrived intact.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import sharp from 'sharp';
import * as zmq from 'zeromq';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ZmqIngest } from '../../adapters/zmq-ingest.js';
import type { Context } from '../../core/context.js';
import { PIXEL_TYPES, type IncomingTile, type PixelType, type Rejection, type TileHeader, type TileReply, type TileSink } from '../../core/types.js';
import { DecodeError, decodeTile } from '../../imaging/decode.js';
import { TileSender, type SenderPattern } from '../../sim/replay.js';
import { freePort } from '../helpers/net.js';
import { bombPng, expectedRgb, header, rawPayload, referenceRgb, sha256, testContext } from '../helpers/tiles.js';
import { validateReply } from '../helpers/tile-reply-schema.js';

const MAX_MESSAGE = 2 * 1024 * 1024;

const W = 41;
const H = 29;
const REF = referenceRgb(W, H);

/** Resolves values in arrival order; next() waits for the next one. */
class AsyncQueue<T> {
  private readonly items: T[] = [];
  private readonly waiters: Array<(v: T) => void> = [];
  push(v: T): void {
    const w = this.waiters.shift();
    if (w) w(v);
    else this.items.push(v);
  }
  next(timeoutMs = 10_000): Promise<T> {
    const v = this.items.shift();
    if (v !== undefined) return Promise.resolve(v);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`sink saw nothing within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push((x) => {
        clearTimeout(t);
        resolve(x);
      });
    });
  }
  get size(): number {
    return this.items.length;
  }
}

/** A TileSink that decodes for real and answers with the decoded pixels' digest; `gate` holds ready() closed. */
class DecodingSink implements TileSink {
  readonly seen = new AsyncQueue<TileReply>();
  submits = 0;
  private gate: { promise: Promise<void>; open: () => void } | null = null;
  constructor(private readonly ctx: Context, private readonly delay: (h: TileHeader) => number = () => 0) {}

  close(): void {
    let open!: () => void;
    const promise = new Promise<void>((r) => (open = r));
    this.gate = { promise, open };
  }
  open(): void {
    this.gate?.open();
    this.gate = null;
  }
  ready(): Promise<void> {
    return this.gate?.promise ?? Promise.resolve();
  }
  async submit(tile: IncomingTile): Promise<TileReply> {
    this.submits++;
    let reply: TileReply;
    try {
      const d = await decodeTile(tile, { maxPixels: this.ctx.config.ingest.maxPixels });
      const mean = [0, 0, 0];
      for (let i = 0; i < d.rgb.length; i++) mean[i % 3]! += d.rgb[i]!;
      const n = d.width * d.height;
      reply = {
        ok: true,
        header: tile.header,
        verdict: 'in_focus',
        latency_ms: performance.now() - tile.receivedAt,
        score: {
          defocus_um: mean[0]! / n,
          uncertainty_um: mean[1]! / n,
          sign_confidence: 1,
          tissue_fraction: 0,
          patches: 0,
          // the channel means, as a 1x3 "map"
          focus_map: { rows: 1, cols: 3, defocus_um: mean.map((m) => m / n) },
          model: { name: 'decoding-sink', version: `${d.width}x${d.height}`, sha256: sha256(d.rgb), engine: 'test', pixel_size_um: 0.22 },
        },
      };
    } catch (err) {
      const e = err as DecodeError;
      reply = { ok: false, reason: e.reason ?? 'decode_failed', detail: e.message, received: { header: tile.header, frames: 2, bytes: [-1, tile.payload.length] } };
    }
    const ms = this.delay(tile.header);
    if (ms > 0) await new Promise((r) => setTimeout(r, ms));
    this.seen.push(reply);
    return reply;
  }
  reject(rejection: Rejection): void {
    this.seen.push({ ok: false, ...rejection });
  }
}

function rawTile(pt: PixelType, pad: number, seq: number): { h: TileHeader; frames: Buffer[] } {
  const { payload, stride } = rawPayload(REF, W, H, pt, pad);
  const h = header({ seq, tile: { index: seq, row: 0, col: seq }, format: 'raw', width: W, height: H, pixel_type: pt, ...(pad ? { stride } : {}) });
  return { h, frames: [Buffer.from(JSON.stringify(h)), payload] };
}

async function startIngest(ctx: Context, sink: TileSink): Promise<ZmqIngest> {
  const ingest = new ZmqIngest(ctx, sink);
  await ingest.start(new AbortController().signal);
  return ingest;
}

const MODES: Array<{ daemon: 'pull' | 'router'; sender: SenderPattern }> = [
  { daemon: 'pull', sender: 'push' },
  { daemon: 'router', sender: 'req' },
  { daemon: 'router', sender: 'dealer' },
];

describe.each(MODES)('ingest $daemon <- $sender', ({ daemon, sender }) => {
  let ctx: Context;
  let logs: Array<Record<string, unknown>>;
  let sink: DecodingSink;
  let ingest: ZmqIngest;
  let tx: TileSender;
  let seq = 0;
  let png: Buffer;
  let bomb: Buffer;

  beforeAll(async () => {
    ({ ctx, logs } = testContext({
      'ingest.endpoint': `tcp://127.0.0.1:${await freePort()}`,
      'ingest.pattern': daemon,
      'ingest.maxMessageBytes': MAX_MESSAGE,
    }));
    sink = new DecodingSink(ctx);
    ingest = await startIngest(ctx, sink);
    tx = new TileSender({ endpoint: ingest.boundEndpoint!, pattern: sender, timeoutMs: 10_000 });
    tx.connect();
    png = await sharp(REF, { raw: { width: W, height: H, channels: 3 } }).png().toBuffer();
    bomb = await bombPng(20_000, 20_000);
  });
  afterAll(async () => {
    await tx?.close();
    await ingest?.stop();
  });

  /** Sends one message; returns what the sink produced, after checking that a router reply says the same. */
  async function roundTrip(frames: Array<Buffer | string>, h?: unknown): Promise<TileReply> {
    const reply = await tx.sendFrames(frames, h);
    const seen = await sink.seen.next();
    if (daemon === 'router') {
      expect(reply).toEqual(JSON.parse(JSON.stringify(seen)));
      expect(validateReply(reply), JSON.stringify(validateReply.errors)).toBe(true);
    }
    else expect(reply).toBeNull();
    return seen;
  }

  async function expectGoodTile(): Promise<void> {
    const { h, frames } = rawTile('BGR24', 3, ++seq);
    const r = await roundTrip(frames, h);
    expect(r.ok).toBe(true);
    if (r.ok) {
      expect(r.header.seq).toBe(seq);
      expect(r.score.model.sha256).toBe(sha256(REF));
    }
  }

  for (const pt of PIXEL_TYPES) {
    for (const pad of [0, 7]) {
      it(`raw ${pt}${pad ? ' with stride padding' : ''} arrives pixel-exact`, async () => {
        const { h, frames } = rawTile(pt, pad, ++seq);
        const r = await roundTrip(frames, h);
        expect(r.ok).toBe(true);
        if (!r.ok) return;
        expect(r.header).toEqual(h);
        expect(r.score.model.version).toBe(`${W}x${H}`);
        expect(r.score.model.sha256).toBe(sha256(expectedRgb(REF, pt)));
        // mean red of the reference, a second, independent view of the same pixels
        const meanR = [...REF].filter((_, i) => i % 3 === 0).reduce((a, b) => a + b, 0) / (W * H);
        expect(r.score.defocus_um).toBeCloseTo(meanR, 6);
      });
    }
  }

  it('png (8 and 16 bit) arrives pixel-exact', async () => {
    const u16 = new Uint16Array(W * H * 3);
    for (let i = 0; i < u16.length; i++) u16[i] = (REF[i]! << 8) | 0x55;
    const png16 = await sharp(u16, { raw: { width: W, height: H, channels: 3 } }).toColourspace('rgb16').png().toBuffer();
    for (const payload of [png, png16]) {
      const h = header({ seq: ++seq, format: 'png' });
      const r = await roundTrip([JSON.stringify(h), payload], h);
      expect(r.ok && r.score.model.sha256).toBe(sha256(REF));
    }
  });

  const good = () => header({ seq: ++seq, format: 'png' });
  const cases: Array<{ name: string; frames: () => Array<Buffer | string>; reason: string; detail: string }> = [
    { name: 'bad JSON', frames: () => ['{"v":1,"scanner":', png], reason: 'bad_json', detail: 'not UTF-8 JSON' },
    {
      name: 'a missing field',
      frames: () => {
        const { objective: _o, ...h } = good();
        return [JSON.stringify(h), png];
      },
      reason: 'invalid_header',
      detail: '/objective is required',
    },
    { name: 'a wrong field type', frames: () => [JSON.stringify({ ...good(), stage_um: { x: 0, y: 0, z: 'top' } }), png], reason: 'invalid_header', detail: '/stage_um/z must be number' },
    { name: 'wrong v', frames: () => [JSON.stringify({ ...good(), v: 2 }), png], reason: 'unsupported_version', detail: 'v=2' },
    {
      name: 'payload size not matching width x height x type',
      frames: () => {
        const { h, frames } = rawTile('RGB48', 0, ++seq);
        return [JSON.stringify(h), frames[1]!.subarray(0, frames[1]!.length - 6)];
      },
      reason: 'payload_size_mismatch',
      detail: `needs ${W * H * 6} payload bytes, got ${W * H * 6 - 6}`,
    },
    { name: 'a truncated png', frames: () => [JSON.stringify(good()), png.subarray(0, png.length >> 1)], reason: 'decode_failed', detail: 'png payload could not be decoded' },
    {
      name: 'an oversized message',
      frames: () => [JSON.stringify(good()), Buffer.alloc(MAX_MESSAGE + 1000)],
      reason: 'message_too_large',
      detail: `limit is ${MAX_MESSAGE}`,
    },
    { name: 'a pixel bomb', frames: () => [JSON.stringify(good()), bomb], reason: 'too_many_pixels', detail: 'exceeds 40000000 pixels' },
    {
      name: 'an unknown pixel type',
      frames: () => [JSON.stringify({ ...good(), format: 'raw', width: 2, height: 2, pixel_type: 'YUV422' }), Buffer.alloc(8)],
      reason: 'unknown_pixel_type',
      detail: 'YUV422',
    },
    { name: 'three frames', frames: () => [JSON.stringify(good()), png, png], reason: 'bad_frames', detail: 'got 3' },
    { name: 'one frame', frames: () => [JSON.stringify(good())], reason: 'bad_frames', detail: 'got 1' },
  ];
  for (const c of cases) {
    it(`rejects ${c.name} as ${c.reason}, and the next good tile still goes through`, async () => {
      const frames = c.frames();
      const r = await roundTrip(frames, tryJson(frames[0]));
      expect(r.ok).toBe(false);
      if (r.ok) return;
      expect(r.reason).toBe(c.reason);
      expect(r.detail).toContain(c.detail);
      expect(r.received.frames).toBe(frames.length);
      await expectGoodTile();
    });
  }

  it('logs ingest rejections with tile metadata', () => {
    const line = logs.find((l) => l.message === 'ingest rejected a message: unsupported_version');
    expect(line).toMatchObject({ level: 'debug', scanner: 'axioscan-test', slide: 'S-001', reason: 'unsupported_version' });
    expect(typeof line!.seq).toBe('number');
    expect(logs.some((l) => String(l.message).startsWith('reply not delivered'))).toBe(false);
  });
});

function tryJson(f: Buffer | string | undefined): unknown {
  try {
    return JSON.parse(String(f));
  } catch {
    return undefined;
  }
}

describe('ingest behaviour', () => {
  const cleanup: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c();
  });

  async function setup(daemon: 'pull' | 'router', sender: SenderPattern, delay?: (h: TileHeader) => number, extra: Record<string, unknown> = {}) {
    const { ctx, logs } = testContext({
      'ingest.endpoint': `tcp://127.0.0.1:${await freePort()}`,
      'ingest.pattern': daemon,
      'ingest.maxMessageBytes': MAX_MESSAGE,
      ...extra,
    });
    const sink = new DecodingSink(ctx, delay);
    const ingest = await startIngest(ctx, sink);
    const tx = new TileSender({ endpoint: ingest.boundEndpoint!, pattern: sender, timeoutMs: 10_000 });
    tx.connect();
    cleanup.push(async () => {
      await tx.close();
      await ingest.stop();
    });
    return { ctx, logs, sink, ingest, tx };
  }

  it('does not take messages off the socket while the sink is not ready (back-pressure), then takes them in order', async () => {
    const { sink, tx } = await setup('pull', 'push');
    sink.close();
    // the loop asked ready() before it armed the receive that is pending now, so exactly one message still gets in
    // (with the real pipeline nothing else fills the queue, so that answer stays true); every later one waits
    for (let s = 0; s < 4; s++) await tx.sendFrames(rawTile('GRAY8', 0, s).frames);
    await new Promise((r) => setTimeout(r, 300));
    expect(sink.submits).toBe(1);
    sink.open();
    for (let s = 0; s < 4; s++) {
      const r = await sink.seen.next();
      expect(r.ok && r.header.seq).toBe(s);
    }
  });

  it('router: many dealer requests in flight, answered out of order, all matched and intact', async () => {
    // later tiles finish first, so replies go out in a different order than requests came in
    const { tx, logs } = await setup('router', 'dealer', (h) => (h.seq % 5) * 15);
    const pts = PIXEL_TYPES;
    const sent = Array.from({ length: 30 }, (_, i) => rawTile(pts[i % pts.length]!, i % 2 ? 4 : 0, i));
    const replies = await Promise.all(sent.map(({ h, frames }) => tx.sendFrames(frames, h)));
    replies.forEach((r, i) => {
      expect(r?.ok).toBe(true);
      if (!r?.ok) return;
      expect(r.header.seq).toBe(i);
      expect(r.score.model.sha256).toBe(sha256(expectedRgb(REF, sent[i]!.h.pixel_type!)));
    });
    expect(logs.filter((l) => String(l.message).startsWith('reply not delivered'))).toEqual([]);
  });

  it('router: a REQ sender with its empty delimiter frame gets its reply (delimiter kept), a DEALER mimicking REQ too', async () => {
    const { ingest } = await setup('router', 'req');
    const d = new zmq.Dealer({ linger: 0, receiveTimeout: 5000 });
    d.connect(ingest.boundEndpoint!);
    try {
      const { h, frames } = rawTile('RGB24', 0, 77);
      await d.send(['', ...frames]);
      const reply = await d.receive();
      expect(reply.length).toBe(2);
      expect(reply[0]!.length).toBe(0);
      const r = JSON.parse(reply[1]!.toString()) as TileReply;
      expect(r.ok && r.header).toEqual(h);
      // a bare DEALER whose header frame is empty: the empty frame reads as the delimiter, and the answer says so
      await d.send(['', frames[1]!]);
      const bad = await d.receive();
      const b = JSON.parse(bad.at(-1)!.toString()) as { reason: string; detail: string };
      expect(b.reason).toBe('bad_frames');
      expect(b.detail).toMatch(/got 1 after the envelope .*taken as the REQ delimiter/);
    } finally {
      d.close();
    }
  });

  it('stop() ends the loop while a receive is pending, releases the port, and can run twice', async () => {
    const { ingest, ctx } = await setup('pull', 'push');
    const endpoint = ingest.boundEndpoint!;
    await ingest.stop();
    expect(ingest.boundEndpoint).toBeNull();
    await ingest.stop();
    // the port is free again: a new ingest binds the same endpoint
    const again = new ZmqIngest({ ...ctx, config: { ...ctx.config, ingest: { ...ctx.config.ingest, endpoint } } } as Context, new DecodingSink(ctx));
    await again.start(new AbortController().signal);
    expect(again.boundEndpoint).toBe(endpoint);
    await again.stop();
  });

  it('stop() while the sink holds back: queued messages are answered shutting_down instead of vanishing', async () => {
    const { sink, ingest, tx } = await setup('router', 'dealer');
    sink.close();
    const results = [0, 1, 2, 3].map((s) => {
      const { h, frames } = rawTile('GRAY8', 0, s);
      return tx.sendFrames(frames, h).then(
        (r) => r,
        (err: Error) => err,
      );
    });
    await new Promise((r) => setTimeout(r, 300));
    // one was taken by the receive armed before the gate closed (see the back-pressure test) and was scored
    expect(sink.submits).toBe(1);
    expect((await sink.seen.next()).ok).toBe(true);
    await ingest.stop();
    const replies = await Promise.all(results);
    expect(replies[0] instanceof Error ? replies[0].message : replies[0]?.ok).toBe(true);
    for (const r of replies.slice(1)) expect(r instanceof Error ? r.message : r?.ok === false && r.reason).toBe('shutting_down');
    // the sink was told too (the real pipeline counts and publishes them)
    for (let i = 0; i < 3; i++) {
      const seen = await sink.seen.next();
      expect(seen.ok === false && seen.reason).toBe('shutting_down');
    }
    expect(sink.submits).toBe(1);
    sink.open();
  });

  it('a frame beyond the hard limit drops only that connection; the ingest keeps serving', async () => {
    const { ctx, sink, ingest, logs, tx } = await setup('pull', 'push');
    const rogue = new zmq.Push({ linger: 0 });
    rogue.connect(ingest.boundEndpoint!);
    await rogue.send([JSON.stringify(header()), Buffer.alloc(MAX_MESSAGE * 3)]);
    const deadline = Date.now() + 5000;
    while (!logs.some((l) => String(l.message).startsWith('ingest peer disconnected')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    rogue.close();
    expect(logs.some((l) => String(l.message).startsWith('ingest peer disconnected'))).toBe(true);
    // the only trace libzmq leaves is the disconnect: counted (issue 10, note 8)
    expect(ctx.metrics.ingestDisconnects).toBeGreaterThanOrEqual(1);
    expect(sink.submits).toBe(0);
    const { frames } = rawTile('RGB24', 0, 5);
    await tx.sendFrames(frames);
    const r = await sink.seen.next();
    expect(r.ok && r.header.seq).toBe(5);
  });

  it('junk connections (not ZMTP) are counted every one and logged once per interval (issue 10, note 8)', async () => {
    const { ctx, sink, ingest, logs, tx } = await setup('router', 'dealer');
    const port = Number(ingest.boundEndpoint!.split(':').pop());
    const n = 40;
    await Promise.all(
      [...Array(n).keys()].map(
        () =>
          new Promise<void>((resolve) => {
            const c = net.connect(port, '127.0.0.1', () => c.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
            c.on('error', () => resolve());
            c.on('close', () => resolve());
            c.setTimeout(3000, () => c.destroy());
          }),
      ),
    );
    const deadline = Date.now() + 5000;
    while (ctx.metrics.ingestHandshakeFailures < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(ctx.metrics.ingestHandshakeFailures).toBe(n);
    const lines = logs.filter((l) => /^ingest peer (protocol error|handshake failed)/.test(String(l.message)));
    expect(lines).toHaveLength(1);
    expect(logs.filter((l) => String(l.message).startsWith('ingest peer disconnected')).length).toBeLessThanOrEqual(1);
    expect(ctx.metrics.snapshot()).toMatchObject({ ingest_handshake_failures: n });
    // a real sender is still served
    const { frames } = rawTile('RGB24', 0, 6);
    const r = await tx.sendFrames(frames);
    expect(r?.ok).toBe(true);
    expect(sink.submits).toBe(1);
  });

  it('CURVE (ingest.curve.*): a listed client key is served; an unlisted key and a plain client are refused in the handshake', async () => {
    const server = zmq.curveKeyPair();
    // a key with # in it (a Z85 digit) must not be cut as a comment: draw until one has it
    let allowed = zmq.curveKeyPair();
    while (!allowed.publicKey.includes('#')) allowed = zmq.curveKeyPair();
    const stranger = zmq.curveKeyPair();
    const dir = mkdtempSync(join(tmpdir(), 'focusd-curve-'));
    writeFileSync(join(dir, 'secret'), `${server.secretKey}\n`);
    writeFileSync(join(dir, 'clients'), `# scanners allowed to send tiles\n${allowed.publicKey}\n`);
    const { ctx, sink, ingest } = await setup('router', 'req', undefined, {
      'ingest.curve.secretKeyFile': join(dir, 'secret'),
      'ingest.curve.clientKeysFile': join(dir, 'clients'),
    });
    expect(ctx.config.resolved.ingestCurve?.clientKeys).toEqual([allowed.publicKey]);
    const client = (keys: { publicKey: string; secretKey: string } | null) => {
      const s = new zmq.Dealer({
        linger: 0,
        receiveTimeout: 1500,
        ...(keys ? { curveServerKey: server.publicKey, curvePublicKey: keys.publicKey, curveSecretKey: keys.secretKey } : {}),
      });
      s.connect(ingest.boundEndpoint!);
      return s;
    };
    const ask = async (s: zmq.Dealer, seq: number) => {
      await s.send([Buffer.alloc(0), ...rawTile('RGB24', 0, seq).frames]);
      try {
        const f = await s.receive();
        return JSON.parse(f[f.length - 1]!.toString()) as TileReply;
      } catch {
        return null;
      } finally {
        s.close();
      }
    };
    const good = await ask(client(allowed), 1);
    expect(good?.ok && good.header.seq).toBe(1);
    const before = ctx.metrics.ingestHandshakeFailures;
    expect(await ask(client(stranger), 2)).toBeNull();
    expect(await ask(client(null), 3)).toBeNull();
    expect(sink.submits).toBe(1);
    expect(ctx.metrics.ingestHandshakeFailures - before).toBeGreaterThanOrEqual(2);
  });

  it('CURVE configuration problems are named: a client list without a secret key, malformed keys', () => {
    const dir = mkdtempSync(join(tmpdir(), 'focusd-curve-'));
    writeFileSync(join(dir, 'clients'), 'not-a-key\n');
    writeFileSync(join(dir, 'secret'), 'short\n');
    expect(() => testContext({ 'ingest.curve.clientKeysFile': join(dir, 'clients') })).toThrow(/ingest\.curve\.secretKeyFile: required/);
    let msg = '';
    try {
      testContext({ 'ingest.curve.clientKeysFile': join(dir, 'clients'), 'ingest.curve.secretKeyFile': join(dir, 'secret') });
    } catch (err) {
      msg = (err as Error).message;
    }
    expect(msg).toMatch(/ingest\.curve\.secretKeyFile: .* must hold one Z85 key/);
    expect(msg).toMatch(/ingest\.curve\.clientKeysFile: 1 line\(s\) .* "not-a-key"/);
    expect(msg).not.toContain('short');
  });

  it('binds a wildcard port and reports the real endpoint; a second bind to it fails and stop() after that is safe', async () => {
    const { ctx } = testContext({ 'ingest.endpoint': 'tcp://127.0.0.1:0', 'ingest.pattern': 'router' });
    const a = await startIngest(ctx, new DecodingSink(ctx));
    cleanup.push(() => a.stop());
    expect(a.boundEndpoint).toMatch(/^tcp:\/\/127\.0\.0\.1:\d+$/);
    expect(a.boundEndpoint).not.toBe('tcp://127.0.0.1:0');
    const ctx2 = { ...ctx, config: { ...ctx.config, ingest: { ...ctx.config.ingest, endpoint: a.boundEndpoint! } } } as Context;
    const b = new ZmqIngest(ctx2, new DecodingSink(ctx2));
    // the error names the setting and the address, not only "Address already in use"
    await expect(b.start(new AbortController().signal)).rejects.toThrow(new RegExp(`cannot bind ingest.endpoint ${a.boundEndpoint}: .*in use`, "i"));
    await b.stop();
  });
});
