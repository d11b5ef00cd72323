// The real executable, forked: ZeroMQ in, the real Mosquitto out, signals, sd_notify, HTTP status, systemd unit.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeSchema } from '../../config/load.js';
import type { TileHeader } from '../../core/types.js';
import { encodePng, synthTile } from '../../sim/procedural.js';
import { TileSender } from '../../sim/replay.js';
import { assertSchema, Collector, until } from '../helpers/mqtt-side.js';
import { freePort, MOSQUITTO_URL, uniqueId } from '../helpers/net.js';
import { ROOT, spawnFocusd, type FocusdProcess } from '../helpers/proc.js';

const W = 640;
const H = 480;
let inFocus: Buffer, blurred: Buffer, glass: Buffer;

beforeAll(async () => {
  inFocus = await encodePng(synthTile({ width: W, height: H, seed: 11, kind: 'tissue', defocusUm: 0 }));
  blurred = await encodePng(synthTile({ width: W, height: H, seed: 12, kind: 'tissue', defocusUm: 3.5 }));
  glass = await encodePng(synthTile({ width: W, height: H, seed: 13, kind: 'glass', defocusUm: 0 }));
});

function header(seq: number, over: Partial<TileHeader> = {}): TileHeader {
  return {
    v: 1, scanner: 'it-scanner', slide: 'slide-1', scan: 'scan-1', seq,
    tile: { index: seq, row: Math.floor(seq / 10), col: seq % 10 },
    stage_um: { x: 1000 + (seq % 10) * 140, y: 2000 + Math.floor(seq / 10) * 105, z: 1500 },
    pixel_size_um: 0.22, objective: '20x/0.8', acquired_at: new Date().toISOString(), attempt: 0, format: 'png',
    ...over,
  };
}

interface Started {
  proc: FocusdProcess;
  base: string;
  endpoint: string;
  env: Record<string, string>;
}

async function startDaemon(pattern: 'pull' | 'router', extraEnv: Record<string, string> = {}): Promise<Started> {
  const id = uniqueId('daemon');
  const port = await freePort();
  const env = {
    FOCUSD_SCANNER_ID: id,
    FOCUSD_INGEST_ENDPOINT: `tcp://127.0.0.1:${port}`,
    FOCUSD_INGEST_PATTERN: pattern,
    FOCUSD_MQTT_URL: MOSQUITTO_URL,
    FOCUSD_STATE_DIR: mkdtempSync(join(tmpdir(), 'focusd-daemon-')),
    FOCUSD_REPORT_SCHEDULE: '',
    FOCUSD_LOG_LEVEL: 'debug',
    ...extraEnv,
  };
  const proc = spawnFocusd(['run'], env);
  await proc.waitForLine((l) => typeof l.message === 'string' && l.message.startsWith('focusd ready'), 60_000);
  return { proc, base: `focusd/${id}`, endpoint: env.FOCUSD_INGEST_ENDPOINT, env };
}

const children: FocusdProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.child.exitCode === null) c.child.kill('SIGKILL');
});

describe('focusd run (forked executable)', () => {
  // the default configuration: the shipped CNN bundle on ONNX Runtime
  it('scores tiles sent over ZeroMQ (router) and publishes status, tile, action and error messages that match their schemas', async () => {
    const httpPort = await freePort();
    const d = await startDaemon('router', { FOCUSD_HTTP_PORT: String(httpPort) });
    children.push(d.proc);
    const sub = await Collector.connect(MOSQUITTO_URL, [`${d.base}/#`]);
    const sender = new TileSender({ endpoint: d.endpoint, pattern: 'req', timeoutMs: 30_000 });
    sender.connect();
    try {
      const status = await sub.wait((m) => m.topic === `${d.base}/status`, 10_000, 'retained status');
      expect(status.json.state).toBe('online');
      expect(status.packet.retain).toBe(true);
      assertSchema('status', status.json);

      const r1 = await sender.send(header(0), inFocus);
      const r2 = await sender.send(header(1), blurred);
      const r3 = await sender.send(header(2), glass);
      const bad = await sender.sendFrames([Buffer.from('{"v":1, not json'), Buffer.from('x')]);
      const r4 = await sender.send(header(3), inFocus);
      expect(r1).toMatchObject({ ok: true, verdict: 'in_focus' });
      expect(r2).toMatchObject({ ok: true, verdict: 'out_of_focus' });
      expect(r3).toMatchObject({ ok: true, verdict: 'no_tissue' });
      expect(bad).toMatchObject({ ok: false, reason: 'bad_json' });
      expect(r4).toMatchObject({ ok: true, verdict: 'in_focus' });
      if (r2?.ok) expect(Math.abs(r2.score.defocus_um!)).toBeGreaterThan(1.5);

      await sub.until(() => sub.on(`${d.base}/tile`).length === 4, 10_000, 'four tile messages');
      for (const m of sub.on(`${d.base}/tile`)) assertSchema('tile', m.json);
      expect(sub.on(`${d.base}/tile`).map((m) => m.json.verdict)).toEqual(['in_focus', 'out_of_focus', 'no_tissue', 'in_focus']);
      const action = await sub.wait((m) => m.topic === `${d.base}/action`, 10_000, 'an action for the blurred tile');
      assertSchema('action', action.json);
      expect(action.packet.qos).toBe(1);
      expect((action.json.tile as { seq: number }).seq).toBe(1);
      const error = await sub.wait((m) => m.topic === `${d.base}/error`, 10_000, 'the bad_json error');
      assertSchema('error', error.json);
      expect(error.json.reason).toBe('bad_json');

      // every tile's log lines carry scanner, slide, tile and seq
      const tileLine = d.proc.lines.find((l) => l.message === 'tile out_of_focus');
      expect(tileLine).toMatchObject({ scanner: 'it-scanner', slide: 'slide-1', tile: 1, seq: 1 });

      const st = (await (await fetch(`http://127.0.0.1:${httpPort}/status`)).json()) as Record<string, any>;
      expect(st.state).toBe('online');
      expect(st.metrics.scored).toBe(4);
      expect(st.metrics.rejected_by_reason).toEqual({ bad_json: 1 });
      expect(String(st.engine)).toMatch(/./);
      expect((await fetch(`http://127.0.0.1:${httpPort}/healthz`)).status).toBe(200);
      expect(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text()).toMatch(/focusd_messages_rejected_total\{reason="bad_json"\} 1/);
    } finally {
      await sender.close();
      d.proc.child.kill('SIGTERM');
      expect((await d.proc.exited).code).toBe(0);
      const offline = await sub.wait((m) => m.topic === `${d.base}/status` && m.json.state === 'offline', 10_000, 'offline status');
      assertSchema('status', offline.json);
      await sub.close();
    }
  });

  it('drains admitted tiles on SIGTERM and exits 0', async () => {
    const d = await startDaemon('pull', { FOCUSD_QUEUE_SIZE: '4', FOCUSD_SCORER: 'classical' });
    children.push(d.proc);
    const sub = await Collector.connect(MOSQUITTO_URL, [`${d.base}/tile`]);
    const sender = new TileSender({ endpoint: d.endpoint, pattern: 'push', timeoutMs: 10_000 });
    sender.connect();
    for (let i = 0; i < 8; i++) await sender.send(header(i), i % 2 ? blurred : inFocus);
    // signal while tiles are still queued or being scored
    await d.proc.waitForLine((l) => l.message === 'tile in_focus' || l.message === 'tile out_of_focus');
    d.proc.child.kill('SIGTERM');
    const { code } = await d.proc.exited;
    await sender.close();
    expect(code).toBe(0);
    const stopped = d.proc.lines.find((l) => l.message === 'focusd stopped') as { undrained: number; metrics: Record<string, number> };
    expect(stopped.undrained).toBe(0);
    expect(d.proc.lines.some((l) => typeof l.message === 'string' && l.message.startsWith('drained in'))).toBe(true);
    // every tile the daemon took in was scored and published before it went offline
    expect(stopped.metrics.scored).toBe(stopped.metrics.received);
    await until(() => sub.on(`${d.base}/tile`).length === stopped.metrics.scored, 5000, 'tile messages of every scored tile');
    await sub.close();
  });

  it('leaves a retained offline status through the last will when killed with SIGKILL', async () => {
    const d = await startDaemon('pull', { FOCUSD_SCORER: 'classical' });
    children.push(d.proc);
    const first = await Collector.connect(MOSQUITTO_URL, [`${d.base}/status`]);
    await first.wait((m) => m.json.state === 'online', 10_000, 'online');
    await first.close();
    d.proc.child.kill('SIGKILL');
    await d.proc.exited;
    // a second client, connecting afterwards, gets the retained will
    const second = await Collector.connect(MOSQUITTO_URL, []);
    await second.client.subscribeAsync(`${d.base}/status`, { qos: 1 });
    const m = await second.wait((x) => x.json.state === 'offline', 15_000, 'retained offline from the last will');
    expect(m.packet.retain).toBe(true);
    assertSchema('status', m.json);
    await second.close();
  });

  it('speaks sd_notify: READY after bind and connect, WATCHDOG pings, STOPPING on SIGTERM', async () => {
    const require = createRequire(import.meta.url);
    const unix = require('unix-dgram') as {
      createSocket(t: 'unix_dgram', cb: (msg: Buffer) => void): { bind(p: string): void; close(): void; on(e: string, cb: (e: Error) => void): void };
    };
    const path = join(mkdtempSync(join(tmpdir(), 'focusd-notify-')), 'notify.sock');
    const got: string[] = [];
    const sock = unix.createSocket('unix_dgram', (msg) => got.push(msg.toString()));
    sock.on('error', () => undefined);
    sock.bind(path);
    try {
      const d = await startDaemon('pull', { NOTIFY_SOCKET: path, WATCHDOG_USEC: '1000000', FOCUSD_SCORER: 'classical' });
      children.push(d.proc);
      await until(() => got.some((m) => m.includes('READY=1')), 5000, 'READY=1');
      await until(() => got.some((m) => m === 'WATCHDOG=1'), 5000, 'WATCHDOG=1');
      expect(got.find((m) => m.includes('READY=1'))).toMatch(/STATUS=scoring pull tcp:\/\/127\.0\.0\.1:\d+/);
      d.proc.child.kill('SIGTERM');
      expect((await d.proc.exited).code).toBe(0);
      expect(got.some((m) => m.startsWith('STOPPING=1'))).toBe(true);
    } finally {
      sock.close();
    }
  });

  it('refuses to start on a bad configuration, naming the key (exit 78)', async () => {
    const proc = spawnFocusd(['run'], { FOCUSD_INGEST_PATTERN: 'publish', FOCUSD_TOLERANCE_UM: '0' });
    const { code } = await proc.exited;
    expect(code).toBe(78);
    const err = proc.stderr.join('');
    expect(err).toMatch(/ingest\.pattern:/);
    expect(err).toMatch(/decision\.toleranceUm:/);
  });
});

const analyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((p) => existsSync(p));
describe.runIf(analyze)('systemd unit', () => {
  it('passes systemd-analyze verify', () => {
    // verify needs the ExecStart binary to exist: point it at this checkout
    const unit = readFileSync(join(ROOT, 'systemd/focusd.service'), 'utf8').replace('/usr/bin/node /opt/focusd/bin/focusd.js', `${process.execPath} ${join(ROOT, 'bin/focusd.js')}`);
    const dir = mkdtempSync(join(tmpdir(), 'focusd-unit-'));
    writeFileSync(join(dir, 'focusd.service'), unit);
    const r = spawnSync(analyze!, ['verify', join(dir, 'focusd.service')], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    // warnings about the unit itself name its file and line
    expect(r.stderr).not.toMatch(/focusd\.service:\d+:/);
    expect(unit).toMatch(/^Type=notify$/m);
    expect(unit).toMatch(/^WatchdogSec=/m);
    expect(unit).toMatch(/^CapabilityBoundingSet=$/m);
    // the drain deadline (config default) must fit inside TimeoutStopSec
    const stopSec = Number(/^TimeoutStopSec=(\d+)s$/m.exec(unit)![1]);
    expect(Number(describeSchema().find((k) => k.key === 'shutdown.drainTimeoutMs')!.default) + 5000).toBeLessThanOrEqual(stopSec * 1000);
  });
});
