import type { Component } from '../core/lifecycle.js';
import type { Context } from '../core/context.js';
import { LogThrottle } from '../core/log-throttle.js';
import { tileMeta } from '../core/logger.js';
import type { Scorer } from '../models/scorer.js';
import { GUARD_MAX_SHARE } from '../models/calibration.js';
import { pixelSizeProblem } from '../protocol/header.js';
import type {
  DecodedTile,
  IncomingTile,
  Rejection,
  RejectReason,
  ScoreResult,
  TileOutcome,
  TileReply,
  TileSink,
  Verdict,
} from '../core/types.js';

/** One log line per rejection reason per this interval (the rest are counted and published, docs/protocol.md). */
export const REJECT_LOG_INTERVAL_MS = 10_000;

export type DecodeFn = (tile: IncomingTile, opts: { maxPixels: number }) => Promise<DecodedTile>;

/** An error that already knows which rejection reason it is (imaging/decode.ts throws these). */
interface CodedError extends Error {
  reason?: RejectReason;
}

export interface PipelineDeps {
  scorer: Scorer;
  decode: DecodeFn;
}

/**
 * The verdict rule: the one place tolerance is applied. A calibrated bundle's guard band moves the decision inside
 * the tolerance (models/calibration.ts guardBandOf): its unbiased reading would pass tiles just beyond it.
 */
export function decide(score: ScoreResult, toleranceUm: number): Verdict {
  if (score.defocus_um === null) return 'no_tissue';
  // at most GUARD_MAX_SHARE of the tolerance in force (set_tolerance may lower it below the one the band was measured at)
  const guard = Math.min(score.model.calibration?.guard_um ?? 0, GUARD_MAX_SHARE * toleranceUm);
  return Math.abs(score.defocus_um) <= toleranceUm - guard ? 'in_focus' : 'out_of_focus';
}

/** Counting semaphore; waiters are served in order. */
class Slots {
  private used = 0;
  private readonly waiters: Array<() => void> = [];
  constructor(private readonly size: number) {}
  get inUse(): number {
    return this.used;
  }
  get free(): boolean {
    return this.used < this.size;
  }
  async acquire(): Promise<void> {
    if (this.used < this.size) {
      this.used++;
      return;
    }
    await new Promise<void>((r) => this.waiters.push(r));
  }
  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.used--;
  }
}

/**
 * Bounded pipeline: admit → decode (parallel, bounded) → score (pipeline.scoreConcurrency tiles at once; the engine
 * batches their patches in its worker) → decide → emit 'tile:scored' in admission order.
 */
export class Pipeline implements Component, TileSink {
  readonly name = 'pipeline';
  private admission!: Slots;
  private decodeSlots!: Slots;
  private scoreSlots!: Slots;
  /** resolves when the most recently admitted tile has been emitted: verdicts leave in admission order. */
  private emitTail: Promise<void> = Promise.resolve();
  private admitted = 0;
  /** running: admit per policy; draining: score what is handed over, ask for nothing more; stopped: refuse. */
  private phase: 'new' | 'running' | 'draining' | 'stopped' = 'new';
  private spaceWaiters: Array<() => void> = [];
  private idleWaiters: Array<() => void> = [];

  /** rejections are logged once per reason per REJECT_LOG_INTERVAL_MS (each is counted and published). */
  private readonly rejectLog = new LogThrottle(REJECT_LOG_INTERVAL_MS);

  constructor(private readonly ctx: Context, private readonly deps: PipelineDeps) {}

  async start(): Promise<void> {
    const p = this.ctx.config.pipeline;
    this.admission = new Slots(p.queueSize);
    this.decodeSlots = new Slots(p.decodeConcurrency);
    this.scoreSlots = new Slots(p.scoreConcurrency);
    this.phase = 'running';
  }

  /** Refuses further tiles (shutting_down). Call drain() first to let admitted tiles finish. */
  async stop(): Promise<void> {
    this.phase = 'stopped';
    // the ingest's receive loop waits in ready(); let it go so it can see that it is being stopped
    for (const w of this.spaceWaiters.splice(0)) w();
  }

  get depth(): number {
    return this.admitted;
  }

  ready(): Promise<void> {
    if (this.phase === 'stopped') return Promise.resolve();
    // while draining, the ingest must not take more messages off the socket: they stay queued for the next start
    if (this.phase === 'running' && (this.ctx.config.pipeline.overflow === 'skip' || this.admission.free)) return Promise.resolve();
    return new Promise((r) => this.spaceWaiters.push(r));
  }

  /** Resolves when nothing is admitted any more, or after timeoutMs; returns how many tiles were still in flight. */
  async drain(timeoutMs: number): Promise<number> {
    if (this.phase === 'running') this.phase = 'draining';
    if (this.admitted === 0) return 0;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((r) => this.idleWaiters.push(r)),
      new Promise<void>((r) => (timer = setTimeout(r, timeoutMs))),
    ]);
    clearTimeout(timer);
    return this.admitted;
  }

  reject(rejection: Rejection): void {
    const { metrics, logger, events } = this.ctx;
    if (rejection.reason === 'skipped_overload' || rejection.reason === 'paused') metrics.skipped++;
    else metrics.reject(rejection.reason);
    // counted and published one by one; logged once per reason per interval (a sender can send 10^4 bad messages a second)
    const t = this.rejectLog.take(rejection.reason);
    if (t) {
      const h = (rejection.received.header ?? {}) as Record<string, unknown>;
      logger.warn(`tile rejected: ${rejection.reason}: ${rejection.detail}${t.suppressed ? ` (${t.suppressed} more ${rejection.reason} since the last line)` : ''}`, { ...tileMeta(h), reason: rejection.reason, suppressed: t.suppressed });
    }
    events.emit('tile:rejected', rejection);
  }

  async submit(tile: IncomingTile): Promise<TileReply> {
    const { metrics, runtime } = this.ctx;
    metrics.received++;
    this.ctx.events.emit('tile:received', tile);
    const refuse = (reason: RejectReason, detail: string): TileReply => {
      const r: Rejection = { reason, detail, received: { header: tile.header, frames: 2, bytes: [tile.headerBytes ?? -1, tile.payload.length] } };
      this.reject(r);
      return { ok: false, ...r };
    };
    if (this.phase !== 'running' && this.phase !== 'draining') return refuse('shutting_down', 'focusd is stopping; the tile was not scored');
    // the one header check that needs the model: the patch grid is laid out from this ratio (see MAX_PIXEL_SIZE_FACTOR)
    const pxProblem = pixelSizeProblem(tile.header.pixel_size_um, this.deps.scorer.info.pixel_size_um);
    if (pxProblem) return refuse('invalid_header', pxProblem);
    if (runtime.paused) return refuse('paused', 'scoring is paused (control request); the tile was not scored');
    // a tile that reached us while draining was already off the socket: score it rather than lose it
    if (this.phase === 'running' && !this.admission.free && this.ctx.config.pipeline.overflow === 'skip')
      return refuse('skipped_overload', `scoring is behind: ${this.admitted} tiles queued (pipeline.queueSize), overflow=skip`);

    await this.admission.acquire();
    this.admitted++;
    metrics.queueDepth = this.admitted;
    // reserve this tile's place in the output order now, while admission is still in order
    const previous = this.emitTail;
    let emitted!: () => void;
    this.emitTail = new Promise<void>((r) => (emitted = r));
    try {
      return await this.process(tile, refuse, previous);
    } finally {
      void previous.then(emitted);
      this.admitted--;
      metrics.queueDepth = this.admitted;
      this.admission.release();
      if (this.phase === 'running') this.spaceWaiters.shift()?.();
      if (this.admitted === 0) for (const r of this.idleWaiters.splice(0)) r();
    }
  }

  private async process(tile: IncomingTile, refuse: (r: RejectReason, d: string) => TileReply, previous: Promise<void>): Promise<TileReply> {
    const { ctx } = this;
    let decoded: DecodedTile;
    await this.decodeSlots.acquire();
    try {
      decoded = await this.deps.decode(tile, { maxPixels: ctx.config.ingest.maxPixels });
    } catch (err) {
      const e = err as CodedError;
      return refuse(e.reason ?? 'decode_failed', e.message);
    } finally {
      this.decodeSlots.release();
    }
    let score: ScoreResult;
    await this.scoreSlots.acquire();
    ctx.metrics.inFlight++;
    try {
      score = await this.deps.scorer.score(decoded);
    } catch (err) {
      // a tile the scorer cannot take (smaller than one model patch) is the sender's to fix, not an internal error
      const coded = (err as CodedError).reason;
      if (coded) return refuse(coded, (err as Error).message);
      ctx.logger.error('scoring failed', { ...tileMeta(tile.header), error: (err as Error).stack ?? String(err) });
      return refuse('scoring_failed', (err as Error).message);
    } finally {
      ctx.metrics.inFlight--;
      this.scoreSlots.release();
    }
    // a later tile may finish first (scoreConcurrency > 1); the controller wants them in scan order
    await previous;
    const verdict = decide(score, ctx.runtime.toleranceUm);
    const outcome: TileOutcome = {
      header: tile.header,
      verdict,
      score,
      latency_ms: Math.round((performance.now() - tile.receivedAt) * 100) / 100,
    };
    ctx.metrics.scored++;
    ctx.metrics.verdicts[verdict]++;
    ctx.metrics.latency.add(outcome.latency_ms);
    // out-of-focus tiles at info, the rest at debug: a day of scanning is ~10^6 tiles
    ctx.logger.log(verdict === 'out_of_focus' ? 'info' : 'debug', `tile ${verdict}`, {
      ...tileMeta(tile.header),
      defocus_um: score.defocus_um === null ? null : Math.round(score.defocus_um * 100) / 100,
      tissue: Math.round(score.tissue_fraction * 1000) / 1000,
      latency_ms: outcome.latency_ms,
    });
    ctx.events.emit('tile:scored', outcome);
    return { ok: true, ...outcome };
  }
}
