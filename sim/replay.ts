// `focusd replay`: sends image files to a daemon the way a scanner does (wire protocol v1, docs/protocol.md).
// TileSender is the reusable part (tests, the demo, the benchmark): one header + payload per message.
import { readFile, readdir, stat } from 'node:fs/promises';
import { dirname, extname, join, resolve } from 'node:path';
import sharp from 'sharp';
import * as zmq from 'zeromq';
import type { TileFormat, TileHeader, TileReply } from '../core/types.js';

export type SenderPattern = 'push' | 'req' | 'dealer';

export interface TileSenderOptions {
  endpoint: string;
  /** push (daemon pattern pull), req or dealer (daemon pattern router). */
  pattern: SenderPattern;
  /** ms to wait for a reply (req, dealer) and for a message to be queued when the daemon pushes back. */
  timeoutMs: number;
  /** ZMQ_SNDHWM of the sender; with back-pressure this many messages wait in the sender before send() blocks. */
  sendHighWaterMark?: number;
  /** ZMQ_LINGER: how long queued messages may still be delivered after close() (default 0: dropped). */
  lingerMs?: number;
}

interface Pending {
  key: string | null;
  resolve: (r: TileReply) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** Correlation key of a header: the same tile acquisition gives the same key. */
function replyKey(h: unknown): string | null {
  if (!h || typeof h !== 'object') return null;
  const o = h as Record<string, unknown>;
  if (o.seq === undefined) return null;
  return JSON.stringify([o.scanner, o.slide, o.scan, o.seq, o.attempt]);
}

/**
 * Sends tiles like a scanner. push: fire and forget (send() resolves when queued). req: one request at a time, each
 * awaiting its reply. dealer: many in flight; replies (which arrive in completion order) are matched to requests by
 * scanner/slide/scan/seq/attempt, and a reply without a parsed header (bad_json) goes to the oldest request that had
 * no header either. push: send() resolves once the message is queued, not delivered; a caller that closes right
 * after sending should set lingerMs (replay does), or queued messages are dropped.
 */
export class TileSender {
  private socket: zmq.Push | zmq.Request | zmq.Dealer | null = null;
  private readonly pending: Pending[] = [];
  private reqChain: Promise<unknown> = Promise.resolve();
  private sendChain: Promise<unknown> = Promise.resolve();
  private reader: Promise<void> | null = null;
  /** set once the ZMTP handshake with the daemon completed (push: the only sign that anything can be delivered). */
  private handshake: { ok: boolean; why: string } | null = null;
  private readonly handshakeWaiters: Array<() => void> = [];

  constructor(private readonly opts: TileSenderOptions) {}

  /**
   * Whether a peer took the connection within timeoutMs. A push socket queues messages without one and send()
   * resolves anyway, so a wrong endpoint or a daemon in router mode would otherwise look like "sent".
   */
  async peerReady(timeoutMs: number): Promise<{ ok: boolean; why: string }> {
    if (!this.handshake) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([new Promise<void>((r) => this.handshakeWaiters.push(r)), new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
      clearTimeout(timer);
    }
    return this.handshake ?? { ok: false, why: `no ZeroMQ peer answered at ${this.opts.endpoint} within ${timeoutMs} ms (is focusd running and bound there?)` };
  }

  get inFlight(): number {
    return this.pending.length;
  }

  connect(): void {
    const { pattern, endpoint, timeoutMs } = this.opts;
    const common = {
      sendTimeout: timeoutMs,
      linger: this.opts.lingerMs ?? 0,
      ...(this.opts.sendHighWaterMark ? { sendHighWaterMark: this.opts.sendHighWaterMark } : {}),
    };
    if (pattern === 'push') this.socket = new zmq.Push(common);
    // relaxed + correlate: after a timed-out request the socket can send the next one and ignores the late reply
    else if (pattern === 'req') this.socket = new zmq.Request({ ...common, receiveTimeout: timeoutMs, relaxed: true, correlate: true });
    else this.socket = new zmq.Dealer(common);
    const settle = (h: { ok: boolean; why: string }) => {
      // a failed handshake is retried by libzmq; the first success wins
      if (this.handshake?.ok) return;
      this.handshake = h;
      if (h.ok) for (const w of this.handshakeWaiters.splice(0)) w();
    };
    this.socket.events.on('handshake', () => settle({ ok: true, why: '' }));
    // a peer that rejects the socket type (a ROUTER daemon for a PUSH sender) just closes the connection mid-handshake
    const refused = () =>
      settle({ ok: false, why: `the peer at ${endpoint} closed the connection during the ZeroMQ handshake: it does not take a ${pattern} socket (for a daemon with ingest.pattern router use --pattern req or dealer, for pull use push) or it requires CURVE keys` });
    this.socket.events.on('handshake:error:protocol', refused);
    this.socket.events.on('disconnect', () => {
      if (!this.handshake?.ok) refused();
    });
    this.socket.events.on('handshake:error:other', () => settle({ ok: false, why: `the ZeroMQ handshake with ${endpoint} failed (wrong socket type, or CURVE keys)` }));
    this.socket.connect(endpoint);
    if (pattern === 'dealer') this.reader = this.readReplies(this.socket as zmq.Dealer);
  }

  /** Sends one tile; resolves with the daemon's reply (req, dealer) or null once queued (push). */
  send(header: TileHeader | Record<string, unknown>, payload: Buffer): Promise<TileReply | null> {
    return this.sendFrames([Buffer.from(JSON.stringify(header)), payload], header);
  }

  /** Sends arbitrary frames (tests use it for malformed messages). `header` only helps match dealer replies. */
  sendFrames(frames: Array<Buffer | string>, header?: unknown): Promise<TileReply | null> {
    const sock = this.socket;
    if (!sock) return Promise.reject(new Error('TileSender: connect() first'));
    const { pattern, timeoutMs } = this.opts;
    if (pattern === 'push') return this.serialSend(sock as zmq.Push, frames).then(() => null);
    if (pattern === 'req') {
      const r = sock as zmq.Request;
      const run = async (): Promise<TileReply> => {
        await r.send(frames);
        try {
          const [msg] = await r.receive();
          return JSON.parse(msg!.toString('utf8')) as TileReply;
        } catch (err) {
          if ((err as { code?: string }).code === 'EAGAIN') throw new Error(`no reply within ${timeoutMs} ms`);
          throw err;
        }
      };
      const p = this.reqChain.then(run, run);
      this.reqChain = p.catch(() => undefined);
      return p;
    }
    // dealer
    return new Promise<TileReply>((resolvePromise, rejectPromise) => {
      const entry: Pending = {
        key: replyKey(header ?? tryParse(frames[0])),
        resolve: resolvePromise,
        reject: rejectPromise,
        timer: setTimeout(() => {
          this.remove(entry);
          rejectPromise(new Error(`no reply within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.pending.push(entry);
      this.serialSend(sock as zmq.Dealer, frames).catch((err: Error) => {
        this.remove(entry);
        clearTimeout(entry.timer);
        rejectPromise(err);
      });
    });
  }

  /** Closes the socket (queued messages get lingerMs to leave) and fails requests still waiting for replies. */
  async close(opts: { dropQueued?: boolean } = {}): Promise<void> {
    // messages that cannot be delivered must not hold the process for the linger time
    if (opts.dropQueued && this.socket) this.socket.linger = 0;
    for (const p of this.pending.splice(0)) {
      clearTimeout(p.timer);
      p.reject(new Error('sender closed'));
    }
    this.socket?.close();
    this.socket = null;
    // the dealer's reply reader ends once its receive() sees the closed socket
    await this.reader;
    this.reader = null;
  }

  /** zeromq v6 allows one pending send per socket. */
  private serialSend(sock: zmq.Push | zmq.Dealer, frames: Array<Buffer | string>): Promise<void> {
    const p = this.sendChain.then(() => sock.send(frames));
    this.sendChain = p.catch(() => undefined);
    return p;
  }

  private remove(entry: Pending): void {
    const i = this.pending.indexOf(entry);
    if (i >= 0) this.pending.splice(i, 1);
  }

  private async readReplies(sock: zmq.Dealer): Promise<void> {
    for (;;) {
      let frames: Buffer[];
      try {
        frames = await sock.receive();
      } catch {
        if (sock.closed) return;
        continue;
      }
      // a daemon answering a DEALER that sent no delimiter replies with one frame; tolerate a leading empty one
      const body = frames.filter((f) => f.length > 0);
      let reply: TileReply;
      try {
        reply = JSON.parse(body[0]?.toString('utf8') ?? '') as TileReply;
      } catch {
        continue;
      }
      const key = replyKey(reply.ok ? reply.header : reply.received?.header);
      const entry =
        (key !== null && this.pending.find((p) => p.key === key)) || this.pending.find((p) => p.key === null) || this.pending[0];
      if (!entry) continue;
      this.remove(entry);
      clearTimeout(entry.timer);
      entry.resolve(reply);
    }
  }
}

function tryParse(frame: Buffer | string | undefined): unknown {
  try {
    return frame === undefined ? undefined : JSON.parse(frame.toString());
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// replay

export interface ReplayOptions {
  endpoint: string;
  pattern: SenderPattern;
  /** folder of .png/.jpg/.jpeg/.tif/.tiff files (sorted by name, numbers in names compare numerically) or a JSON-lines manifest. */
  input: string;
  /** tiles per second; 0 = as fast as the daemon takes them. */
  rate: number;
  /** send decoded pixels as raw RGB24 / BGR24 instead of the file bytes. */
  raw: 'rgb24' | 'bgr24' | null;
  scanner: string;
  slide: string;
  scan: string;
  /** grid columns for folder input; 0 = ceil(sqrt(n)). */
  cols: number;
  pixelSizeUm: number;
  objective: string;
  zUm: number;
  /** dealer: requests in flight. */
  inFlight: number;
  timeoutMs: number;
  /** send at most this many tiles (0 = all). */
  limit: number;
  onResult?: (r: ReplayResult) => void;
  signal?: AbortSignal;
}

export interface ReplayResult {
  seq: number;
  file: string;
  header: TileHeader;
  reply: TileReply | null;
  error: string | null;
  rtt_ms: number;
}

export interface ReplaySummary {
  endpoint: string;
  pattern: SenderPattern;
  sent: number;
  replies: Record<string, number>;
  errors: number;
  elapsed_s: number;
  tiles_per_s: number;
  /** push only: why nothing can have been delivered (no handshake with a peer); every tile is then an error. */
  undelivered?: string;
}

interface Item {
  file: string;
  /** header fields given by a manifest line. */
  fields: Record<string, unknown>;
}

const IMAGE_EXT: Record<string, Exclude<TileFormat, 'raw'>> = { '.png': 'png', '.jpg': 'jpeg', '.jpeg': 'jpeg', '.tif': 'tiff', '.tiff': 'tiff' };

async function listItems(input: string): Promise<Item[]> {
  const st = await stat(input);
  if (st.isDirectory()) {
    const names = (await readdir(input)).filter((n) => IMAGE_EXT[extname(n).toLowerCase()]);
    names.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
    return names.map((n) => ({ file: join(input, n), fields: {} }));
  }
  const dir = dirname(resolve(input));
  const lines = (await readFile(input, 'utf8')).split(/\r?\n/);
  const items: Item[] = [];
  lines.forEach((line, i) => {
    const t = line.trim();
    if (!t || t.startsWith('#')) return;
    let o: unknown;
    try {
      o = JSON.parse(t);
    } catch (err) {
      throw new Error(`${input}:${i + 1}: not JSON: ${(err as Error).message}`);
    }
    if (!o || typeof o !== 'object' || typeof (o as { file?: unknown }).file !== 'string') throw new Error(`${input}:${i + 1}: needs a "file" field`);
    const { file, ...fields } = o as { file: string } & Record<string, unknown>;
    items.push({ file: resolve(dir, file), fields });
  });
  return items;
}

/** Reads one file into a payload and the header fields it determines (format; raw layout). */
async function loadPayload(file: string, raw: ReplayOptions['raw']): Promise<{ payload: Buffer; width: number; height: number; fields: Partial<TileHeader> }> {
  const bytes = await readFile(file);
  if (!raw) {
    const format = IMAGE_EXT[extname(file).toLowerCase()];
    if (!format) throw new Error(`${file}: unknown image extension (use .png, .jpg, .jpeg, .tif, .tiff)`);
    const meta = await sharp(bytes).metadata();
    return { payload: bytes, width: meta.width ?? 0, height: meta.height ?? 0, fields: { format } };
  }
  const { data, info } = await sharp(bytes)
    .flatten({ background: { r: 255, g: 255, b: 255 } })
    .toColourspace('srgb')
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  if (raw === 'bgr24') {
    for (let i = 0; i < data.length; i += 3) {
      const t = data[i]!;
      data[i] = data[i + 2]!;
      data[i + 2] = t;
    }
  }
  return {
    payload: data,
    width: info.width,
    height: info.height,
    fields: { format: 'raw', width: info.width, height: info.height, pixel_type: raw === 'bgr24' ? 'BGR24' : 'RGB24' },
  };
}

/** Sends every tile of the input; resolves with the summary (per-tile results go to onResult). */
export async function replay(opts: ReplayOptions): Promise<ReplaySummary> {
  let items = await listItems(opts.input);
  if (opts.limit > 0) items = items.slice(0, opts.limit);
  if (items.length === 0) throw new Error(`${opts.input}: no image files`);
  const cols = opts.cols > 0 ? opts.cols : Math.ceil(Math.sqrt(items.length));
  // push: send() resolves once queued, so let close() keep delivering what is still queued (the process waits for it)
  const sender = new TileSender({ endpoint: opts.endpoint, pattern: opts.pattern, timeoutMs: opts.timeoutMs, lingerMs: opts.pattern === 'push' ? opts.timeoutMs : 0 });
  sender.connect();
  const summary: ReplaySummary = { endpoint: opts.endpoint, pattern: opts.pattern, sent: 0, replies: {}, errors: 0, elapsed_s: 0, tiles_per_s: 0 };
  const inFlight = new Set<Promise<void>>();
  let queued = 0;
  const t0 = performance.now();
  try {
    for (let i = 0; i < items.length; i++) {
      if (opts.signal?.aborted) break;
      if (opts.rate > 0) {
        const due = t0 + (i * 1000) / opts.rate;
        const wait = due - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      const item = items[i]!;
      const row = Math.floor(i / cols);
      const col = i % cols;
      let header: TileHeader;
      let payload: Buffer;
      try {
        const loaded = await loadPayload(item.file, opts.raw);
        payload = loaded.payload;
        header = {
          v: 1,
          scanner: opts.scanner,
          slide: opts.slide,
          scan: opts.scan,
          seq: i,
          tile: { index: i, row, col },
          // tile centre on a grid without overlap
          stage_um: {
            x: (col + 0.5) * loaded.width * opts.pixelSizeUm,
            y: (row + 0.5) * loaded.height * opts.pixelSizeUm,
            z: opts.zUm,
          },
          pixel_size_um: opts.pixelSizeUm,
          objective: opts.objective,
          acquired_at: new Date().toISOString(),
          attempt: 0,
          ...loaded.fields,
          ...(item.fields as Partial<TileHeader>),
        } as TileHeader;
      } catch (err) {
        summary.errors++;
        opts.onResult?.({ seq: i, file: item.file, header: {} as TileHeader, reply: null, error: (err as Error).message, rtt_ms: 0 });
        continue;
      }
      const sentAt = performance.now();
      const done = sender.send(header, payload).then(
        (reply) => {
          queued++;
          if (reply) {
            const k = reply.ok ? reply.verdict : reply.reason;
            summary.replies[k] = (summary.replies[k] ?? 0) + 1;
          }
          opts.onResult?.({ seq: header.seq, file: item.file, header, reply, error: null, rtt_ms: round2(performance.now() - sentAt) });
        },
        (err: Error) => {
          summary.errors++;
          opts.onResult?.({ seq: header.seq, file: item.file, header, reply: null, error: err.message, rtt_ms: round2(performance.now() - sentAt) });
        },
      );
      summary.sent++;
      if (opts.pattern === 'dealer') {
        const tracked = done.finally(() => inFlight.delete(tracked));
        inFlight.add(tracked);
        if (inFlight.size >= Math.max(1, opts.inFlight)) await Promise.race(inFlight);
      } else {
        // push resolves once queued (blocks under back-pressure); req once the reply is in
        await done;
      }
    }
    await Promise.all(inFlight);
    if (opts.pattern === 'push' && summary.sent > 0) {
      // push never hears back: without a completed handshake nothing left this process
      const peer = await sender.peerReady(opts.timeoutMs);
      if (!peer.ok) {
        // the tiles whose send failed are counted already
        summary.errors += queued;
        summary.undelivered = peer.why;
      }
    }
  } finally {
    await sender.close({ dropQueued: summary.undelivered !== undefined });
  }
  summary.elapsed_s = round2((performance.now() - t0) / 1000);
  summary.tiles_per_s = summary.elapsed_s > 0 ? round2(summary.sent / summary.elapsed_s) : 0;
  return summary;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}
