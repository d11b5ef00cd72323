import type { LoopState, RejectReason, Verdict } from './types.js';

/** Fixed-size ring of recent latencies; percentiles over the window, no unbounded growth. */
export class LatencyWindow {
  private readonly buf: Float64Array;
  private n = 0;
  private i = 0;
  constructor(size = 2048) {
    this.buf = new Float64Array(size);
  }
  add(ms: number): void {
    this.buf[this.i] = ms;
    this.i = (this.i + 1) % this.buf.length;
    if (this.n < this.buf.length) this.n++;
  }
  percentiles(ps: number[]): Record<string, number | null> {
    const out: Record<string, number | null> = {};
    if (this.n === 0) {
      for (const p of ps) out[`p${p}`] = null;
      return out;
    }
    const sorted = Array.from(this.buf.subarray(0, this.n)).sort((a, b) => a - b);
    for (const p of ps) {
      const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
      out[`p${p}`] = Math.round(sorted[idx]! * 100) / 100;
    }
    return out;
  }
}

/** Counters of the daemon. Owned by the daemon context (no module-level singleton). */
export class Metrics {
  readonly startedAt = Date.now();
  received = 0;
  scored = 0;
  skipped = 0;
  published = 0;
  publishFailures = 0;
  /** rejections counted but not published one by one on `error` (mqtt.maxErrorBacklog; see adapters/mqtt.ts). */
  errorMessagesSuppressed = 0;
  actions = 0;
  /** control requests received on <base>/control/request, whatever became of them. */
  controlRequests = 0;
  /** control requests refused (each answered with ok: false), by reason. */
  readonly controlRejected = new Map<string, number>();
  /** SQLite writes (tile history, outbox, action status, prune) that failed. */
  storeWriteFailures = 0;
  /** ZeroMQ connections refused during the handshake (not ZMTP, bad greeting, CURVE refused). */
  ingestHandshakeFailures = 0;
  /**
   * ZeroMQ peer connections closed: a sender closing, or libzmq dropping a connection whose frame exceeded the hard
   * frame limit (ZMQ_MAXMSGSIZE), which it does not report any other way.
   */
  ingestDisconnects = 0;
  readonly rejected = new Map<RejectReason, number>();
  readonly verdicts: Record<Verdict, number> = { in_focus: 0, out_of_focus: 0, no_tissue: 0 };
  readonly latency = new LatencyWindow();
  queueDepth = 0;
  inFlight = 0;
  /** the feedback loop's learning and stop-loss (kept up to date by daemon/controller.ts). */
  loop: LoopState = { sign_learning: [], wrong_way_moves: 0, z_offsets_reverted: 0, audits: { sent: 0, sharper: 0, no_sharper: 0 }, diverging_slides: [] };
  private rateMark = { at: Date.now(), scored: 0 };

  reject(reason: RejectReason): void {
    this.rejected.set(reason, (this.rejected.get(reason) ?? 0) + 1);
  }

  controlReject(reason: string): void {
    this.controlRejected.set(reason, (this.controlRejected.get(reason) ?? 0) + 1);
  }

  get rejectedTotal(): number {
    let t = 0;
    for (const v of this.rejected.values()) t += v;
    return t;
  }

  /** tiles/s scored since the previous call. */
  takeRate(): number {
    const now = Date.now();
    const dt = (now - this.rateMark.at) / 1000;
    const rate = dt > 0 ? (this.scored - this.rateMark.scored) / dt : 0;
    this.rateMark = { at: now, scored: this.scored };
    return Math.round(rate * 100) / 100;
  }

  snapshot(): Record<string, unknown> {
    return {
      uptime_s: Math.round((Date.now() - this.startedAt) / 1000),
      received: this.received,
      scored: this.scored,
      skipped: this.skipped,
      rejected: this.rejectedTotal,
      rejected_by_reason: Object.fromEntries(this.rejected),
      verdicts: { ...this.verdicts },
      actions: this.actions,
      published: this.published,
      publish_failures: this.publishFailures,
      error_messages_suppressed: this.errorMessagesSuppressed,
      control_requests: this.controlRequests,
      control_rejected_by_reason: Object.fromEntries(this.controlRejected),
      store_write_failures: this.storeWriteFailures,
      ingest_handshake_failures: this.ingestHandshakeFailures,
      ingest_disconnects: this.ingestDisconnects,
      queue_depth: this.queueDepth,
      in_flight: this.inFlight,
      latency_ms: this.latency.percentiles([50, 95, 99]),
      loop: structuredClone(this.loop),
    };
  }
}
