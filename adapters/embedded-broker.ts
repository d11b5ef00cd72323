import { randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { Aedes, type AuthenticateError, type Client } from 'aedes';
import type { Context } from '../core/context.js';
import type { Component } from '../core/lifecycle.js';
import { LogThrottle } from '../core/log-throttle.js';

/** Who a client of the embedded broker is: focusd itself, a control client, or anyone (read only under the base topic). */
type Role = 'daemon' | 'control' | 'reader';

/** The user name focusd's own client uses on the embedded broker; its password is generated at every start. */
export const EMBEDDED_DAEMON_USER = 'focusd';

/**
 * In-process MQTT broker (aedes 1.x) for mqtt.url = "embedded": demos and single-box setups. It listens on
 * mqtt.embedded.host:port so external subscribers (mosquitto_sub, the scanner) can connect. aedes speaks
 * MQTT 3.1.1 only, so the MQTT adapter uses protocol 4 with it. Production uses Mosquitto; then this is a no-op.
 *
 * Access control (unless mqtt.embedded.open): anyone may connect and subscribe; under the base topic only focusd
 * itself publishes (user "focusd", a password generated at every start, handed to the MQTT adapter in-process), and
 * only mqtt.embedded.controlUsername with the password in controlPasswordFile may publish control requests. Nobody
 * else may take focusd's client id. A refused publish closes that client's connection (aedes, MQTT-3.3.5-2) and is logged.
 */
export class EmbeddedBroker implements Component {
  readonly name = 'embedded-broker';
  private broker: Aedes | null = null;
  private server: Server | null = null;
  private daemonPassword = '';
  private controlPassword = '';
  private readonly roles = new WeakMap<Client, Role>();
  private readonly deniedLog = new LogThrottle(10_000);

  constructor(private readonly ctx: Context) {}

  get enabled(): boolean {
    return this.ctx.config.mqtt.url === 'embedded';
  }

  /** The URL the MQTT adapter connects to. */
  get url(): string {
    const { host, port } = this.ctx.config.mqtt.embedded;
    return `mqtt://${host.includes(':') ? `[${host}]` : host}:${port}`;
  }

  /** What focusd's own client logs in with; null when the broker is open or not in use. */
  get daemonCredentials(): { username: string; password: string } | null {
    return this.daemonPassword ? { username: EMBEDDED_DAEMON_USER, password: this.daemonPassword } : null;
  }

  async start(signal: AbortSignal): Promise<void> {
    if (!this.enabled) return;
    signal.throwIfAborted();
    const e = this.ctx.config.mqtt.embedded;
    if (!e.open) {
      this.daemonPassword = randomBytes(24).toString('base64url');
      if (e.controlPasswordFile) this.controlPassword = readFileSync(e.controlPasswordFile, 'utf8').split(/\r?\n/)[0] ?? '';
      if (!this.controlPassword) this.ctx.logger.info('embedded broker: no mqtt.embedded.controlPasswordFile, so no client may send control requests');
    }
    const broker = await Aedes.createBroker(
      e.open
        ? {}
        : {
            authenticate: (client, username, password, done) => done(...this.authenticate(client, username, password)),
            authorizePublish: (client, packet, done) => done(this.authorizePublish(client, packet.topic)),
          },
    );
    this.broker = broker;
    broker.on('clientError', (client, err) => this.ctx.logger.debug('embedded broker: client error', { client: client?.id, err: err.message }));
    broker.on('connectionError', (client, err) => this.ctx.logger.debug('embedded broker: connection error', { client: client?.id, err: err.message }));
    // aedes has no packet size limit: a client could make the daemon buffer any size of publish (measured: four
    // anonymous 200 MB publishes took it from 145 MB to 1.3 GB); the fixed header says the size before the body comes
    const maxPacket = e.maxPacketBytes;
    const server = createServer((socket) => {
      // a 'data' listener beside aedes' 'readable' one sees each chunk as aedes reads it, with no stream in between
      // (a Transform in the path delayed every message: the virtual scanner saw 112 late commands instead of 66)
      const limit = new PacketLimit(maxPacket);
      socket.on('data', (chunk: Buffer) => {
        const problem = limit.check(chunk);
        if (!problem) return;
        const t = this.deniedLog.take('packet-size');
        if (t) this.ctx.logger.warn(`embedded broker: connection closed: ${problem}`, { remote: socket.remoteAddress, suppressed: t.suppressed });
        socket.destroy();
      });
      broker.handle(socket);
    });
    this.server = server;
    const { host, port } = e;
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
    this.ctx.logger.info('embedded MQTT broker listening', { url: this.url, access: e.open ? 'open' : 'credentials for publishing under the base topic' });
  }

  private authenticate(client: Client, username: string | undefined, password: Buffer | undefined): [AuthenticateError | null, boolean | null] {
    const refuse = (code: 2 | 4, why: string): [AuthenticateError, null] => {
      const t = this.deniedLog.take(`refused:${why}`);
      if (t) this.ctx.logger.warn('embedded broker: connection refused', { client: clip(client.id), username: clip(username ?? ''), why, suppressed: t.suppressed });
      return [Object.assign(new Error(why), { returnCode: code }) as AuthenticateError, null];
    };
    let role: Role = 'reader';
    if (username === EMBEDDED_DAEMON_USER) {
      if (!same(password, this.daemonPassword)) return refuse(4, 'wrong password for the daemon user');
      role = 'daemon';
    } else if (username !== undefined && username !== '') {
      if (username !== this.ctx.config.mqtt.embedded.controlUsername || !this.controlPassword || !same(password, this.controlPassword))
        return refuse(4, 'unknown user or wrong password');
      role = 'control';
    }
    // a second client with focusd's id would take over its session (MQTT) and mute it
    if (client.id === this.ctx.config.resolved.mqttClientId && role !== 'daemon') return refuse(2, "focusd's client id is reserved");
    this.roles.set(client, role);
    return [null, true];
  }

  private authorizePublish(client: Client | null, topic: string): Error | null {
    const base = this.ctx.config.resolved.baseTopic;
    const role = client ? this.roles.get(client) ?? 'reader' : 'daemon';
    let denied: string | null = null;
    if (topic.startsWith('$SYS/')) denied = '$SYS topics are the broker\'s';
    else if (role === 'daemon') denied = null;
    else if (topic === `${base}/control/request`) denied = role === 'control' ? null : 'control requests need the control user';
    else if (topic === base || topic.startsWith(`${base}/`)) denied = "only focusd publishes under its base topic";
    if (!denied) {
      // each request is logged, counted and answered by the MQTT adapter; here only at debug
      if (role === 'control') this.ctx.logger.debug('embedded broker: control client publish', { client: clip(client?.id ?? ''), topic: clip(topic) });
      return null;
    }
    // throttled per reason: a key per client id or topic let a client that varies them write one line per publish
    const t = this.deniedLog.take(`publish:${role}:${denied}`);
    if (t) this.ctx.logger.warn('embedded broker: publish refused, connection closed', { client: clip(client?.id ?? ''), role, topic: clip(topic), why: denied, suppressed: t.suppressed });
    return new Error(`publish to ${topic.slice(0, 200)} refused: ${denied}`);
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

/** A client-chosen string in a log line: at most 64 characters. */
function clip(s: string): string {
  return s.length <= 64 ? s : `${s.slice(0, 64)}…(${s.length})`;
}

/**
 * Follows the MQTT packets of a byte stream and says as soon as a packet's fixed header announces more than `max`
 * bytes, or its remaining-length field is malformed (more than 4 bytes), before the body has arrived.
 */
export class PacketLimit {
  private state: 'type' | 'length' | 'body' = 'type';
  private length = 0;
  private multiplier = 1;
  private lengthBytes = 0;
  private remaining = 0;
  private failed: string | null = null;

  constructor(private readonly max: number) {}

  /** null while every packet so far is within the limit; else why not (and from then on). */
  check(chunk: Buffer): string | null {
    let i = 0;
    while (!this.failed && i < chunk.length) {
      if (this.state === 'type') {
        i++;
        this.state = 'length';
        this.length = 0;
        this.multiplier = 1;
        this.lengthBytes = 0;
      } else if (this.state === 'length') {
        const b = chunk[i++]!;
        this.length += (b & 127) * this.multiplier;
        this.multiplier *= 128;
        this.lengthBytes++;
        if (b & 128) {
          if (this.lengthBytes >= 4) this.failed = 'malformed MQTT packet length';
          continue;
        }
        if (this.length > this.max) this.failed = `MQTT packet of ${this.length} bytes, more than mqtt.embedded.maxPacketBytes (${this.max})`;
        this.remaining = this.length;
        this.state = this.remaining > 0 ? 'body' : 'type';
      } else {
        const take = Math.min(this.remaining, chunk.length - i);
        i += take;
        this.remaining -= take;
        if (this.remaining === 0) this.state = 'type';
      }
    }
    return this.failed;
  }
}

/** Constant-time comparison of a received password with the expected one. */
function same(got: Buffer | undefined, want: string): boolean {
  if (!got || !want) return false;
  const w = Buffer.from(want, 'utf8');
  return got.length === w.length && timingSafeEqual(got, w);
}
