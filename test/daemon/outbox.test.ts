import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { createControlApi, MqttAdapter } from '../../adapters/mqtt.js';
import { Store } from '../../adapters/store.js';
import { Controller } from '../../daemon/controller.js';
import type { Component } from '../../core/lifecycle.js';
import { Outbox } from '../../daemon/outbox.js';
import type { Action } from '../../core/types.js';
import { MOSQUITTO_URL, uniqueId } from '../helpers/net.js';
import { assertSchema, Collector, makeCtx, outcome, PrivateMosquitto, sleep, tempDir, until } from '../helpers/mqtt-side.js';

const running: Component[] = [];
const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (running.length) await running.pop()!.stop().catch(() => undefined);
  for (const f of cleanup.splice(0)) await f().catch(() => undefined);
});

async function side(url: string, stateDir: string, base: string) {
  const ctx = makeCtx({
    'scanner.id': 'scanner-a',
    'mqtt.url': url,
    'mqtt.baseTopic': base,
    'mqtt.clientId': uniqueId('focusd'),
    'mqtt.reconnectMs': 100,
    'store.dir': stateDir,
  });
  const store = new Store(ctx);
  const adapter = new MqttAdapter(ctx, { statusProvider: () => ({ engine: 'classical' }), control: createControlApi(ctx, store) });
  const outbox = new Outbox(ctx, { store, publisher: adapter });
  const controller = new Controller(ctx);
  for (const c of [store, adapter, outbox, controller]) {
    await c.start(new AbortController().signal);
    running.push(c);
  }
  return { ctx, store, adapter, outbox, topics: adapter.topics };
}

/** A subscriber whose session (and QoS 1 queue) the broker keeps while it is away. */
async function persistentSubscriber(url: string, topics: string[]) {
  const c = await Collector.connect(url, topics, { protocolVersion: 4, clean: false, clientId: uniqueId('sub') });
  cleanup.push(() => c.close());
  return c;
}

const ids = (c: Collector, topic: string) => c.on(topic).map((m) => m.json.id as string);

let seqNo = 0;
/** An isolated blurry tile between sharp ones: the controller answers each with one reacquire. */
function blurry(ctx: ReturnType<typeof makeCtx>, k: number) {
  ctx.events.emit('tile:scored', outcome({ seq: seqNo++, index: 2 * k, d: 0.1 }));
  ctx.events.emit('tile:scored', outcome({ seq: seqNo++, index: 2 * k + 1, d: k % 2 ? 2.5 : -2.5 }));
}

const mkAction = (id: string, ttlMs: number): Action => ({
  id,
  type: 'reacquire',
  z_offset_um: -2,
  target_z_um: 98,
  probe: false,
  scanner: 'scanner-a',
  slide: 'slide-crash',
  scan: 'scan-1',
  tile: { index: 3, row: 0, col: 3, seq: 3, attempt: 0 },
  reason: 'isolated: test',
  why: { rule: 'isolated', detail: 'test', tiles: [{ seq: 3, index: 3, attempt: 0, defocus_um: 2, sign_confidence: 0.9, stage_z_um: 100 }] },
  dry_run: false,
  created_at: new Date().toISOString(),
  expires_at: new Date(Date.now() + ttlMs).toISOString(),
});

describe('durable action outbox', () => {
  it('writes before publishing, deletes after PUBACK, publishes a duplicate id once', async () => {
    const base = uniqueId('focusd-ob');
    cleanup.push(async () => {
      const c = await Collector.connect(MOSQUITTO_URL, []);
      await c.client.publishAsync(`${base}/status`, '', { retain: true, qos: 1 });
      await c.close();
    });
    const s = await side(MOSQUITTO_URL, tempDir(), base);
    const sub = await Collector.connect(MOSQUITTO_URL, [s.topics.action]);
    cleanup.push(() => sub.close());
    let storedBeforePublish = false;
    const a = mkAction(uniqueId('act'), 60_000);
    // the row must exist by the time anything reaches the broker
    const origPublish = s.adapter.publishAction.bind(s.adapter);
    s.adapter.publishAction = (x: Action) => {
      storedBeforePublish = s.store.actionStatus(x.id) === 'queued' && s.store.outboxPending().some((p) => p.id === x.id);
      return origPublish(x);
    };
    s.ctx.events.emit('action', a);
    s.ctx.events.emit('action', a);
    await sub.wait((m) => m.json.id === a.id, 5000, 'action');
    await until(() => s.store.actionStatus(a.id) === 'sent', 5000, 'sent status');
    expect(storedBeforePublish).toBe(true);
    expect(s.store.outboxCount()).toBe(0);
    await sleep(200);
    expect(ids(sub, s.topics.action).filter((i) => i === a.id)).toHaveLength(1);
    assertSchema('action', sub.on(s.topics.action)[0]!.json);
  });

  it('through a broker outage mid-run every action arrives, each id once after dedup; failures are counted', async () => {
    const mosq = new PrivateMosquitto();
    await mosq.start();
    cleanup.push(() => mosq.stop());
    const base = uniqueId('focusd-outage');
    const sub = await persistentSubscriber(mosq.url, [`${base}/action`, `${base}/status`]);
    const s = await side(mosq.url, tempDir(), base);
    for (let k = 0; k < 5; k++) blurry(s.ctx, k);
    await sub.until(() => new Set(ids(sub, s.topics.action)).size === 5, 5000, 'first 5 actions');

    await mosq.stop();
    await until(() => !s.adapter.connected, 5000, 'adapter sees the outage');
    const failuresBefore = s.ctx.metrics.publishFailures;
    for (let k = 5; k < 15; k++) blurry(s.ctx, k);
    // decided and durable, not published: the broker is gone
    expect(s.store.outboxCount()).toBe(10);
    // the tile messages (QoS 0) could not go out: counted, not silently dropped
    expect(s.ctx.metrics.publishFailures - failuresBefore).toBe(20);
    expect(s.ctx.logLines().some((l) => l.includes('MQTT publish on tile failed'))).toBe(true);

    await mosq.start();
    await sub
      .until(() => new Set(ids(sub, s.topics.action)).size === 15, 15_000, 'all 15 actions after the outage')
      .catch((err) => {
        throw new Error(`${err.message}: got ${new Set(ids(sub, s.topics.action)).size}, outbox ${s.store.outboxCount()}, adapter connected ${s.adapter.connected}, subscriber connected ${sub.client.connected}\n${s.ctx.logLines().filter((l) => /outbox|MQTT/.test(l)).slice(-15).join('\n')}`);
      });
    await until(() => s.store.outboxCount() === 0, 5000, 'outbox drained');
    const all = ids(sub, s.topics.action);
    expect(new Set(all).size).toBe(15);
    for (const m of sub.on(s.topics.action)) assertSchema('action', m.json);
    // order of decision is kept
    const seqs = [...new Map(sub.on(s.topics.action).map((m) => [m.json.id, (m.json.tile as { seq: number }).seq])).values()];
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    // online again after the reconnect
    const lastStatus = sub.on(s.topics.status).at(-1)!;
    expect(lastStatus.json.state).toBe('online');
  });

  it('a daemon killed with unacknowledged actions sends them after restart with the same ids; expired ones are reported, not sent', async () => {
    const mosq = new PrivateMosquitto();
    await mosq.start();
    cleanup.push(() => mosq.stop());
    const base = uniqueId('focusd-crash');
    const stateDir = tempDir();
    const sub = await persistentSubscriber(mosq.url, [`${base}/action`, `${base}/error`]);

    const child = fork(fileURLToPath(new URL('../helpers/outbox-child.ts', import.meta.url)), [], {
      execArgv: ['--import', 'tsx'],
      env: { ...process.env, CHILD_MQTT_URL: mosq.url, CHILD_BASE: base, CHILD_CLIENT_ID: uniqueId('child'), CHILD_STATE_DIR: stateDir },
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    });
    const exited = new Promise<NodeJS.Signals | null>((res) => child.once('exit', (_c, sig) => res(sig)));
    cleanup.push(async () => void child.kill('SIGKILL'));
    const replies: Record<string, unknown>[] = [];
    child.on('message', (m) => replies.push(m as Record<string, unknown>));
    await until(() => replies.some((r) => r.ready), 30_000, 'child ready');

    await mosq.stop();
    // the child notices the broker is gone a moment later (socket close); only then is this a test of the outbox
    await until(() => {
      child.send({ query: true });
      return replies.some((r) => r.connected === false);
    }, 10_000, 'child sees the broker down');
    const live = [mkAction(uniqueId('keep'), 60_000), mkAction(uniqueId('keep'), 60_000), mkAction(uniqueId('keep'), 60_000)];
    const doomed = mkAction(uniqueId('doomed'), 800);
    child.send({ emit: [live[0], doomed, live[1], live[2]] });
    await until(() => replies.some((r) => r.pending === 4), 10_000, 'child stored 4 actions');
    expect(replies.find((r) => r.pending === 4)!.connected).toBe(false);
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    await sleep(1000); // the doomed action expires while the daemon is dead

    await mosq.start();
    const s = await side(mosq.url, stateDir, base);
    await sub.until(() => ids(sub, s.topics.action).length >= 3, 10_000, 'the 3 live actions after restart');
    const expired = await sub.wait((m) => m.topic === s.topics.error, 10_000, 'expiry report');
    assertSchema('error', expired.json);
    expect(expired.json).toMatchObject({ reason: 'action_expired', action: { id: doomed.id } });
    await until(() => s.store.outboxCount() === 0, 5000, 'outbox drained');
    await sleep(200);
    expect(new Set(ids(sub, s.topics.action))).toEqual(new Set(live.map((a) => a.id)));
    expect(ids(sub, s.topics.action)).not.toContain(doomed.id);
    expect(s.store.actionStatus(doomed.id)).toBe('expired');
    for (const a of live) expect(s.store.actionStatus(a.id)).toBe('sent');
    expect(s.ctx.logLines().some((l) => l.includes('actions pending from before the restart'))).toBe(true);
  });
});
