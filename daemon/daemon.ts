import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { PACKAGE_ROOT, type FocusdConfig } from '../config/load.js';
import { HttpStatus } from '../adapters/http.js';
import { SdNotify } from '../adapters/sd-notify.js';
import { ZmqIngest } from '../adapters/zmq-ingest.js';
import { decodeTile } from '../imaging/decode.js';
import { createScorer } from '../models/index.js';
import type { Scorer } from '../models/scorer.js';
import { createContext, type Context } from '../core/context.js';
import { Lifecycle, type Component } from '../core/lifecycle.js';
import { createLogger, type Logger } from '../core/logger.js';
import { redactUrl } from '../core/redact.js';
import type { HealthReport } from '../core/types.js';
import { Pipeline } from './pipeline.js';
import { buildMqttSide, type MqttSide } from './wiring.js';

export interface DaemonOptions {
  logger?: Logger;
  /** process environment (NOTIFY_SOCKET, WATCHDOG_USEC); tests pass their own. */
  env?: NodeJS.ProcessEnv;
  /** the scorer to run instead of the one scoring.scorer selects (the simulator's oracle, sim/oracle.ts). */
  scorer?: (ctx: Context) => Scorer;
}

/**
 * Wires the components and owns their lifecycle. Start order: sd-notify, store, broker, mqtt, outbox,
 * controller, scorer, pipeline, ingest, http; READY only after the socket is bound and MQTT is connected.
 * Stop: drain the pipeline (ingest stops reading, admitted tiles are scored and published) within
 * shutdown.drainTimeoutMs, then stop everything in reverse order.
 */
export class Daemon {
  readonly ctx: Context;
  private lifecycle: Lifecycle | null = null;
  private pipeline: Pipeline | null = null;
  private ingest: ZmqIngest | null = null;
  private scorer: Scorer | null = null;
  private sd: SdNotify | null = null;
  private http: HttpStatus | null = null;
  private mqttSide: MqttSide | null = null;
  private state: 'new' | 'starting' | 'ready' | 'stopping' | 'stopped' = 'new';
  private stopPromise: Promise<StopReport> | null = null;

  constructor(readonly config: FocusdConfig, private readonly opts: DaemonOptions = {}) {
    const logger = opts.logger ?? createLogger({ level: config.log.level, format: config.log.format as 'auto' });
    this.ctx = createContext(config, logger);
  }

  private get scorerReady(): boolean {
    return this.state === 'ready' || (this.state === 'stopping' && this.scorer !== null);
  }

  get ready(): boolean {
    return this.state === 'ready';
  }

  /** Endpoint the ingest is bound to (useful with port 0 in tests). */
  get ingestEndpoint(): string {
    return this.ingest?.boundEndpoint ?? this.config.ingest.endpoint;
  }

  get httpPort(): number | null {
    return this.http?.port ?? null;
  }

  get mqtt(): MqttSide | null {
    return this.mqttSide;
  }

  status(): Record<string, unknown> {
    const c = this.config;
    return {
      schema: 1,
      state: this.state === 'ready' ? 'online' : this.state,
      scanner: c.scanner.id,
      pid: process.pid,
      version: DAEMON_VERSION,
      ingest: { endpoint: this.ingestEndpoint, pattern: c.ingest.pattern, overflow: c.pipeline.overflow },
      scorer: c.scoring.scorer,
      // the scorer's info exists once it has started (model loaded, engine chosen)
      engine: this.scorerReady ? this.scorer!.info.engine : null,
      model: this.scorerReady ? { name: this.scorer!.info.name, version: this.scorer!.info.version, sha256: this.scorer!.info.sha256 } : null,
      mqtt: { url: redactUrl(this.mqttSide?.mqtt.url ?? c.mqtt.url), connected: this.mqttSide?.mqtt.connected ?? false, base_topic: c.resolved.baseTopic },
      health: this.health(),
      runtime: { ...this.ctx.runtime },
      // the feedback loop: learned sign direction and its evidence, wrong-way moves, slides under the stop-loss
      loop: structuredClone(this.ctx.metrics.loop),
      metrics: this.ctx.metrics.snapshot(),
    };
  }

  /** Degraded with reasons while MQTT is down, the store cannot write or the outbox backs up (daemon/health.ts). */
  health(): HealthReport {
    return this.mqttSide?.health.report() ?? { ok: false, reasons: [{ reason: 'mqtt_disconnected', detail: 'not started', since: new Date().toISOString() }] };
  }

  async start(signal: AbortSignal = new AbortController().signal): Promise<void> {
    if (this.state !== 'new') throw new Error(`daemon cannot start from state ${this.state}`);
    this.state = 'starting';
    const { ctx } = this;
    const log = ctx.logger;
    this.sd = new SdNotify(ctx, this.opts.env ?? process.env);
    this.scorer = (this.opts.scorer ?? createScorer)(ctx);
    this.pipeline = new Pipeline(ctx, { scorer: this.scorer, decode: decodeTile });
    this.ingest = new ZmqIngest(ctx, this.pipeline);
    this.mqttSide = buildMqttSide(ctx, { status: () => this.status() });
    this.http = new HttpStatus(ctx, { status: () => this.status(), ready: () => this.ready, health: () => this.health() });
    const components: Component[] = [
      this.sd,
      ...this.mqttSide.components,
      this.scorer,
      this.pipeline,
      this.ingest,
      this.http,
    ];
    this.lifecycle = new Lifecycle(components, (msg) => log.debug(msg));
    log.info('focusd starting', {
      scanner: this.config.scanner.id,
      config: this.config.source.file,
      endpoint: this.config.ingest.endpoint,
      pattern: this.config.ingest.pattern,
      mqtt: redactUrl(this.config.mqtt.url),
      baseTopic: this.config.resolved.baseTopic,
      scorer: this.config.scoring.scorer,
    });
    try {
      await this.lifecycle.start(signal);
    } catch (err) {
      log.error(`start failed: ${(err as Error).message}`);
      await this.teardown();
      this.state = 'stopped';
      throw err;
    }
    this.state = 'ready';
    const summary = `scoring ${this.config.ingest.pattern} ${this.ingestEndpoint} with ${this.scorer.info.name} on ${this.scorer.info.engine}`;
    this.sd.ready(summary);
    ctx.events.emit('status:changed');
    log.info(`focusd ready: ${summary}`, { model: this.scorer.info, baseTopic: this.config.resolved.baseTopic });
  }

  /** Graceful stop: drain within the deadline, then stop components in reverse. Idempotent. */
  stop(reason = 'stop requested'): Promise<StopReport> {
    this.stopPromise ??= this.doStop(reason);
    return this.stopPromise;
  }

  private async doStop(reason: string): Promise<StopReport> {
    const { logger, config } = this.ctx;
    const wasReady = this.state === 'ready';
    this.state = 'stopping';
    this.sd?.stopping(reason);
    this.ctx.events.emit('status:changed');
    logger.info(`focusd stopping: ${reason}`);
    let undrained = 0;
    if (wasReady && this.pipeline) {
      const t0 = performance.now();
      undrained = await this.pipeline.drain(config.shutdown.drainTimeoutMs);
      const ms = Math.round(performance.now() - t0);
      if (undrained > 0) logger.warn(`drain deadline (${config.shutdown.drainTimeoutMs} ms) passed with ${undrained} tiles unscored`);
      else logger.info(`drained in ${ms} ms`);
    }
    const failures = await this.teardown();
    this.state = 'stopped';
    logger.info('focusd stopped', { undrained, failures: failures.length, metrics: this.ctx.metrics.snapshot() });
    return { undrained, failures: failures.map((f) => `${f.component}: ${(f.error as Error)?.message ?? f.error}`) };
  }

  private async teardown() {
    const failures = (await this.lifecycle?.stop()) ?? [];
    for (const f of failures) this.ctx.logger.error(`stopping ${f.component} failed: ${(f.error as Error)?.message ?? f.error}`);
    return failures;
  }
}

export interface StopReport {
  undrained: number;
  failures: string[];
}

/** The package version (package.json is the one place it is written). */
export const DAEMON_VERSION: string = (JSON.parse(readFileSync(resolve(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
