import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Component } from '../core/lifecycle.js';
import type { Context } from '../core/context.js';
import type { HealthReport } from '../core/types.js';
import { reportFile } from './report-files.js';

/**
 * GET /status (JSON), /healthz (200 when ready and healthy; 503 while starting, stopping or degraded, with the reasons),
 * /metrics (Prometheus text), /reports/ (report files, read-only). Disabled when http.port = 0.
 */
export class HttpStatus implements Component {
  readonly name = 'http';
  private server: Server | null = null;

  constructor(
    private readonly ctx: Context,
    private readonly deps: { status: () => Record<string, unknown>; ready: () => boolean; health: () => HealthReport },
  ) {}

  get port(): number | null {
    const a = this.server?.address() as AddressInfo | null | undefined;
    return a ? a.port : null;
  }

  async start(): Promise<void> {
    const { port, host } = this.ctx.config.http;
    if (port === 0) return;
    const server = createServer((req, res) => {
      const send = (code: number, body: string, type = 'application/json') => {
        res.writeHead(code, { 'content-type': type, 'cache-control': 'no-store' });
        res.end(body);
      };
      try {
        if (req.method !== 'GET') return send(405, JSON.stringify({ error: 'method not allowed' }));
        const path = (req.url ?? '/').split('?')[0];
        if (path === '/status') return send(200, JSON.stringify(this.deps.status(), null, 2));
        if (path === '/healthz') {
          const ready = this.deps.ready();
          const h = this.deps.health();
          return send(ready && h.ok ? 200 : 503, JSON.stringify({ ready, healthy: h.ok, reasons: h.reasons }));
        }
        if (path === '/metrics') return send(200, this.prometheus(), 'text/plain; version=0.0.4');
        if (this.ctx.config.reports.serveHttp && (path === '/reports' || path.startsWith('/reports/'))) return this.reports(path, res);
        send(404, JSON.stringify({ error: 'not found', paths: ['/status', '/healthz', '/metrics'] }));
      } catch (err) {
        this.ctx.logger.error('http handler failed', { error: (err as Error).stack });
        send(500, JSON.stringify({ error: (err as Error).message }));
      }
    });
    await new Promise<void>((resolve, reject) => {
      // name the settings: "EADDRINUSE" or "getaddrinfo ENOTFOUND" alone does not say which listener
      server.once('error', (err) => reject(new Error(`http status server cannot listen on ${host}:${port} (http.host, http.port): ${err.message}`)));
      server.listen(port, host, () => {
        server.removeAllListeners('error');
        resolve();
      });
    });
    this.server = server;
    this.ctx.logger.info(`http status on http://${host}:${this.port}/status`);
  }

  /** /reports/: the report directory, read-only (adapters/report-files.ts). */
  private reports(path: string, res: ServerResponse): void {
    if (path === '/reports') {
      res.writeHead(301, { location: '/reports/' });
      return void res.end();
    }
    reportFile(this.ctx.config.resolved.reportDir, path.slice('/reports/'.length)).then(
      (r) => {
        res.writeHead(r.code, { 'content-type': r.type, 'cache-control': 'no-store', ...r.headers });
        res.end(r.body);
      },
      (err: Error) => {
        this.ctx.logger.error('http: cannot serve a report', { path, err: err.message });
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: err.message }));
      },
    );
  }

  private prometheus(): string {
    const m = this.ctx.metrics;
    const lines: string[] = [];
    const metric = (name: string, type: string, help: string, samples: Array<[string, number]>) => {
      lines.push(`# HELP focusd_${name} ${help}`, `# TYPE focusd_${name} ${type}`);
      for (const [labels, v] of samples) lines.push(`focusd_${name}${labels} ${v}`);
    };
    metric('tiles_received_total', 'counter', 'Tiles received over ZeroMQ with a valid header (messages rejected at ingest are counted only in focusd_rejected_total).', [['', m.received]]);
    metric('tiles_scored_total', 'counter', 'Tiles scored, by verdict.', Object.entries(m.verdicts).map(([k, v]) => [`{verdict="${k}"}`, v]));
    metric('tiles_skipped_total', 'counter', 'Tiles not scored (overload or paused).', [['', m.skipped]]);
    metric('messages_rejected_total', 'counter', 'Rejected messages, by reason.', [...m.rejected].map(([k, v]) => [`{reason="${k}"}`, v]));
    metric('actions_total', 'counter', 'Actions decided by the controller.', [['', m.actions]]);
    metric('publish_failures_total', 'counter', 'MQTT publishes that failed.', [['', m.publishFailures]]);
    metric('error_messages_suppressed_total', 'counter', 'Rejections counted but not published one by one on the error topic (mqtt.maxErrorBacklog).', [['', m.errorMessagesSuppressed]]);
    metric('control_requests_total', 'counter', 'MQTT control requests received.', [['', m.controlRequests]]);
    metric('control_rejected_total', 'counter', 'MQTT control requests refused (answered ok: false), by reason.', [...m.controlRejected].map(([k, v]) => [`{reason="${k}"}`, v]));
    metric('store_write_failures_total', 'counter', 'SQLite writes (history, outbox) that failed.', [['', m.storeWriteFailures]]);
    const h = this.deps.health();
    metric('healthy', 'gauge', '1 when healthy, 0 while degraded (see health_degraded).', [['', h.ok ? 1 : 0]]);
    metric('health_degraded', 'gauge', 'Reasons the daemon is degraded now (1 per reason).', h.reasons.map((r) => [`{reason="${r.reason}"}`, 1]));
    metric('ingest_handshake_failures_total', 'counter', 'ZeroMQ connections refused in the handshake (not ZMTP, CURVE refused).', [['', m.ingestHandshakeFailures]]);
    metric('ingest_disconnects_total', 'counter', 'ZeroMQ peer connections closed, including those libzmq drops for a frame over the hard limit.', [['', m.ingestDisconnects]]);
    metric('queue_depth', 'gauge', 'Tiles admitted to the pipeline.', [['', m.queueDepth]]);
    // feedback loop (docs/controller.md): what the controller learned about the model's sign, and the stop-loss
    const loop = m.loop;
    const lbl = (l: (typeof loop.sign_learning)[number]) =>
      `scanner="${esc(l.scanner)}",objective="${esc(l.objective)}",model="${l.model_sha256.slice(0, 12)}",calibration="${l.calibration_sign}"`;
    metric('sign_direction', 'gauge', "Learned direction of the model's sign (1 as reported, -1 reversed, 0 not known yet: probing).", loop.sign_learning.map((l) => [`{${lbl(l)}}`, l.direction]));
    // one series per cell: sign-confidence bin × |defocus| range (the bin label alone named two series alike)
    const cell = (b: (typeof loop.sign_learning)[number]['bins'][number]) => `bin="${b.lo}-${b.hi}",abs_um="${b.abs_lo_um}-${b.abs_hi_um ?? 'inf'}"`;
    metric('sign_p_right', 'gauge', "Posterior probability that the model's sign is right, per cell (sign-confidence bin, |defocus| range).", loop.sign_learning.flatMap((l) => l.bins.map((b) => [`{${lbl(l)},${cell(b)}}`, b.p_right] as [string, number])));
    metric('sign_experiments_total', 'counter', "Experiments (probes, re-acquisitions, z_offsets) whose outcome agreed (right) or disagreed (wrong) with the model's sign.", loop.sign_learning.flatMap((l) => (['right', 'wrong'] as const).map((k) => [`{${lbl(l)},outcome="${k}"}`, l.bins.reduce((a, b) => a + b[k], 0)] as [string, number])));
    metric('magnitude_gain', 'gauge', "Gain that sizes re-acquisitions and probes: the model's |defocus| is divided by it (learned on this instrument, 1 before enough evidence).", loop.sign_learning.map((l) => [`{${lbl(l)}}`, l.magnitude.gain]));
    metric('wrong_way_moves_total', 'counter', 'Commanded moves that left a tile (or the tiles after a z_offset) further from focus.', [['', loop.wrong_way_moves]]);
    metric('z_offsets_reverted_total', 'counter', 'z_offsets taken back because the tiles after them got worse.', [['', loop.z_offsets_reverted]]);
    metric('audits_total', 'counter', 'Audits of in-focus verdicts (docs/controller.md): sent, and their outcome: sharper (the model read an out-of-focus tile as in focus) or no_sharper (taken back).', (['sent', 'sharper', 'no_sharper'] as const).map((k) => [`{outcome="${k}"}`, loop.audits[k]]));
    metric('diverging_slides', 'gauge', 'Slides where the stop-loss froze z_offsets (recent, at most 32).', [['', loop.diverging_slides.length]]);
    const p = m.latency.percentiles([50, 95, 99]);
    metric('latency_ms', 'gauge', 'Receive-to-verdict latency over the recent window.', Object.entries(p).filter(([, v]) => v !== null).map(([k, v]) => [`{quantile="0.${k.slice(1)}"}`, v as number]));
    return lines.join('\n') + '\n';
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}

/** Prometheus label value escaping: backslash, quote, newline. */
function esc(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}
