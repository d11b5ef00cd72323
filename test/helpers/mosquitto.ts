// A private Mosquitto broker on a free loopback port: every test run starts its own (test/global-setup.ts), and
// tests that need an outage, TLS or passwords start another. Debian's `mosquitto` package provides the binary;
// `npm test` installs it (scripts/test-setup.sh) where it can.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, chmodSync, constants, mkdtempSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { freePort } from '../../core/net.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The mosquitto executable: /usr/sbin/mosquitto (Debian) or one on the PATH; a clear error naming the package if none. */
export function mosquittoBinary(): string {
  const dirs = ['/usr/sbin', '/usr/local/sbin', ...(process.env.PATH ?? '').split(delimiter).filter(Boolean)];
  for (const d of dirs) {
    try {
      accessSync(join(d, 'mosquitto'), constants.X_OK);
      return join(d, 'mosquitto');
    } catch {
      // not here; try the next directory
    }
  }
  throw new Error('the tests need the Mosquitto broker binary: apt-get install mosquitto (npm test runs scripts/test-setup.sh, which does it as root)');
}

export class PrivateMosquitto {
  private proc: ChildProcess | null = null;
  readonly dir = mkdtempSync(join(tmpdir(), 'focusd-mosq-'));
  port = 0;

  /** listenerLines: extra settings of the listener (TLS); globalLines replace allow_anonymous (authentication). */
  constructor(private readonly opts: { listenerLines?: string[]; globalLines?: string[]; scheme?: string } = {}) {}

  get url(): string {
    return `${this.opts.scheme ?? 'mqtt'}://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    if (!this.port) this.port = await freePort();
    const conf = join(this.dir, 'mosquitto.conf');
    // mosquitto started as root drops to its own user, which must still write the persistence file here
    chmodSync(this.dir, 0o777);
    // persistence: the subscriber's session and its queued QoS 1 messages survive the restart
    writeFileSync(
      conf,
      [`listener ${this.port} 127.0.0.1`, ...(this.opts.listenerLines ?? []), ...(this.opts.globalLines ?? ['allow_anonymous true']), 'persistence true', `persistence_location ${this.dir}/`, 'autosave_interval 1', 'log_dest none', ''].join('\n'),
    );
    const proc = spawn(mosquittoBinary(), ['-c', conf], { stdio: 'ignore' });
    this.proc = proc;
    const end = Date.now() + 10_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`mosquitto exited with ${proc.exitCode}`);
      try {
        await new Promise<void>((res, rej) => {
          const sock = connect(this.port, '127.0.0.1', () => (sock.destroy(), res()));
          sock.once('error', rej);
        });
        return;
      } catch {
        if (Date.now() > end) throw new Error('mosquitto did not come up');
        await sleep(50);
      }
    }
  }

  /** SIGTERM: mosquitto saves its persistence file and exits; clients see the connection drop. */
  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null) return;
    await new Promise<void>((res) => {
      p.once('exit', () => res());
      p.kill('SIGTERM');
    });
  }
}
