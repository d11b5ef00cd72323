// ZeroMQ ingest edge (wire protocol v1, docs/protocol.md): binds PULL or ROUTER, validates each message cheaply
// (protocol/header.ts) and hands tiles to the TileSink; in router mode every message gets exactly one JSON reply.
import * as zmq from 'zeromq';
import type { Component } from '../core/lifecycle.js';
import type { Context } from '../core/context.js';
import { tileMeta } from '../core/logger.js';
import { LogThrottle } from '../core/log-throttle.js';
import type { Rejection, TileReply, TileSink } from '../core/types.js';
import { parseMessage } from '../protocol/header.js';
import { safeStringify } from '../core/safe-json.js';

/**
 * libzmq's ZMQ_MAXMSGSIZE (per frame) drops the sender's connection without telling anyone, so it is only the hard
 * memory guard: set to this multiple of ingest.maxMessageBytes. Messages between the two limits are received and
 * rejected as message_too_large (counted, reported, answered); only a frame beyond the hard guard is dropped silently
 * by libzmq (the disconnect is logged).
 */
export const HARD_LIMIT_FACTOR = 2;

/** How long close() may keep flushing queued replies to the network (ZMQ_LINGER). */
const REPLY_LINGER_MS = 1000;

/** Connection events (handshake failures, disconnects) are counted always and logged at most once per this interval. */
export const CONNECTION_LOG_INTERVAL_MS = 60_000;

/** Upper bound on waiting for libzmq to close the listening socket in stop(). */
const LISTENER_CLOSE_WAIT_MS = 1000;

/**
 * Timeout of each receive (ZMQ_RCVTIMEO). zeromq.js runs unbind() on a libuv worker thread, while a pending receive
 * is served on the main thread (its poll callback reads the socket's command mailbox); a libzmq socket is not thread
 * safe, and the two together abort the process (pipe.cpp:355 and neighbours). A pending receive can only be cancelled
 * by close(), so the loop re-arms it at this interval and stop() waits for the loop to end before it unbinds.
 */
const RECEIVE_POLL_MS = 50;

/** Longest stop() spends taking messages that are already queued off the socket (each is answered shutting_down). */
const STOP_DRAIN_MS = 500;

type IngestSocket = zmq.Pull | zmq.Router;

/** ZAP (ZeroMQ RFC 27) domain of the ingest socket; the handler answers only for it. */
const ZAP_DOMAIN = 'focusd-ingest';
/** How long the ZAP handler outlives the ingest socket at stop (see stop()). */
const ZAP_CLOSE_GRACE_MS = 200;

const Z85 = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#';

/** Z85 text of binary data whose length is a multiple of 4 (a 32-byte CURVE key → 40 characters; ZeroMQ RFC 32). */
export function z85Encode(b: Uint8Array): string {
  let out = '';
  for (let i = 0; i < b.length; i += 4) {
    let v = ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;
    let chunk = '';
    for (let j = 0; j < 5; j++) {
      chunk = Z85[v % 85]! + chunk;
      v = Math.floor(v / 85);
    }
    out += chunk;
  }
  return out;
}

export class ZmqIngest implements Component {
  readonly name = 'zmq-ingest';
  private socket: IngestSocket | null = null;
  /** the endpoint bound, read once after bind: the socket is not queried while stop() unbinds it. */
  private endpoint: string | null = null;
  private loop: Promise<void> | null = null;
  private stopping = false;
  private stopSignal: AbortController | null = null;
  /** replies go out one at a time: a zeromq v6 socket refuses a send while another is pending (EBUSY). */
  private sendChain: Promise<void> = Promise.resolve();
  /** submitted tiles whose reply (router) is not sent yet. */
  private outstanding = 0;
  /** set by stop() while it waits for the listener to be closed. */
  private listenerClosed: (() => void) | null = null;
  /** CURVE: the ZAP handler that admits listed client keys, in a context of this ingest's own. */
  private zap: zmq.Reply | null = null;
  private zapLoop: Promise<void> | null = null;

  constructor(private readonly ctx: Context, private readonly sink: TileSink) {}

  /** Endpoint actually bound (a tcp port 0 / wildcard resolved), or null before start. */
  get boundEndpoint(): string | null {
    return this.socket && !this.socket.closed ? this.endpoint : null;
  }

  async start(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const cfg = this.ctx.config.ingest;
    const router = cfg.pattern === 'router';
    const curve = this.ctx.config.resolved.ingestCurve;
    let security = {};
    if (curve) {
      // libzmq asks the ZAP handler of the socket's context about every CURVE client; without one it admits any key.
      // A context of our own keeps the handler's fixed inproc name free for another ingest in the same process.
      const context = new zmq.Context();
      this.zap = new zmq.Reply({ context, linger: 0 });
      await this.zap.bind('inproc://zeromq.zap.01');
      this.zapLoop = this.serveZap(this.zap, new Set(curve.clientKeys));
      security = { context, curveServer: true, curveSecretKey: curve.secretKey, zapDomain: ZAP_DOMAIN };
    }
    const common = {
      receiveHighWaterMark: cfg.highWaterMark,
      maxMessageSize: cfg.maxMessageBytes * HARD_LIMIT_FACTOR,
      linger: router ? REPLY_LINGER_MS : 0,
      receiveTimeout: RECEIVE_POLL_MS,
      ...security,
    };
    // mandatory + sendTimeout 0: a reply to a vanished peer (EHOSTUNREACH) or to one that does not read its replies
    // (EAGAIN at its HWM) fails at once and is logged, instead of vanishing silently or stalling other peers' replies
    const sock: IngestSocket = router ? new zmq.Router({ ...common, mandatory: true, sendTimeout: 0 }) : new zmq.Pull(common);
    this.socket = sock;
    this.endpoint = null;
    this.stopping = false;
    this.stopSignal = new AbortController();
    this.watchConnections(sock);
    try {
      await sock.bind(cfg.endpoint);
    } catch (err) {
      throw new Error(`cannot bind ingest.endpoint ${cfg.endpoint}: ${(err as Error).message}`);
    }
    this.endpoint = sock.lastEndpoint;
    signal.throwIfAborted();
    this.ctx.logger.info(`ingest bound ${this.boundEndpoint} (${cfg.pattern})`, {
      endpoint: this.boundEndpoint,
      pattern: cfg.pattern,
      curve: curve ? `${curve.clientKeys.length} client keys` : 'off',
      highWaterMark: cfg.highWaterMark,
      maxMessageBytes: cfg.maxMessageBytes,
    });
    this.loop = this.receiveLoop(sock, router);
  }

  /**
   * Stops reading and closes the socket. Messages already in the socket's receive queue are taken out first and
   * rejected as shutting_down (counted, and answered in router mode) rather than dropped unseen; replies already
   * produced are flushed for up to REPLY_LINGER_MS. Safe after a failed or partial start, and idempotent.
   */
  async stop(): Promise<void> {
    const sock = this.socket;
    if (!sock) return;
    this.stopping = true;
    this.stopSignal?.abort();
    if (!sock.closed) {
      // no receive may be pending while unbind() runs on its worker thread (see RECEIVE_POLL_MS): the loop ends at
      // its next message or receive timeout, then what libzmq already holds is taken here, with nothing pending
      await this.loop;
      this.loop = null;
      await this.drainQueued(sock);
      await this.sendChain;
      if (this.outstanding > 0) {
        this.ctx.logger.warn(`ingest closing with ${this.outstanding} tiles unanswered; their senders will time out`);
      }
      // unbind first and wait for it: close() alone releases the port asynchronously, and a restart in the same
      // process (tests, the demo) would find it still in use
      // (zmq_unbind only asks the I/O thread to close the listener; its 'close' event says it has)
      const endpoint = sock.lastEndpoint;
      if (endpoint) {
        let timer: NodeJS.Timeout | undefined;
        const released = new Promise<void>((r) => {
          this.listenerClosed = r;
          timer = setTimeout(r, LISTENER_CLOSE_WAIT_MS);
        });
        try {
          await sock.unbind(endpoint);
          await released;
        } catch (err) {
          this.ctx.logger.warn(`ingest unbind ${endpoint} failed: ${(err as Error).message}`);
        } finally {
          clearTimeout(timer);
          this.listenerClosed = null;
        }
        // messages that came in while the loop ended and the listener closed: counted, answered if the sender is still there
        await this.drainQueued(sock);
        await this.sendChain;
      }
      sock.close();
    }
    // after a failed start the loop may never have run; else it ended above (close() would also end a pending receive)
    await this.loop;
    this.loop = null;
    if (this.zap) {
      // close() of the ingest socket finishes in libzmq's I/O thread; its sessions may still be mid-handshake with the
      // ZAP handler, and closing the handler under them can trip a libzmq assertion (pipe termination). Give them a moment.
      await new Promise((r) => setTimeout(r, ZAP_CLOSE_GRACE_MS));
      this.zap.close();
    }
    await this.zapLoop;
    this.zap = null;
    this.zapLoop = null;
  }

  /**
   * ZAP handler (RFC 27): admits a CURVE client whose public key is listed, refuses every other (libzmq then fails
   * that peer's handshake: 'handshake:error:auth', counted and logged by watchConnections).
   */
  private async serveZap(sock: zmq.Reply, allowed: Set<string>): Promise<void> {
    for (;;) {
      let req: Buffer[];
      try {
        req = (await sock.receive()) as Buffer[];
      } catch {
        return; // closed by stop()
      }
      // [version, request id, domain, address, identity, mechanism, credentials...]
      const [version, requestId, domain, , , mechanism, key] = req;
      const clientKey = key && key.length === 32 ? z85Encode(key) : '';
      const ok = version?.toString() === '1.0' && domain?.toString() === ZAP_DOMAIN && mechanism?.toString() === 'CURVE' && allowed.has(clientKey);
      try {
        await sock.send(['1.0', requestId ?? '', ok ? '200' : '400', ok ? 'OK' : 'client key not allowed', ok ? clientKey : '', '']);
      } catch {
        return;
      }
    }
  }

  /** Takes what the socket already holds (no receive is left pending) and answers each as shutting_down. */
  private async drainQueued(sock: IngestSocket): Promise<void> {
    const router = this.ctx.config.ingest.pattern === 'router';
    const t0 = performance.now();
    while (!sock.closed && this.readable(sock) && performance.now() - t0 < STOP_DRAIN_MS) {
      let frames: Buffer[];
      try {
        frames = (await sock.receive()) as Buffer[];
      } catch (err) {
        // the socket has nothing more to give while stopping; what it held is already counted
        this.ctx.logger.warn(`ingest: receive while stopping failed: ${(err as Error).message}`, { code: (err as { code?: string }).code });
        return;
      }
      this.handleSafely(frames, performance.now(), router);
    }
  }

  private readable(sock: IngestSocket): boolean {
    try {
      return sock.readable;
    } catch {
      return false;
    }
  }

  private async receiveLoop(sock: IngestSocket, router: boolean): Promise<void> {
    const { logger } = this.ctx;
    for (;;) {
      // back-pressure: do not take the next message off the socket until the pipeline has room; meanwhile libzmq's
      // queue fills to the HWM, then TCP flow control stops the sender (its send() blocks)
      if (!this.stopping) await this.waitReady();
      let frames: Buffer[] | null = null;
      while (!frames) {
        // stop() takes over (see RECEIVE_POLL_MS); what is still queued it takes off the socket itself
        if (sock.closed || this.stopping) return;
        try {
          frames = (await sock.receive()) as Buffer[];
        } catch (err) {
          // a receive pending when close() is called rejects (EAGAIN); a receive after close rejects with EBADF
          if (sock.closed) return;
          const code = (err as { code?: string }).code;
          // EAGAIN: RECEIVE_POLL_MS without a message; receive again (ready() was already answered for this one)
          if (code === 'EAGAIN') continue;
          logger.error(`ingest receive failed: ${(err as Error).message}`, { code });
          await new Promise((r) => setTimeout(r, 10));
        }
      }
      // a message that arrived while stop() was waiting for this loop is answered shutting_down by handle()
      this.handleSafely(frames, performance.now(), router);
    }
  }

  private handleSafely(frames: Buffer[], receivedAt: number, router: boolean): void {
    try {
      this.handle(frames, receivedAt, router);
    } catch (err) {
      // a bug in handling one message must not take the ingest down
      this.ctx.logger.error(`ingest failed to handle a message: ${(err as Error).stack ?? String(err)}`);
    }
  }

  private async waitReady(): Promise<void> {
    const abort = this.stopSignal!.signal;
    if (abort.aborted) return;
    let onAbort: (() => void) | undefined;
    try {
      await Promise.race([this.sink.ready(), new Promise<void>((r) => abort.addEventListener('abort', (onAbort = () => r()), { once: true }))]);
    } catch (err) {
      this.ctx.logger.error(`pipeline ready() failed: ${(err as Error).message}`);
    } finally {
      if (onAbort) abort.removeEventListener('abort', onAbort);
    }
  }

  private handle(frames: Buffer[], receivedAt: number, router: boolean): void {
    const { logger, config } = this.ctx;
    let envelope: Buffer[] = [];
    let body = frames;
    if (router) {
      // ZeroMQ envelope: [routing id, (REQ_CORRELATE request id, proxy ids), empty delimiter, header, payload] from REQ
      // or a DEALER that mimics it; a bare DEALER sends [routing id, header, payload]. A header is never empty, so the
      // envelope ends at the first empty frame, else after the routing id; an empty last frame is a (bad) payload, not
      // a delimiter, so that message is still answered on the right envelope.
      let end = 1;
      for (let i = 1; i < frames.length - 1; i++) {
        if (frames[i]!.length === 0) {
          end = i + 1;
          break;
        }
      }
      envelope = frames.slice(0, end);
      body = frames.slice(end);
    }
    const rejected = (rejection: Rejection) => {
      logger.debug(`ingest rejected a message: ${rejection.reason}`, {
        ...tileMeta((rejection.received.header ?? {}) as Record<string, unknown>),
        reason: rejection.reason,
        frames: rejection.received.frames,
        bytes: rejection.received.bytes,
      });
      this.sink.reject(rejection);
      if (router) this.reply(envelope, { ok: false, ...rejection });
    };

    const parsed = parseMessage(body, { maxMessageBytes: config.ingest.maxMessageBytes, maxPixels: config.ingest.maxPixels }, receivedAt);
    if (!parsed.ok) {
      // an empty frame right after the routing id is read as REQ's delimiter: say so when that left one frame
      if (router && parsed.rejection.reason === 'bad_frames' && envelope.length > 1 && envelope.at(-1)!.length === 0)
        parsed.rejection.detail += ` after the envelope (an empty frame after the routing id is taken as the REQ delimiter; a header frame is never empty)`;
      return rejected(parsed.rejection);
    }
    if (this.stopping) {
      return rejected({
        reason: 'shutting_down',
        detail: 'focusd is stopping; the tile was not scored, send it again after restart',
        received: { header: parsed.tile.header, frames: body.length, bytes: body.map((f) => f.length) },
      });
    }
    const tile = parsed.tile;
    this.outstanding++;
    this.sink
      .submit(tile)
      .then(
        (reply) => {
          if (router) this.reply(envelope, reply);
        },
        (err: unknown) => {
          // the TileSink contract says submit never rejects; if it does, say so loudly and still answer
          logger.error(`pipeline submit failed: ${(err as Error).stack ?? String(err)}`, tileMeta(tile.header));
          if (router) {
            const detail = `internal error: ${(err as Error).message ?? String(err)}`;
            this.reply(envelope, { ok: false, reason: 'scoring_failed', detail, received: { header: tile.header, frames: 2, bytes: body.map((f) => f.length) } });
          }
        },
      )
      .finally(() => this.outstanding--);
  }

  private reply(envelope: Buffer[], reply: TileReply): void {
    const sock = this.socket;
    if (!sock) return;
    const header = reply.ok ? reply.header : (reply.received.header as Record<string, unknown> | undefined);
    // the received header is echoed: if it cannot be serialised, answer without it rather than not at all
    const msg = [
      ...envelope,
      safeStringify(reply, (err) =>
        reply.ok
          ? { ok: false, reason: 'scoring_failed', detail: `reply could not be serialised: ${err.message}`, received: { frames: 2, bytes: [] } }
          : { ...reply, received: { frames: reply.received.frames, bytes: reply.received.bytes }, detail: `${reply.detail} (received header not echoed: ${err.message})` },
      ),
    ];
    this.sendChain = this.sendChain.then(async () => {
      try {
        if (sock.closed) throw Object.assign(new Error('socket closed'), { code: 'EBADF' });
        await (sock as zmq.Router).send(msg);
      } catch (err) {
        const code = (err as { code?: string }).code;
        const why =
          code === 'EHOSTUNREACH'
            ? 'the sender disconnected'
            : code === 'EAGAIN'
              ? 'the sender is not reading its replies (its receive queue is full)'
              : code === 'EBADF'
                ? 'the ingest socket is closed'
                : (err as Error).message;
        this.ctx.logger.warn(`reply not delivered: ${why}`, {
          ...tileMeta(header ?? {}),
          code,
          reply: reply.ok ? reply.verdict : reply.reason,
        });
      }
    });
  }

  private watchConnections(sock: IngestSocket): void {
    const { logger, metrics } = this.ctx;
    // a port scanner or a flood of junk connections must not write a line each: count every one, log once a minute
    const throttle = new LogThrottle(CONNECTION_LOG_INTERVAL_MS);
    const repeats = (n: number) => (n ? ` (${n} more since the last line)` : '');
    // a peer that exceeds the hard frame limit (ZMQ_MAXMSGSIZE) is disconnected by libzmq with no other trace
    sock.events.on('disconnect', (e) => {
      metrics.ingestDisconnects++;
      const t = throttle.take('disconnect');
      if (t)
        logger.info(
          `ingest peer disconnected (${e.address}); if unexpected, a frame may have exceeded ${this.ctx.config.ingest.maxMessageBytes * HARD_LIMIT_FACTOR} bytes${repeats(t.suppressed)}`,
          { disconnects_total: metrics.ingestDisconnects },
        );
    });
    const handshakeFailed = (what: string) => (e: { address: string; error: Error }) => {
      metrics.ingestHandshakeFailures++;
      const t = throttle.take('handshake');
      if (t)
        logger.warn(`ingest peer ${what} (${e.address}): ${e.error.message}${repeats(t.suppressed)}`, {
          handshake_failures_total: metrics.ingestHandshakeFailures,
        });
    };
    sock.events.on('accept', (e) => logger.debug(`ingest peer connected (${e.address})`));
    sock.events.on('close', (e) => {
      logger.debug(`ingest listener closed (${e.address})`);
      this.listenerClosed?.();
    });
    sock.events.on('handshake:error:protocol', handshakeFailed('protocol error'));
    sock.events.on('handshake:error:other', handshakeFailed('handshake failed'));
    sock.events.on('handshake:error:auth', handshakeFailed('not authenticated'));
  }
}
