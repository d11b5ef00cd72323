import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import AjvModule, { type ValidateFunction } from 'ajv';
import mqtt, { type IClientOptions, type IClientPublishOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { PACKAGE_ROOT } from '../config/load.js';
import type { Context } from '../core/context.js';
import type { Component } from '../core/lifecycle.js';
import { LogThrottle } from '../core/log-throttle.js';
import { tileMeta } from '../core/logger.js';
import { redactConfig, redactUrl } from '../core/redact.js';
import type { Action, ActionPublisher, Rejection, SurfacePrediction, TileHeader, TileOutcome } from '../core/types.js';

/**
 * MQTT side of focusd (docs/mqtt.md). Topics under config.resolved.baseTopic:
 *   status (retained, last will), tile, action (via the outbox), error, stats, control/request → control/response.
 * Every payload carries `schema` (docs/schemas/<name>.schema.json). Publish failures are counted in
 * ctx.metrics.publishFailures and logged; nothing is dropped silently.
 */

export const SCHEMA_IDS = {
  status: 'focusd/status/1',
  tile: 'focusd/tile/1',
  action: 'focusd/action/1',
  error: 'focusd/error/1',
  stats: 'focusd/stats/1',
  controlRequest: 'focusd/control-request/1',
  controlResponse: 'focusd/control-response/1',
  report: 'focusd/report/1',
} as const;

export type TopicName = 'status' | 'tile' | 'action' | 'error' | 'stats' | 'control' | 'report';

export function topicsFor(base: string) {
  return {
    status: `${base}/status`,
    tile: `${base}/tile`,
    action: `${base}/action`,
    error: `${base}/error`,
    stats: `${base}/stats`,
    request: `${base}/control/request`,
    response: `${base}/control/response`,
    report: `${base}/report`,
  };
}

/** What control requests may do to the running daemon. The daemon wiring passes one (createControlApi). */
export interface ControlApi {
  pause(): void;
  resume(): void;
  setTolerance(um: number): void;
  setDryRun(on: boolean): void;
  /** The effective configuration with secrets redacted. */
  getConfig(): Record<string, unknown>;
  /** null when the slide is unknown. */
  getSlideSummary(slide: string, scanner?: string): unknown | null;
}

/** The usual ControlApi: runtime switches in ctx.runtime, summaries from the store. */
export function createControlApi(ctx: Context, store: { slideSummary(slide: string, scanner?: string): unknown | null }): ControlApi {
  const changed = () => ctx.events.emit('status:changed');
  return {
    pause() {
      ctx.runtime.paused = true;
      changed();
    },
    resume() {
      ctx.runtime.paused = false;
      changed();
    },
    setTolerance(um) {
      ctx.runtime.toleranceUm = um;
      changed();
    },
    setDryRun(on) {
      ctx.runtime.dryRun = on;
      changed();
    },
    getConfig: () => redactConfig(ctx.config as unknown as Record<string, unknown>),
    getSlideSummary: (slide, scanner) => store.slideSummary(slide, scanner),
  };
}

/** Re-exported for callers of the MQTT side; the one implementation lives in core/redact.ts. */
export { redactConfig };

export interface MqttDeps {
  /** engine, model, version, pattern, endpoint...: merged into status and stats messages. */
  statusProvider: () => Record<string, unknown>;
  control: ControlApi;
  /** focus-surface prediction for a tile (Controller.predict); tile messages carry it. */
  predict?: (h: TileHeader) => SurfacePrediction | null;
  /** broker URL override; default config.mqtt.url, or the embedded broker's address when that is "embedded". */
  url?: string;
  /** credentials that replace mqtt.username / password: the embedded broker's per-start daemon login. */
  credentials?: () => { username: string; password: string } | null;
}

/** The JSON of one tile message. */
export function tileMessage(o: TileOutcome, toleranceUm: number, predicted: SurfacePrediction | null): Record<string, unknown> {
  const h = o.header;
  const s = o.score;
  return {
    schema: SCHEMA_IDS.tile,
    scanner: h.scanner,
    slide: h.slide,
    scan: h.scan,
    seq: h.seq,
    tile: h.tile,
    attempt: h.attempt,
    stage_um: h.stage_um,
    acquired_at: h.acquired_at,
    verdict: o.verdict,
    defocus_um: s.defocus_um,
    uncertainty_um: s.uncertainty_um,
    sign_confidence: s.sign_confidence,
    tissue_fraction: s.tissue_fraction,
    patches: s.patches,
    focus_map: s.focus_map,
    latency_ms: Math.round(o.latency_ms * 100) / 100,
    model: s.model,
    tolerance_um: toleranceUm,
    predicted,
    at: new Date().toISOString(),
  };
}

/** Logs at most one line per topic and interval while failures repeat (the counter keeps every one). */
const FAILURE_LOG_INTERVAL_MS = 10_000;

export class MqttAdapter implements Component, ActionPublisher {
  readonly name = 'mqtt';
  private client: MqttClient | null = null;
  private readonly offs: (() => void)[] = [];
  private readonly connectListeners = new Set<() => void>();
  private statsTimer: NodeJS.Timeout | null = null;
  private validateRequest: ValidateFunction | null = null;
  private offlineQueued = 0;
  /** rejection messages published and not yet acknowledged (or failed). */
  private rejectionBacklog = 0;
  /** rejections not published while the backlog was full, by reason, until the summary goes out. */
  private readonly suppressedRejections = new Map<string, number>();
  private wasConnected = false;
  private lastConnectError = '';
  private readonly failureLog = new LogThrottle(FAILURE_LOG_INTERVAL_MS);
  private stopping = false;
  private topicNames: ReturnType<typeof topicsFor>;

  constructor(private readonly ctx: Context, private readonly deps: MqttDeps) {
    this.topicNames = topicsFor(ctx.config.resolved.baseTopic);
  }

  get topics(): ReturnType<typeof topicsFor> {
    return this.topicNames;
  }

  get connected(): boolean {
    return this.client?.connected === true;
  }

  get url(): string {
    if (this.deps.url) return this.deps.url;
    const m = this.ctx.config.mqtt;
    if (m.url !== 'embedded') return m.url;
    const h = m.embedded.host;
    return `mqtt://${h.includes(':') ? `[${h}]` : h}:${m.embedded.port}`;
  }

  /** The broker URL as it may be logged or shown: userinfo (user:password) redacted. */
  get safeUrl(): string {
    return redactUrl(this.url);
  }

  /** MQTT 5 unless the broker is the embedded aedes (3.1.1 only). */
  get protocolVersion(): 4 | 5 {
    return this.ctx.config.mqtt.url === 'embedded' && !this.deps.url ? 4 : (this.ctx.config.mqtt.protocolVersion as 4 | 5);
  }

  onConnect(listener: () => void): () => void {
    this.connectListeners.add(listener);
    return () => this.connectListeners.delete(listener);
  }

  async start(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    const { config, logger } = this.ctx;
    const m = config.mqtt;
    const Ajv = AjvModule.default;
    const ajv = new Ajv({ allErrors: true, strict: false });
    this.validateRequest = ajv.compile(JSON.parse(readFileSync(resolve(PACKAGE_ROOT, 'docs/schemas/control-request.schema.json'), 'utf8')));
    const opts: IClientOptions = {
      clientId: config.resolved.mqttClientId,
      protocolVersion: this.protocolVersion,
      clean: true,
      keepalive: m.keepaliveS,
      reconnectPeriod: m.reconnectMs,
      connectTimeout: m.connectTimeoutMs,
      // QoS 0 (tile, stats) is not queued while offline; it is counted as a failure instead (see publish())
      queueQoSZero: false,
      // we subscribe ourselves on every connect
      resubscribe: false,
      will: {
        topic: this.topics.status,
        payload: Buffer.from(JSON.stringify(this.statusPayload('offline', 'connection_lost'))),
        qos: m.topics.status.qos as 0 | 1 | 2,
        retain: m.topics.status.retain,
      },
    };
    if (m.username) opts.username = m.username;
    if (config.resolved.mqttPassword) opts.password = config.resolved.mqttPassword;
    const own = this.deps.credentials?.();
    if (own) Object.assign(opts, own);
    if (m.tls.ca) opts.ca = readFileSync(m.tls.ca);
    if (m.tls.cert) opts.cert = readFileSync(m.tls.cert);
    if (m.tls.key) opts.key = readFileSync(m.tls.key);
    opts.rejectUnauthorized = m.tls.rejectUnauthorized;

    const client = mqtt.connect(this.url, opts);
    this.client = client;
    client.on('connect', () => this.onConnected());
    client.on('close', () => {
      if (this.wasConnected && !this.stopping) logger.warn('MQTT connection lost; reconnecting', { url: this.safeUrl, every_ms: m.reconnectMs });
      this.wasConnected = false;
    });
    client.on('error', (err) => {
      // repeated identical errors while the broker is down are logged once
      if (err.message !== this.lastConnectError) logger.error('MQTT error', { url: this.safeUrl, err: err.message });
      this.lastConnectError = err.message;
    });
    client.on('message', (topic, payload, packet) => this.onMessage(topic, payload, packet));

    this.offs.push(this.ctx.events.on('tile:scored', (o) => this.publishTile(o)));
    this.offs.push(this.ctx.events.on('tile:rejected', (r) => this.publishRejection(r)));
    this.offs.push(
      this.ctx.events.on('action:refused', (r) =>
        void this.fire('error', this.topics.error, {
          schema: SCHEMA_IDS.error,
          scanner: this.ctx.config.scanner.id,
          at: new Date().toISOString(),
          reason: 'action_refused',
          detail: `${r.type} for ${r.slide} tile ${r.tile} refused by ${r.limit}: ${r.detail}${r.suppressed ? ` (${r.suppressed} more since the last report)` : ''}`,
          refusal: r,
        }),
      ),
    );
    this.offs.push(
      this.ctx.events.on('loop:alert', (a) =>
        void this.fire('error', this.topics.error, {
          schema: SCHEMA_IDS.error,
          scanner: this.ctx.config.scanner.id,
          at: new Date().toISOString(),
          reason: a.reason,
          detail: a.detail,
          loop: { scanner: a.scanner, slide: a.slide, objective: a.objective, ...(a.learning ? { learning: a.learning } : {}), ...(a.diverging ? { diverging: a.diverging } : {}) },
        }),
      ),
    );
    this.offs.push(this.ctx.events.on('status:changed', () => this.connected && void this.publishStatus()));

    await new Promise<void>((res, rej) => {
      if (client.connected) return res();
      const onAbort = () => {
        client.off('connect', onConnect);
        rej(signal.reason instanceof Error ? signal.reason : new Error(`MQTT: start aborted before connecting to ${this.safeUrl}`));
      };
      const onConnect = () => {
        signal.removeEventListener('abort', onAbort);
        res();
      };
      client.once('connect', onConnect);
      signal.addEventListener('abort', onAbort, { once: true });
    });

    if (m.statsIntervalS > 0) {
      this.statsTimer = setInterval(() => void this.publishStats(), m.statsIntervalS * 1000);
      this.statsTimer.unref();
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    for (const off of this.offs.splice(0)) off();
    if (this.statsTimer) clearInterval(this.statsTimer);
    this.statsTimer = null;
    const client = this.client;
    this.client = null;
    if (!client) return;
    // both steps fit in the stop's teardown allowance (STOP_TEARDOWN_MS, 5 s) with the rest: against a hung broker
    // two connectTimeoutMs (10 s each) made a stop take 23 s. If the offline status does not get through, the
    // broker's last will says offline when it notices the connection gone
    const bound = Math.min(this.ctx.config.mqtt.connectTimeoutMs, MQTT_STOP_STEP_MS);
    if (client.connected) {
      // a graceful stop replaces the retained online status with offline; the broker then drops the will
      await withTimeout(this.send(client, 'status', this.topics.status, this.statusPayload('offline', 'stopped')), bound).catch(() => undefined);
      const ended = await withTimeout(client.endAsync(false), bound).then(() => true, () => false);
      if (ended) return;
    }
    await client.endAsync(true).catch(() => undefined);
  }

  /** Drops the TCP connection without DISCONNECT, as a crash would: the broker publishes the last will. For tests. */
  simulateConnectionLoss(): void {
    this.client?.stream.destroy();
  }

  // ---- ActionPublisher (daemon/outbox.ts) ------------------------------------------------------------------

  publishAction(a: Action): Promise<void> {
    const client = this.client;
    if (!client) return Promise.reject(new Error('MQTT adapter is not started'));
    return this.send(client, 'action', this.topics.action, { schema: SCHEMA_IDS.action, ...a });
  }

  publishExpired(a: Action): Promise<void> {
    const client = this.client;
    if (!client) return Promise.reject(new Error('MQTT adapter is not started'));
    return this.send(client, 'error', this.topics.error, {
      schema: SCHEMA_IDS.error,
      scanner: this.ctx.config.scanner.id,
      at: new Date().toISOString(),
      reason: 'action_expired',
      detail: `${a.type} ${a.id} for slide ${a.slide} tile ${a.tile.index} expired at ${a.expires_at} before the broker acknowledged it; not sent`,
      action: { schema: SCHEMA_IDS.action, ...a },
    });
  }

  /** A drift report was written (daemon/report-run.ts builds the message); retained by default. Rejects on failure. */
  publishReport(message: Record<string, unknown>): Promise<void> {
    const client = this.client;
    if (!client) return Promise.reject(new Error('MQTT adapter is not started'));
    return this.send(client, 'report', this.topics.report, { ...message, schema: SCHEMA_IDS.report });
  }

  // ---- publishing ------------------------------------------------------------------------------------------

  statusPayload(state: 'online' | 'offline', reason?: string): Record<string, unknown> {
    let provided: Record<string, unknown> = {};
    try {
      provided = this.deps.statusProvider();
    } catch (err) {
      this.ctx.logger.error('MQTT: status provider failed', { err: (err as Error).message });
    }
    return {
      ...provided,
      schema: SCHEMA_IDS.status,
      state,
      scanner: this.ctx.config.scanner.id,
      at: new Date().toISOString(),
      pid: process.pid,
      runtime: { ...this.ctx.runtime },
      ...(reason ? { reason } : {}),
    };
  }

  statsPayload(): Record<string, unknown> {
    let provided: Record<string, unknown> = {};
    try {
      provided = this.deps.statusProvider();
    } catch (err) {
      this.ctx.logger.error('MQTT: status provider failed', { err: (err as Error).message });
    }
    const interval = this.ctx.config.mqtt.statsIntervalS;
    return {
      engine: provided.engine ?? null,
      model: provided.model ?? null,
      version: provided.version,
      outbox_pending: provided.outbox_pending,
      ...(provided.health ? { health: provided.health } : {}),
      ...this.ctx.metrics.snapshot(),
      schema: SCHEMA_IDS.stats,
      scanner: this.ctx.config.scanner.id,
      at: new Date().toISOString(),
      interval_s: interval,
      tiles_per_s: this.ctx.metrics.takeRate(),
      runtime: { ...this.ctx.runtime },
    };
  }

  publishStatus(): Promise<void> {
    return this.fire('status', this.topics.status, this.statusPayload('online'));
  }

  publishStats(): Promise<void> {
    return this.fire('stats', this.topics.stats, this.statsPayload());
  }

  private publishTile(o: TileOutcome): void {
    let predicted: SurfacePrediction | null = null;
    try {
      predicted = this.deps.predict?.(o.header) ?? null;
    } catch (err) {
      this.ctx.logger.error('MQTT: focus-surface prediction failed', { err: (err as Error).message, ...tileMeta(o.header) });
    }
    void this.fire('tile', this.topics.tile, tileMessage(o, this.ctx.runtime.toleranceUm, predicted));
  }

  /**
   * One `error` message per rejected tile or message. Rejections come at the rate a sender can send, not the rate
   * focusd can score, so they are bounded twice: the received header is echoed only up to ERROR_HEADER_ECHO_BYTES
   * (else its correlation fields), and at most mqtt.maxErrorBacklog of them wait for the broker at once. Beyond
   * that they are counted (stats.rejected_by_reason has every one; focusd_error_messages_suppressed_total) and
   * one `rejections_suppressed` message says how many and why once the backlog has drained. Measured before: a
   * flood of 20 000 rejections with 60 KB headers took the daemon to 2.9 GB and its MQTT link down (ENOBUFS).
   */
  private publishRejection(r: Rejection): void {
    if (this.rejectionBacklog >= this.ctx.config.mqtt.maxErrorBacklog) {
      this.suppressedRejections.set(r.reason, (this.suppressedRejections.get(r.reason) ?? 0) + 1);
      this.ctx.metrics.errorMessagesSuppressed++;
      return;
    }
    this.rejectionBacklog++;
    void this.fire('error', this.topics.error, {
      schema: SCHEMA_IDS.error,
      scanner: this.ctx.config.scanner.id,
      at: new Date().toISOString(),
      reason: r.reason,
      detail: r.detail,
      received: echoReceived(r.received),
    }).finally(() => {
      this.rejectionBacklog--;
      if (this.rejectionBacklog === 0 && this.suppressedRejections.size > 0) this.publishSuppressed();
    });
  }

  private publishSuppressed(): void {
    const byReason = Object.fromEntries(this.suppressedRejections);
    const total = [...this.suppressedRejections.values()].reduce((a, b) => a + b, 0);
    this.suppressedRejections.clear();
    this.ctx.logger.warn(`${total} rejections were not published on the error topic (mqtt.maxErrorBacklog ${this.ctx.config.mqtt.maxErrorBacklog} awaiting the broker)`, { by_reason: byReason });
    void this.fire('error', this.topics.error, {
      schema: SCHEMA_IDS.error,
      scanner: this.ctx.config.scanner.id,
      at: new Date().toISOString(),
      reason: 'rejections_suppressed',
      detail: `${total} rejected messages were not published here one by one: ${this.ctx.config.mqtt.maxErrorBacklog} error messages were already awaiting the broker (mqtt.maxErrorBacklog). Every rejection is counted in stats.rejected_by_reason and /metrics`,
      suppressed: { total, by_reason: byReason },
    });
  }

  /** Fire and forget: failures are counted and logged inside send(). */
  private fire(name: TopicName, topic: string, payload: object, extra?: IClientPublishOptions): Promise<void> {
    const client = this.client;
    if (!client) {
      this.failed(name, new Error('MQTT adapter is not started'));
      return Promise.resolve();
    }
    return this.send(client, name, topic, payload, extra).catch(() => undefined);
  }

  /** Publishes with the topic's QoS/retain; resolves on PUBACK (QoS ≥ 1) or when written (QoS 0). */
  private send(client: MqttClient, name: TopicName, topic: string, payload: object, extra: IClientPublishOptions = {}): Promise<void> {
    const t = this.ctx.config.mqtt.topics[name];
    const qos = t.qos as 0 | 1 | 2;
    if (!client.connected) {
      if (qos === 0) return Promise.reject(this.failed(name, new Error('broker not connected (QoS 0 is not queued offline)')));
      if (this.offlineQueued >= this.ctx.config.mqtt.maxOfflineQueue)
        return Promise.reject(this.failed(name, new Error(`broker not connected and ${this.offlineQueued} messages already queued (mqtt.maxOfflineQueue)`)));
    }
    const offline = !client.connected;
    if (offline) this.offlineQueued++;
    return new Promise<void>((res, rej) => {
      try {
        const body = JSON.stringify(payload);
        client.publish(topic, body, { qos, retain: t.retain, ...extra }, (err) => {
          if (offline) this.offlineQueued--;
          if (err) return rej(this.failed(name, err));
          this.ctx.metrics.published++;
          res();
        });
      } catch (err) {
        // a payload that cannot be serialised or a packet MQTT.js refuses to build fails this publish, not the daemon
        if (offline) this.offlineQueued--;
        rej(this.failed(name, err as Error));
      }
    });
  }

  private failed(name: string, err: Error): Error {
    this.ctx.metrics.publishFailures++;
    const now = Date.now();
    const t = this.failureLog.take(name, now);
    if (t) this.ctx.logger.error(`MQTT publish on ${name} failed`, { err: err.message, failures_total: this.ctx.metrics.publishFailures, suppressed: t.suppressed });
    return err;
  }

  private onConnected(): void {
    const client = this.client;
    if (!client) return;
    this.wasConnected = true;
    this.lastConnectError = '';
    this.ctx.logger.info('MQTT connected', { url: this.safeUrl, protocol: this.protocolVersion, baseTopic: this.ctx.config.resolved.baseTopic });
    // online on every (re)connect: the retained status may have been replaced by the will meanwhile
    void this.publishStatus();
    client.subscribe(this.topics.request, { qos: this.ctx.config.mqtt.topics.control.qos as 0 | 1 | 2 }, (err) => {
      if (err) this.ctx.logger.error('MQTT: cannot subscribe to control requests', { topic: this.topics.request, err: err.message });
    });
    for (const l of this.connectListeners) {
      try {
        l();
      } catch (err) {
        this.ctx.logger.error('MQTT: connect listener failed', { err: (err as Error).message });
      }
    }
  }

  // ---- control requests ------------------------------------------------------------------------------------

  private onMessage(topic: string, payload: Buffer, packet: IPublishPacket): void {
    if (topic !== this.topics.request) return;
    this.ctx.metrics.controlRequests++;
    const props = packet.properties ?? {};
    const limits = this.ctx.config.mqtt.control;
    // the answer goes to the default topic until a requested one has been checked (check below)
    let responseTopic: string | undefined;
    let correlationData = props.correlationData;
    let correlationId: string | undefined;
    let command: string | null = null;
    let requester = requesterOf(props.userProperties);
    const answer = (body: Record<string, unknown>) => {
      const target = responseTopic ?? this.topics.response;
      const extra: IClientPublishOptions = correlationData && this.protocolVersion === 5 ? { properties: { correlationData } } : {};
      void this.fire('control', target, {
        schema: SCHEMA_IDS.controlResponse,
        command,
        scanner: this.ctx.config.scanner.id,
        at: new Date().toISOString(),
        ...(correlationId !== undefined ? { correlation_id: correlationId } : {}),
        ...body,
      }, extra);
    };
    const fail = (reason: ControlErrorReason, detail: string) => {
      this.ctx.metrics.controlReject(reason);
      // a flood of bad requests is counted in full (control_rejected_by_reason) but logged once per reason and interval
      const t = this.failureLog.take(`control:${reason}`);
      if (t) this.ctx.logger.warn('MQTT control request refused', { reason, detail, command, requester, suppressed: t.suppressed });
      answer({ ok: false, error: { reason, detail } });
    };
    // correlation data too long to echo is dropped at once, but refused only after the response topic is checked:
    // the refusal then reaches the requester's own (valid) topic instead of the default one
    const correlationTooLong = correlationData !== undefined && correlationData.length > MAX_CORRELATION_BYTES;
    if (correlationTooLong) correlationData = undefined;
    const check = (wanted: unknown): boolean => {
      const problem = this.responseTopicProblem(wanted);
      if (problem) fail('invalid_response_topic', `response topic refused, answered on ${this.topics.response} instead: ${problem}`);
      else responseTopic = wanted as string;
      return !problem;
    };
    if (props.responseTopic !== undefined && !check(props.responseTopic)) return;
    if (correlationTooLong) return fail('invalid_request', `correlation data of ${props.correlationData!.length} bytes (at most ${MAX_CORRELATION_BYTES})`);
    if (payload.length > limits.maxRequestBytes)
      return fail('too_large', `request of ${payload.length} bytes; at most ${limits.maxRequestBytes} (mqtt.control.maxRequestBytes)`);
    let req: Record<string, unknown>;
    try {
      req = JSON.parse(UTF8.decode(payload));
    } catch (err) {
      return fail('bad_json', `request is not JSON in UTF-8: ${(err as Error).message.slice(0, 200)}; received ${payload.length} bytes`);
    }
    if (req && typeof req === 'object' && !Array.isArray(req)) {
      if (typeof req.correlation_id === 'string' && req.correlation_id.length <= MAX_CORRELATION_BYTES) correlationId = req.correlation_id;
      if (typeof req.command === 'string' && CONTROL_COMMANDS.has(req.command)) command = req.command;
      if (requester === null && typeof req.client_id === 'string') requester = req.client_id.slice(0, 128);
      if (responseTopic === undefined && req.response_topic !== undefined && !check(req.response_topic)) return;
    }
    if (!this.validateRequest!(req)) {
      const detail = (this.validateRequest!.errors ?? [])
        .filter((e) => e.keyword !== 'if')
        .map((e) => `${e.instancePath || '(request)'} ${e.message}${e.params && 'allowedValues' in e.params ? ': ' + (e.params.allowedValues as string[]).join(', ') : ''}${e.params && 'additionalProperty' in e.params ? ': ' + String(e.params.additionalProperty).slice(0, 64) : ''}`)
        .join('; ');
      return fail('invalid_request', `invalid control request: ${detail.slice(0, 1000)}`);
    }
    const c = this.deps.control;
    try {
      switch (req.command) {
        case 'pause':
          c.pause();
          break;
        case 'resume':
          c.resume();
          break;
        case 'set_tolerance':
          c.setTolerance(req.tolerance_um as number);
          break;
        case 'set_dry_run':
          c.setDryRun(req.dry_run as boolean);
          break;
        case 'get_config':
          return answer({ ok: true, result: c.getConfig() });
        case 'get_slide_summary': {
          const s = c.getSlideSummary(req.slide as string, req.scanner as string | undefined);
          if (s === null || s === undefined) return fail('not_found', `no tiles recorded for slide ${JSON.stringify(String(req.slide).slice(0, 128))}`);
          return answer({ ok: true, result: s });
        }
        case 'get_status':
          return answer({ ok: true, result: { ...this.statusPayload('online'), metrics: this.ctx.metrics.snapshot() } });
      }
    } catch (err) {
      return fail('failed', `${String(req.command)} failed: ${(err as Error).message}`);
    }
    // requests that change behaviour leave a trace: who (as the requester says, see docs/mqtt.md) and what
    this.ctx.logger.info('MQTT control request applied', { command, requester: requester ?? '(unidentified)', runtime: this.ctx.runtime });
    answer({ ok: true, result: { runtime: { ...this.ctx.runtime } } });
  }

  /** Why a response topic from a request may not be published to; null when it may. */
  responseTopicProblem(t: unknown): string | null {
    if (typeof t !== 'string') return 'not a string';
    const shown = JSON.stringify(t.length > 80 ? `${t.slice(0, 80)}…` : t);
    const bytes = Buffer.byteLength(t, 'utf8');
    if (bytes > MAX_RESPONSE_TOPIC_BYTES) return `${bytes} bytes long (at most ${MAX_RESPONSE_TOPIC_BYTES})`;
    if (LONE_SURROGATE.test(t) || t.includes('\ufffd')) return `${shown} is not valid UTF-8`;
    if (CONTROL_CHARS.test(t)) return `${shown} contains a control character (NUL, newline…)`;
    if (/[+#]/.test(t)) return `${shown} contains a wildcard (+ or #)`;
    if (t === this.topics.response) return null;
    const prefix = this.responsePrefix;
    if (!t.startsWith(prefix) || t.length === prefix.length) return `${shown} is not under ${prefix} (mqtt.control.responsePrefix)`;
    // a configured prefix must still never reach focusd's own topics
    const own = Object.entries(this.topics).filter(([k]) => k !== 'response').map(([, v]) => v);
    if (own.some((o) => t === o || t.startsWith(`${o}/`))) return `${shown} is one of focusd's own topics`;
    // nor another daemon's: a wide prefix ("focusd/") would let a request write onto focusd/<other scanner>/action,
    // its status, or its control requests (found by attack)
    if (FOCUSD_TOPIC_TAIL.test(t)) return `${shown} ends like a focusd topic (status, action, tile, error, stats, report, control/request) of some scanner`;
    return null;
  }

  /** Where answers may go: mqtt.control.responsePrefix, default <base>/control/response/. */
  get responsePrefix(): string {
    return this.ctx.config.mqtt.control.responsePrefix || `${this.topics.response}/`;
  }
}

export type ControlErrorReason = 'bad_json' | 'invalid_request' | 'invalid_response_topic' | 'too_large' | 'not_found' | 'failed';

const CONTROL_COMMANDS = new Set(['pause', 'resume', 'set_tolerance', 'set_dry_run', 'get_config', 'get_slide_summary', 'get_status']);
/** How long each of the two stop steps (offline status, DISCONNECT) may wait for the broker. */
const MQTT_STOP_STEP_MS = 2000;
/** The last level(s) of every topic a focusd daemon reads or publishes (topicsFor), under any base topic. */
const FOCUSD_TOPIC_TAIL = /\/(status|action|tile|error|stats|report|control\/request)$/;
/** Longest response topic accepted (bytes of UTF-8); MQTT allows 65 535, brokers and clients choke well before. */
export const MAX_RESPONSE_TOPIC_BYTES = 256;
/** Longest correlation data / correlation_id echoed. */
const MAX_CORRELATION_BYTES = 256;
const UTF8 = new TextDecoder('utf-8', { fatal: true });
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
// eslint-disable-next-line no-control-regex
const CONTROL_CHARS = /[\u0000-\u001f\u007f-\u009f]/;

/** The requester's self-declared id: MQTT 5 user property client_id (the request body's client_id is the fallback). */
function requesterOf(up: Record<string, string | string[]> | undefined): string | null {
  const v = up?.client_id;
  const s = Array.isArray(v) ? v[0] : v;
  return typeof s === 'string' && s ? s.slice(0, 128) : null;
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let t: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<T>((_, rej) => {
      t = setTimeout(() => rej(new Error(`timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

/** A received header up to this JSON size is echoed whole on `error`; a larger one by its correlation fields. */
export const ERROR_HEADER_ECHO_BYTES = 2048;
const HEADER_ID_FIELDS = ['v', 'scanner', 'scan', 'slide', 'seq', 'tile', 'attempt'] as const;

/** `received` of an error message: the header whole when it is small, else its correlation fields and its size. */
export function echoReceived(r: Rejection['received']): Record<string, unknown> {
  const { header, frames, bytes } = r;
  if (header === undefined) return { frames, bytes };
  const size = bytes[0] !== undefined && bytes[0] >= 0 ? bytes[0] : Buffer.byteLength(JSON.stringify(header) ?? '');
  if (size <= ERROR_HEADER_ECHO_BYTES) return { header, frames, bytes };
  const ids: Record<string, unknown> = {};
  if (header !== null && typeof header === 'object' && !Array.isArray(header)) {
    const h = header as Record<string, unknown>;
    for (const k of HEADER_ID_FIELDS) {
      const v = h[k];
      // scalars and small objects (tile: {index, row, col}); anything bigger is what made the header too large
      if (v !== undefined && (JSON.stringify(v)?.length ?? Infinity) <= 256) ids[k] = v;
    }
  }
  return { header: ids, header_truncated: size, frames, bytes };
}
