import { createRequire } from 'node:module';
import type { Component } from '../core/lifecycle.js';
import type { Context } from '../core/context.js';

interface DgramSocket {
  send(buf: Buffer, offset: number, length: number, path: string, cb?: (err?: Error) => void): void;
  on(event: 'error', cb: (err: Error) => void): void;
  close(): void;
}

/**
 * systemd notification protocol (sd_notify(3)): datagrams to $NOTIFY_SOCKET. Node has no AF_UNIX datagram
 * socket, so the small native `unix-dgram` module sends them from this process (systemd's NotifyAccess=main
 * accepts only the main PID, which rules out spawning systemd-notify).
 * Inactive when NOTIFY_SOCKET is unset (not under systemd).
 */
export class SdNotify implements Component {
  readonly name = 'sd-notify';
  private socket: DgramSocket | null = null;
  private path = '';
  private watchdog: NodeJS.Timeout | null = null;
  sent: string[] = [];

  constructor(private readonly ctx: Context, private readonly env: NodeJS.ProcessEnv = process.env) {}

  get active(): boolean {
    return this.socket !== null;
  }

  async start(): Promise<void> {
    const raw = this.env.NOTIFY_SOCKET;
    if (!raw) return;
    // abstract namespace sockets are written "@name" and addressed with a leading NUL byte
    this.path = raw.startsWith('@') ? '\0' + raw.slice(1) : raw;
    const require = createRequire(import.meta.url);
    const unix = require('unix-dgram') as { createSocket(type: 'unix_dgram'): DgramSocket };
    this.socket = unix.createSocket('unix_dgram');
    this.socket.on('error', (err) => this.ctx.logger.warn(`sd_notify: ${err.message}`));
    const usec = Number(this.env.WATCHDOG_USEC ?? 0);
    const forUs = !this.env.WATCHDOG_PID || Number(this.env.WATCHDOG_PID) === process.pid;
    if (usec > 0 && forUs) {
      // ping at half the interval, as sd_watchdog_enabled(3) recommends
      const every = Math.max(500, Math.floor(usec / 2000));
      this.watchdog = setInterval(() => this.notify('WATCHDOG=1'), every);
      this.watchdog.unref();
      this.ctx.logger.info(`systemd watchdog every ${every} ms`);
    }
  }

  notify(state: string): void {
    if (!this.socket) return;
    const buf = Buffer.from(state);
    this.sent.push(state);
    if (this.sent.length > 100) this.sent.shift();
    this.socket.send(buf, 0, buf.length, this.path, (err) => {
      if (err) this.ctx.logger.warn(`sd_notify ${state.split('\n')[0]} failed: ${err.message}`);
    });
  }

  ready(status: string): void {
    this.notify(`READY=1\nSTATUS=${status}\nMAINPID=${process.pid}`);
  }

  stopping(status = 'stopping'): void {
    this.notify(`STOPPING=1\nSTATUS=${status}`);
  }

  status(status: string): void {
    this.notify(`STATUS=${status}`);
  }

  async stop(): Promise<void> {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
    // let queued datagrams go out before closing
    await new Promise((r) => setImmediate(r));
    this.socket?.close();
    this.socket = null;
  }
}
