/**
 * What the virtual scanner hears back from the daemon: the verdict of each acquisition (the `tile` message) and
 * the commands (`action`), both from MQTT (docs/mqtt.md). The scanner acquires one tile at a time and, before it
 * moves on, waits until the daemon has published its verdict on the tile and a short while for the commands that
 * verdict triggers (the controller decides in the same tick and the outbox publishes right after); a command that
 * comes later still is obeyed at the next step and counted as late.
 */
import mqtt, { type MqttClient } from 'mqtt';
import type { Action } from '../core/types.js';

/** The parts of a `tile` message the scanner uses. */
export interface TileVerdict {
  scanner: string;
  slide: string;
  scan: string;
  seq: number;
  attempt: number;
  verdict: 'in_focus' | 'out_of_focus' | 'no_tissue';
  defocus_um: number | null;
  sign_confidence: number | null;
}

/** An action as received: the fields of docs/schemas/action.schema.json the scanner obeys. */
export type ReceivedAction = Action & { target_z_um?: number; probe?: boolean; plane?: ZPlane };

/** A tilted z_offset (docs/mqtt.md): the shift at (x, y) is z_offset_um + (dz_dx·(x − x0) + dz_dy·(y − y0)) / 1000. */
export interface ZPlane {
  origin_um: { x: number; y: number };
  dz_dx_um_per_mm: number;
  dz_dy_um_per_mm: number;
}

export interface FeedTimings {
  /** longest wait for the verdict of one acquisition (ms). */
  tileTimeoutMs: number;
  /** after an out-of-focus verdict: how long to wait for the commands it triggers (ms). */
  actionWaitMs: number;
  /** after any other verdict: how long to wait for commands anyway (ms). */
  quietWaitMs: number;
  /** after the first command of an acquisition: how long to wait for more of the same decision (ms). */
  siblingWaitMs: number;
}

export const DEFAULT_FEED_TIMINGS: FeedTimings = { tileTimeoutMs: 60_000, actionWaitMs: 250, quietWaitMs: 15, siblingWaitMs: 20 };

export interface AcquisitionKey {
  slide: string;
  scan: string;
  seq: number;
  attempt: number;
}

const keyOf = (k: AcquisitionKey) => `${k.slide}\u0000${k.scan}\u0000${k.seq}\u0000${k.attempt}`;

/** Subscribes to `<base>/tile` and `<base>/action` of one scanner id; hands the scanner verdicts and commands. */
export class MqttFeed {
  private client: MqttClient | null = null;
  private readonly verdicts = new Map<string, TileVerdict>();
  private readonly actionsFor = new Map<string, number>();
  private queue: ReceivedAction[] = [];
  private readonly seenIds = new Set<string>();
  /** acquisitions whose settle() has returned: a command for one of them arrives late. */
  private readonly settled = new Set<string>();
  private readonly lateIds = new Set<string>();
  private waiters: Array<() => void> = [];
  /** messages that were not JSON or not for us: counted, never silently dropped. */
  unparsable = 0;
  duplicates = 0;

  constructor(
    private readonly opts: { url: string; baseTopic: string; scanner: string; clientId?: string },
    private readonly timings: FeedTimings = DEFAULT_FEED_TIMINGS,
  ) {}

  async start(): Promise<void> {
    const { url, baseTopic } = this.opts;
    // MQTT 3.1.1: the embedded broker (aedes) has no MQTT 5
    const client = await mqtt.connectAsync(url, {
      clientId: this.opts.clientId ?? `focusd-sim-${process.pid}-${Math.random().toString(16).slice(2, 10)}`,
      protocolVersion: 4,
      reconnectPeriod: 500,
    });
    this.client = client;
    client.on('message', (topic, payload) => this.onMessage(topic, payload));
    await client.subscribeAsync([`${baseTopic}/tile`, `${baseTopic}/action`], { qos: 1 });
  }

  async stop(): Promise<void> {
    const c = this.client;
    this.client = null;
    if (c) await c.endAsync();
  }

  private onMessage(topic: string, payload: Buffer): void {
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
    } catch {
      this.unparsable++;
      return;
    }
    if (m.scanner !== this.opts.scanner) return;
    const kind = topic.slice(this.opts.baseTopic.length + 1);
    if (kind === 'tile') {
      const t = m as unknown as TileVerdict;
      this.verdicts.set(keyOf(t), t);
    } else if (kind === 'action') {
      const a = m as unknown as ReceivedAction;
      // QoS 1 is at least once: the same command may arrive twice, always with the same id
      if (this.seenIds.has(a.id)) {
        this.duplicates++;
        return;
      }
      this.seenIds.add(a.id);
      this.queue.push(a);
      const k = keyOf({ slide: a.slide, scan: a.scan, seq: a.tile.seq, attempt: a.tile.attempt });
      if (this.settled.has(k)) this.lateIds.add(a.id);
      this.actionsFor.set(k, (this.actionsFor.get(k) ?? 0) + 1);
    }
    for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves on the next message or after ms. */
  private next(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, Math.max(0, ms));
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.waiters.push(done);
    });
  }

  /**
   * Waits for the daemon's verdict on an acquisition (null after tileTimeoutMs) and then for the commands it
   * triggers, as described above.
   */
  async settle(k: AcquisitionKey): Promise<TileVerdict | null> {
    const key = keyOf(k);
    const t0 = performance.now();
    let v = this.verdicts.get(key);
    while (!v) {
      const left = this.timings.tileTimeoutMs - (performance.now() - t0);
      if (left <= 0) return null;
      await this.next(left);
      v = this.verdicts.get(key);
    }
    this.verdicts.delete(key);
    try {
      return await this.awaitCommands(key, v);
    } finally {
      this.settled.add(key);
    }
  }

  private async awaitCommands(key: string, v: TileVerdict): Promise<TileVerdict> {
    const wait = v.verdict === 'out_of_focus' ? this.timings.actionWaitMs : this.timings.quietWaitMs;
    const t1 = performance.now();
    while (!this.actionsFor.has(key)) {
      const left = wait - (performance.now() - t1);
      if (left <= 0) return v;
      await this.next(left);
    }
    // the first command is in: the rest of the same decision follows within milliseconds
    const t2 = performance.now();
    for (let left = this.timings.siblingWaitMs; left > 0; left = this.timings.siblingWaitMs - (performance.now() - t2)) await this.next(left);
    this.actionsFor.delete(key);
    return v;
  }

  /** Whether a command arrived after the scanner had stopped waiting for the commands of its acquisition. */
  isLate(id: string): boolean {
    return this.lateIds.has(id);
  }

  /** Commands received and not yet taken, in arrival order. */
  take(): ReceivedAction[] {
    const q = this.queue;
    this.queue = [];
    return q;
  }

  /** Waits up to ms for any further command (end of a slide). */
  async drain(ms: number): Promise<ReceivedAction[]> {
    const t0 = performance.now();
    for (let left = ms; left > 0 && this.queue.length === 0; left = ms - (performance.now() - t0)) await this.next(left);
    return this.take();
  }
}
