// `focusd replay`: sends image files to a daemon the way a scanner does (wire protocol v1, docs/protocol.md).
// TileSender is the reusable part (tests, the demo, the benchmark): one header + payload per message.
import { readFile, readdir, stat } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import * as zmq from 'zeromq';
import type { TileFormat, TileHeader, TileReply } from '../daemon/types.js';

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

  constructor(private readonly opts: TileSenderOptions) {}

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
  async close(): Promise<void> {
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
  } finally {
    await sender.close();
  }
  summary.elapsed_s = round2((performance.now() - t0) / 1000);
  summary.tiles_per_s = summary.elapsed_s > 0 ? round2(summary.sent / summary.elapsed_s) : 0;
  return summary;
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

const REPLAY_USAGE = `usage: focusd replay [options] INPUT

Sends tiles to a focusd daemon the way a scanner does (docs/protocol.md). INPUT is a folder of .png/.jpg/.tif
files (sent in name order, laid out on a grid) or a JSON-lines manifest: one header per line plus "file" (relative
to the manifest), e.g. {"file":"t0001.png","tile":{"index":1,"row":0,"col":1},"stage_um":{"x":0,"y":0,"z":2.5}}.

options:
  --endpoint URL       daemon endpoint (default: ingest.endpoint of --config / FOCUSD_CONFIG / defaults)
  --pattern P          push (daemon pull), req or dealer (daemon router); default from the daemon config
  --rate N             tiles per second, 0 = as fast as the daemon takes them (default 0)
  --raw rgb24|bgr24    send decoded pixels instead of the file bytes
  --in-flight N        dealer: requests in flight (default 4)
  --timeout-ms N       reply / send timeout (default 30000)
  --scanner ID --slide ID --scan ID    header identifiers (default replay, slide-1, scan-<time>)
  --cols N             grid columns (default ceil(sqrt(tiles)))
  --pixel-size-um X    default 0.22      --objective TEXT   default "Plan-Apochromat 20x/0.8"
  --z-um X             stage z written into the headers (default 0)
  --limit N            send only the first N tiles
  --json               print one JSON line per tile and for the summary
  --quiet              print only the summary
  -c, --config FILE    daemon configuration to take the endpoint and pattern from`;

/** CLI entry of `focusd replay`; returns the exit code (0 ok, 1 some tiles failed, 64 usage). */
export async function replayMain(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        endpoint: { type: 'string' },
        pattern: { type: 'string' },
        rate: { type: 'string', default: '0' },
        raw: { type: 'string' },
        'in-flight': { type: 'string', default: '4' },
        'timeout-ms': { type: 'string', default: '30000' },
        scanner: { type: 'string', default: 'replay' },
        slide: { type: 'string', default: 'slide-1' },
        scan: { type: 'string' },
        cols: { type: 'string', default: '0' },
        'pixel-size-um': { type: 'string', default: '0.22' },
        objective: { type: 'string', default: 'Plan-Apochromat 20x/0.8' },
        'z-um': { type: 'string', default: '0' },
        limit: { type: 'string', default: '0' },
        json: { type: 'boolean', default: false },
        quiet: { type: 'boolean', default: false },
        config: { type: 'string', short: 'c' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    process.stderr.write(`focusd replay: ${(err as Error).message}\n\n${REPLAY_USAGE}\n`);
    return 64;
  }
  const v = parsed.values;
  if (v.help) {
    process.stdout.write(REPLAY_USAGE + '\n');
    return 0;
  }
  const usage = (msg: string) => {
    process.stderr.write(`focusd replay: ${msg}\n\n${REPLAY_USAGE}\n`);
    return 64;
  };
  if (parsed.positionals.length !== 1) return usage('give exactly one INPUT (folder or manifest)');
  const num = (name: string, s: string, min: number): number | null => {
    const x = Number(s);
    return Number.isFinite(x) && x >= min ? x : null;
  };
  const numbers: Record<string, number> = {};
  for (const [name, min] of [['rate', 0], ['in-flight', 1], ['timeout-ms', 1], ['cols', 0], ['pixel-size-um', 1e-9], ['z-um', -Infinity], ['limit', 0]] as const) {
    const x = num(name, String(v[name]), min);
    if (x === null) return usage(`--${name} must be a number${min > -Infinity ? ` >= ${min}` : ''}, got "${v[name]}"`);
    numbers[name] = x;
  }
  if (v.raw !== undefined && v.raw !== 'rgb24' && v.raw !== 'bgr24') return usage(`--raw must be rgb24 or bgr24, got "${v.raw}"`);

  let endpoint = v.endpoint;
  let pattern = v.pattern as SenderPattern | undefined;
  if (pattern !== undefined && !['push', 'req', 'dealer'].includes(pattern)) return usage(`--pattern must be push, req or dealer, got "${pattern}"`);
  if (!endpoint || !pattern) {
    // the daemon's own configuration is the one place its endpoint and pattern are defined
    try {
      const { loadConfig } = await import('../config/load.js');
      const cfg = loadConfig({ file: v.config ?? null, overrides: { 'scoring.scorer': 'classical' } });
      endpoint ??= cfg.ingest.endpoint;
      pattern ??= cfg.ingest.pattern === 'router' ? 'req' : 'push';
    } catch (err) {
      return usage(`cannot read the daemon configuration for the endpoint (${(err as Error).message}); pass --endpoint and --pattern`);
    }
  }

  const json = v.json;
  const quiet = v.quiet;
  const out = (s: string) => process.stdout.write(s + '\n');
  const ac = new AbortController();
  const onSig = () => ac.abort();
  process.once('SIGINT', onSig);
  let summary: ReplaySummary;
  try {
    summary = await replay({
      endpoint: endpoint!,
      pattern: pattern!,
      input: parsed.positionals[0]!,
      rate: numbers.rate!,
      raw: (v.raw as 'rgb24' | 'bgr24' | undefined) ?? null,
      scanner: v.scanner!,
      slide: v.slide!,
      scan: v.scan ?? `scan-${new Date().toISOString().replace(/[:.]/g, '-')}`,
      cols: Math.trunc(numbers.cols!),
      pixelSizeUm: numbers['pixel-size-um']!,
      objective: v.objective!,
      zUm: numbers['z-um']!,
      inFlight: Math.trunc(numbers['in-flight']!),
      timeoutMs: Math.trunc(numbers['timeout-ms']!),
      limit: Math.trunc(numbers.limit!),
      signal: ac.signal,
      onResult: quiet ? undefined : (r) => out(json ? JSON.stringify({ type: 'tile', ...r, header: undefined, tile: r.header.tile }) : describe(r)),
    });
  } catch (err) {
    process.stderr.write(`focusd replay: ${(err as Error).message}\n`);
    return 1;
  } finally {
    process.off('SIGINT', onSig);
  }
  if (json) out(JSON.stringify({ type: 'summary', ...summary }));
  else {
    const replies = Object.entries(summary.replies).map(([k, n]) => `${k} ${n}`).join(', ') || (summary.pattern === 'push' ? 'none (push)' : 'none');
    out(`sent ${summary.sent} tiles to ${summary.endpoint} (${summary.pattern}) in ${summary.elapsed_s} s, ${summary.tiles_per_s} tiles/s`);
    out(`replies: ${replies}; errors: ${summary.errors}`);
  }
  const failed = summary.errors > 0 || Object.keys(summary.replies).some((k) => !['in_focus', 'out_of_focus', 'no_tissue'].includes(k));
  return failed ? 1 : 0;
}

function describe(r: ReplayResult): string {
  const where = `seq ${r.seq} ${basename(r.file)}`;
  if (r.error) return `${where}: ERROR ${r.error}`;
  if (!r.reply) return `${where}: sent`;
  if (!r.reply.ok) return `${where}: rejected ${r.reply.reason}: ${r.reply.detail} (${r.rtt_ms} ms)`;
  const d = r.reply.score.defocus_um;
  return `${where}: ${r.reply.verdict}${d === null ? '' : ` defocus ${d >= 0 ? '+' : ''}${d.toFixed(2)} µm`} (${r.rtt_ms} ms)`;
}
