import type { Store } from '../adapters/store.js';
import type { Context } from '../core/context.js';
import type { Component } from '../core/lifecycle.js';
import type { Action, ActionPublisher } from '../core/types.js';


/**
 * Durable action outbox. The SQLite table is the source of truth, not MQTT.js's in-memory queue:
 *  1. 'action' → the row is written (INSERT OR IGNORE on the action id) before anything is published;
 *  2. actions are published only while the client is connected, in decision order, one flush at a time;
 *  3. the row is deleted only in the QoS 1 publish callback, i.e. after the broker's PUBACK;
 *  4. on every (re)connect and at start the pending rows are flushed again, so a broker outage or a daemon
 *     crash loses nothing; a re-sent command keeps its id (at least once; subscribers deduplicate on id);
 *  5. a row past its expires_at (controller.actionTtlS) is not sent: it is reported on the error topic
 *     (reason action_expired) and 'action:expired' is emitted; the row goes only after that report is acknowledged.
 * A publish in flight when the connection drops stays in MQTT.js's store and is resent by it on reconnect; the
 * in-flight set keeps the outbox from sending the same row a second time meanwhile.
 */
export interface OutboxDeps {
  store: Store;
  publisher: ActionPublisher;
}

/** Rows read per flush round; the round repeats while rows keep coming. */
const BATCH = 200;

export class Outbox implements Component {
  readonly name = 'outbox';
  private readonly offs: (() => void)[] = [];
  private readonly inFlight = new Set<string>();
  private flushing: Promise<void> | null = null;
  private again = false;
  private stopped = true;

  constructor(private readonly ctx: Context, private readonly deps: OutboxDeps) {}

  get pending(): number {
    return this.deps.store.outboxCount();
  }

  async start(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    this.stopped = false;
    this.offs.push(this.ctx.events.on('action', (a) => this.enqueue(a)));
    this.offs.push(this.deps.publisher.onConnect(() => this.kick()));
    const n = this.deps.store.outboxCount();
    if (n > 0) this.ctx.logger.info('outbox: actions pending from before the restart', { pending: n });
    this.kick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const off of this.offs.splice(0)) off();
    // no waiting for a running flush: its publishes may wait for a broker that is gone. Unacknowledged rows stay
    // in the table for the next start; acknowledgements arriving while the MQTT client ends still delete theirs.
  }

  /** Writes the action durably, then tries to send it. Never throws (it runs inside an event listener). */
  enqueue(a: Action): void {
    try {
      const fresh = this.deps.store.outboxPut(a);
      if (!fresh) this.ctx.logger.debug('outbox: duplicate action id ignored', { id: a.id });
    } catch (err) {
      // the action cannot be made durable: still try to publish it, and say so loudly
      this.ctx.logger.error('outbox: cannot store action, publishing without durability', { id: a.id, err: (err as Error).message });
      if (this.deps.publisher.connected) {
        this.deps.publisher.publishAction(a).catch((e) => this.ctx.logger.error('outbox: publish failed', { id: a.id, err: (e as Error).message }));
      }
      return;
    }
    this.kick();
  }

  /** Starts a flush, or asks the running one to go round again. Resolves when the outbox is idle. */
  kick(): Promise<void> {
    if (this.flushing) {
      this.again = true;
      return this.flushing;
    }
    this.flushing = (async () => {
      try {
        do {
          this.again = false;
          await this.flushOnce();
        } while (this.again && !this.stopped);
      } catch (err) {
        this.ctx.logger.error('outbox: flush failed', { err: (err as Error).message });
      } finally {
        this.flushing = null;
      }
    })();
    return this.flushing;
  }

  private async flushOnce(): Promise<void> {
    for (;;) {
      if (this.stopped || !this.deps.publisher.connected) return;
      const rows = this.deps.store.outboxPending(BATCH).filter((a) => !this.inFlight.has(a.id));
      if (rows.length === 0) return;
      const now = Date.now();
      const sends: Promise<void>[] = [];
      for (const a of rows) {
        if (this.stopped || !this.deps.publisher.connected) break;
        this.inFlight.add(a.id);
        const expired = Date.parse(a.expires_at) <= now;
        if (!expired) this.deps.store.outboxAttempt(a.id);
        // publishes are issued in order; MQTT.js keeps that order on the wire
        const p = (expired ? this.deps.publisher.publishExpired(a) : this.deps.publisher.publishAction(a)).then(
          () => {
            this.deps.store.outboxDone(a.id, expired ? 'expired' : 'sent');
            if (expired) {
              this.ctx.logger.warn('outbox: action expired before it could be sent; reported on the error topic', {
                id: a.id, type: a.type, slide: a.slide, tile: a.tile.index, expires_at: a.expires_at,
              });
              this.ctx.events.emit('action:expired', a);
            }
          },
          (err) => {
            this.ctx.logger.warn('outbox: publish not acknowledged, kept for the next connection', { id: a.id, err: (err as Error).message });
          },
        ).finally(() => this.inFlight.delete(a.id));
        sends.push(p);
      }
      await Promise.all(sends);
      if (rows.length < BATCH) return;
    }
  }
}
