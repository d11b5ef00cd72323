// Health tells the truth (issue 10): the forked daemon's /healthz, /metrics and retained status degrade, with the
// reason, while its private Mosquitto is down (and actions pile up in the outbox), and while its state directory
// (a 2 MiB tmpfs mounted by the test, then filled) cannot take writes; both recover without a restart.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { TileSender } from '../../sim/replay.js';
import { getJson, scanTiles, startDaemon, stopDaemon, tileHeader, type RunningDaemon } from '../helpers/daemon-run.js';
import { assertSchema, Collector, PrivateMosquitto } from '../helpers/mqtt-side.js';
import { MOSQUITTO_URL } from '../helpers/net.js';

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

/** Polls /healthz until pred holds; returns that answer. */
async function waitHealthz(d: RunningDaemon, pred: (code: number, body: Record<string, any>) => boolean, what: string, ms = 15_000) {
  const end = Date.now() + ms;
  let last: { code: number; body: Record<string, any> } = { code: 0, body: {} };
  while (Date.now() < end) {
    last = await getJson(`${d.http}/healthz`);
    if (pred(last.code, last.body)) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}; last /healthz: ${last.code} ${JSON.stringify(last.body)}`);
}

const reasons = (b: Record<string, any>) => (b.reasons as Array<{ reason: string }>).map((r) => r.reason).sort();

describe('health (forked daemon)', () => {
  it('degrades with mqtt_disconnected and outbox_backlog during a broker outage; healthy and online again after it', async () => {
    const mosq = new PrivateMosquitto();
    await mosq.start();
    cleanup.push(() => mosq.stop());
    const d = await startDaemon({ FOCUSD_MQTT_URL: mosq.url, FOCUSD_HEALTH_OUTBOX_BACKLOG: '1' });
    cleanup.push(async () => void (await stopDaemon(d)));
    expect(await waitHealthz(d, (c) => c === 200, 'healthy')).toMatchObject({ body: { ready: true, healthy: true, reasons: [] } });

    await mosq.stop();
    const down = await waitHealthz(d, (c, b) => c === 503 && reasons(b).includes('mqtt_disconnected'), 'mqtt_disconnected');
    expect(down.body.ready).toBe(true);
    await d.proc.waitForLine((l) => typeof l.message === 'string' && l.message.startsWith('health: degraded (mqtt_disconnected'), 5000);
    expect(await (await fetch(`${d.http}/metrics`)).text()).toMatch(/focusd_healthy 0\n[\s\S]*focusd_health_degraded\{reason="mqtt_disconnected"\} 1/);

    // blurred tiles while the broker is away: their actions wait in the outbox beyond health.outboxBacklog
    const { blurred } = await scanTiles();
    const sender = new TileSender({ endpoint: d.endpoint, pattern: 'req', timeoutMs: 30_000 });
    sender.connect();
    cleanup.push(() => sender.close());
    for (let i = 0; i < 12; i += 4) expect(await sender.send(tileHeader(i, d.id, `slide-${i}`), blurred)).toMatchObject({ ok: true, verdict: 'out_of_focus' });
    const backlog = await waitHealthz(d, (c, b) => c === 503 && reasons(b).includes('outbox_backlog'), 'outbox_backlog');
    expect(reasons(backlog.body)).toEqual(['mqtt_disconnected', 'outbox_backlog']);
    const st = await getJson(`${d.http}/status`);
    expect(st.body.health.ok).toBe(false);
    expect(st.body.mqtt.connected).toBe(false);

    await mosq.start();
    await waitHealthz(d, (c) => c === 200, 'healthy after the broker is back and the outbox drained', 20_000);
    // the retained status a newcomer sees says online and healthy
    const sub = await Collector.connect(mosq.url, [`${d.base}/status`]);
    cleanup.push(() => sub.close());
    const status = await sub.wait((m) => m.json.state === 'online' && (m.json.health as { ok: boolean })?.ok === true, 10_000, 'online, healthy retained status');
    assertSchema('status', status.json);
  });

  it('degrades with store_write_failed while the state directory is full, keeps scoring and publishing, recovers when space is back', async () => {
    const mnt = mkdtempSync(join(tmpdir(), 'focusd-tmpfs-'));
    // a 2 MiB filesystem the test can fill (as root a chmod would not stop writes); needs root / CAP_SYS_ADMIN
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mnt]);
    cleanup.push(() => {
      execFileSync('umount', ['-l', mnt]);
      rmdirSync(mnt);
    });
    const d = await startDaemon({ FOCUSD_MQTT_URL: MOSQUITTO_URL, FOCUSD_STATE_DIR: mnt, FOCUSD_SCORER: 'classical' });
    cleanup.push(async () => void (await stopDaemon(d)));
    await waitHealthz(d, (c) => c === 200, 'healthy');
    const sub = await Collector.connect(MOSQUITTO_URL, [`${d.base}/tile`, `${d.base}/status`]);
    cleanup.push(() => sub.close());

    // fill the filesystem: dd stops with ENOSPC
    const filler = join(mnt, 'filler');
    try {
      execFileSync('dd', ['if=/dev/zero', `of=${filler}`, 'bs=64k'], { stdio: 'ignore' });
    } catch {
      /* dd exits 1 at ENOSPC: that is the point */
    }
    const { inFocus } = await scanTiles();
    const sender = new TileSender({ endpoint: d.endpoint, pattern: 'req', timeoutMs: 30_000 });
    sender.connect();
    cleanup.push(() => sender.close());
    let seq = 0;
    for (; seq < 40; seq++) {
      expect(await sender.send(tileHeader(seq, d.id), inFocus)).toMatchObject({ ok: true });
      const h = await getJson(`${d.http}/healthz`);
      if (h.code === 503) break;
    }
    const full = await waitHealthz(d, (c, b) => c === 503 && reasons(b).includes('store_write_failed'), 'store_write_failed');
    expect(full.body.reasons[0].detail).toMatch(/tile history write failed: .*(full|disk)/i);
    const st = await getJson(`${d.http}/status`);
    expect(st.body.metrics.store_write_failures).toBeGreaterThan(0);
    expect(await (await fetch(`${d.http}/metrics`)).text()).toMatch(/focusd_store_write_failures_total [1-9]/);
    // still scoring and publishing: every tile message arrived
    await sub.until(() => sub.on(`${d.base}/tile`).length === seq + 1, 10_000, 'every tile published');
    const degraded = await sub.wait((m) => m.topic === `${d.base}/status` && (m.json.health as { ok: boolean })?.ok === false, 10_000, 'degraded status');
    assertSchema('status', degraded.json);

    rmSync(filler);
    expect(await sender.send(tileHeader(++seq, d.id), inFocus)).toMatchObject({ ok: true });
    await waitHealthz(d, (c) => c === 200, 'healthy once writes succeed again');
    await d.proc.waitForLine((l) => l.message === 'store: writes succeed again', 5000);
  });
});
