import type { Context } from '../core/context.js';
import type { Component } from '../core/lifecycle.js';
import type { HealthReason, HealthReport } from '../core/types.js';

export interface HealthDeps {
  mqtt: { readonly connected: boolean };
  store: { readonly writeFailure: { what: string; err: string; since: string } | null };
  outbox: { readonly pending: number };
}

/**
 * Health tells the truth: degraded, with the reasons, while MQTT is disconnected, the state store cannot write or
 * the outbox holds more than health.outboxBacklog actions. /healthz, the retained status and stats carry report();
 * a change of the reasons is logged and republishes the retained status (status:changed).
 */
export class Health implements Component {
  readonly name = 'health';
  private timer: NodeJS.Timeout | null = null;
  private readonly since = new Map<HealthReason, string>();
  private lastKey = '';

  constructor(private readonly ctx: Context, private readonly deps: HealthDeps) {}

  async start(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    this.lastKey = this.key(this.report());
    this.timer = setInterval(() => this.check(), this.ctx.config.health.checkIntervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  report(): HealthReport {
    const now: Array<{ reason: HealthReason; detail: string }> = [];
    if (!this.deps.mqtt.connected) now.push({ reason: 'mqtt_disconnected', detail: 'not connected to the MQTT broker; reconnecting' });
    const wf = this.deps.store.writeFailure;
    if (wf) now.push({ reason: 'store_write_failed', detail: `last ${wf.what} write failed: ${wf.err}` });
    try {
      const pending = this.deps.outbox.pending;
      const limit = this.ctx.config.health.outboxBacklog;
      if (pending > limit) now.push({ reason: 'outbox_backlog', detail: `${pending} actions wait for the broker (health.outboxBacklog ${limit})` });
    } catch (err) {
      if (!wf) now.push({ reason: 'store_write_failed', detail: `cannot read the outbox: ${(err as Error).message}` });
    }
    const at = new Date().toISOString();
    for (const r of [...this.since.keys()]) if (!now.some((n) => n.reason === r)) this.since.delete(r);
    const reasons = now.map((n) => {
      if (!this.since.has(n.reason)) this.since.set(n.reason, n.reason === 'store_write_failed' && wf ? wf.since : at);
      return { ...n, since: this.since.get(n.reason)! };
    });
    return { ok: reasons.length === 0, reasons };
  }

  /** Re-evaluates; on a change logs it and republishes the status. Runs on the timer; tests call it directly. */
  check(): HealthReport {
    const r = this.report();
    const key = this.key(r);
    if (key !== this.lastKey) {
      this.lastKey = key;
      if (r.ok) this.ctx.logger.info('health: ok again');
      else this.ctx.logger.warn(`health: degraded (${key})`, { reasons: r.reasons });
      this.ctx.events.emit('status:changed');
    }
    return r;
  }

  private key(r: HealthReport): string {
    return r.reasons.map((x) => x.reason).join(',');
  }
}
