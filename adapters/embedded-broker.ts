import { createServer, type Server } from 'node:net';
import { Aedes } from 'aedes';
import type { Context } from '../core/context.js';
import type { Component } from '../core/lifecycle.js';

/**
 * In-process MQTT broker (aedes 1.x) for mqtt.url = "embedded": demos and single-box setups. It listens on
 * mqtt.embedded.host:port so external subscribers (mosquitto_sub, the scanner) can connect. aedes speaks
 * MQTT 3.1.1 only, so the MQTT adapter uses protocol 4 with it. Production uses Mosquitto; then this is a no-op.
 */
export class EmbeddedBroker implements Component {
  readonly name = 'embedded-broker';
  private broker: Aedes | null = null;
  private server: Server | null = null;

  constructor(private readonly ctx: Context) {}

  get enabled(): boolean {
    return this.ctx.config.mqtt.url === 'embedded';
  }

  /** The URL the MQTT adapter connects to. */
  get url(): string {
    const { host, port } = this.ctx.config.mqtt.embedded;
    return `mqtt://${host.includes(':') ? `[${host}]` : host}:${port}`;
  }

  async start(signal: AbortSignal): Promise<void> {
    if (!this.enabled) return;
    signal.throwIfAborted();
    const broker = await Aedes.createBroker();
    this.broker = broker;
    broker.on('clientError', (client, err) => this.ctx.logger.debug('embedded broker: client error', { client: client?.id, err: err.message }));
    broker.on('connectionError', (client, err) => this.ctx.logger.debug('embedded broker: connection error', { client: client?.id, err: err.message }));
    const server = createServer(broker.handle);
    this.server = server;
    const { host, port } = this.ctx.config.mqtt.embedded;
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(signal.reason ?? new Error('aborted'));
      signal.addEventListener('abort', onAbort, { once: true });
      server.once('error', (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(new Error(`embedded MQTT broker cannot listen on ${host}:${port}: ${err.message}`));
      });
      server.listen(port, host, () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
    });
    server.on('error', (err) => this.ctx.logger.error('embedded broker: server error', { err: err.message }));
    this.ctx.logger.info('embedded MQTT broker listening', { url: this.url });
  }

  async stop(): Promise<void> {
    const server = this.server;
    const broker = this.broker;
    this.server = null;
    this.broker = null;
    if (broker && !broker.closed) await new Promise<void>((resolve) => broker.close(() => resolve()));
    if (server?.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
