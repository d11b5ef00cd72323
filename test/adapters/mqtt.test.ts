import { execFileSync } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { EmbeddedBroker } from '../../adapters/embedded-broker.js';
import { createControlApi, MqttAdapter, redactConfig } from '../../adapters/mqtt.js';
import type { Component } from '../../core/lifecycle.js';
import { buildMqttSide } from '../../daemon/wiring.js';
import { freePort, MOSQUITTO_URL, uniqueId } from '../helpers/net.js';
import { assertSchema, Collector, makeCtx, outcome, PrivateMosquitto, sleep, tempDir, until } from '../helpers/mqtt-side.js';

const running: Component[] = [];
const collectors: Collector[] = [];
const bases: string[] = [];
afterEach(async () => {
  for (const c of collectors.splice(0)) await c.close();
  while (running.length) await running.pop()!.stop().catch(() => undefined);
  // leave no retained messages behind on the shared broker
  if (bases.length) {
    const c = await mqtt.connectAsync(MOSQUITTO_URL);
    for (const b of bases.splice(0)) for (const t of ['status', 'stats']) await c.publishAsync(`${b}/${t}`, '', { retain: true, qos: 1 });
    await c.endAsync();
  }
});

const statusProvider = () => ({ engine: 'classical', model: { name: 'test-model', version: '1.0.0' }, version: '0.1.0', pattern: 'pull', endpoint: 'tcp://127.0.0.1:5555' });

/** store → mqtt → outbox → controller, as the daemon wires them, against a real broker. */
async function side(overrides: Record<string, unknown> = {}, url?: string) {
  const base = uniqueId('focusd-test');
  bases.push(base);
  const ctx = makeCtx({
    'scanner.id': 'scanner-a',
    'mqtt.url': url ?? MOSQUITTO_URL,
    'mqtt.baseTopic': base,
    'mqtt.clientId': uniqueId('focusd'),
    'mqtt.reconnectMs': 100,
    'store.dir': tempDir(),
    ...overrides,
  });
  // the daemon's own wiring: store → embedded broker (no-op here) → mqtt → outbox → controller → reports
  const built = buildMqttSide(ctx, { status: statusProvider });
  const signal = new AbortController().signal;
  for (const c of built.components) {
    await c.start(signal);
    running.push(c);
  }
  const { store, mqtt: adapter, outbox, controller } = built;
  return { ctx, base, store, adapter, outbox, controller, topics: adapter.topics };
}

describe('MQTT adapter (real Mosquitto)', () => {
  it('publishes a retained online status on connect, and offline retained on a graceful stop', async () => {
    const s = await side();
    const sub = await Collector.connect(MOSQUITTO_URL, [s.topics.status]);
    collectors.push(sub);
    const online = await sub.wait((m) => m.json.state === 'online', 5000, 'retained online');
    expect(online.packet.retain).toBe(true);
    assertSchema('status', online.json);
    expect(online.json).toMatchObject({ engine: 'classical', version: '0.1.0', runtime: { paused: false, dryRun: false, toleranceUm: 1 } });
    await s.adapter.stop();
    const off = await sub.wait((m) => m.json.state === 'offline', 5000, 'offline');
    assertSchema('status', off.json);
    expect(off.json.reason).toBe('stopped');
    // a late subscriber sees the retained offline
    const late = await Collector.connect(MOSQUITTO_URL, [s.topics.status]);
    collectors.push(late);
    const r = await late.wait(() => true, 5000, 'retained status');
    expect(r.json.state).toBe('offline');
    expect(r.packet.retain).toBe(true);
  });

  it('the last will says offline (retained) after an ungraceful disconnect; online is republished on reconnect', async () => {
    const s = await side();
    const sub = await Collector.connect(MOSQUITTO_URL, [s.topics.status]);
    collectors.push(sub);
    await sub.wait((m) => m.json.state === 'online', 5000, 'online');
    s.adapter.simulateConnectionLoss();
    const will = await sub.wait((m) => m.json.state === 'offline', 10_000, 'last will');
    assertSchema('status', will.json);
    expect(will.json.reason).toBe('connection_lost');
    const idx = sub.messages.indexOf(will);
    const again = await sub.wait((m) => m.json.state === 'online' && sub.messages.indexOf(m) > idx, 10_000, 'online after reconnect');
    assertSchema('status', again.json);
    // what a newcomer sees now is online again
    const late = await Collector.connect(MOSQUITTO_URL, [s.topics.status]);
    collectors.push(late);
    expect((await late.wait(() => true, 5000)).json.state).toBe('online');
  });

  it('tile, error, stats and action messages match their schemas', async () => {
    const s = await side({ 'mqtt.statsIntervalS': 1 });
    const sub = await Collector.connect(MOSQUITTO_URL, [`${s.base}/#`]);
    collectors.push(sub);
    // a few sharp tiles on a raster, so the focus surface predicts; then one blurry tile
    for (let i = 0; i < 6; i++) s.ctx.events.emit('tile:scored', outcome({ seq: i, index: i, d: 0.1 * (i % 3) }));
    s.ctx.events.emit('tile:scored', outcome({ seq: 6, index: 6, d: 3.2 }));
    s.ctx.events.emit('tile:rejected', { reason: 'invalid_header', detail: 'header.seq: must be integer', received: { header: { seq: 'x' }, frames: 2, bytes: [40, 100] } });
    s.ctx.metrics.scored = 7;
    await sub.until(() => sub.on(s.topics.tile).length === 7, 5000, '7 tiles');
    for (const m of sub.on(s.topics.tile)) assertSchema('tile', m.json);
    const last = sub.on(s.topics.tile)[6]!.json;
    expect(last).toMatchObject({ seq: 6, verdict: 'out_of_focus', defocus_um: 3.2, attempt: 0, stage_um: { z: 100 }, model: { name: 'test-model' } });
    expect(last.predicted).toMatchObject({ model: 'plane', points: 6 });
    expect(sub.on(s.topics.tile)[0]!.json.predicted).toBeNull();

    const err = await sub.wait((m) => m.topic === s.topics.error, 5000, 'error');
    assertSchema('error', err.json);
    expect(err.json).toMatchObject({ reason: 'invalid_header', received: { frames: 2 } });
    s.ctx.events.emit('action:refused', { type: 'z_offset', limit: 'max_cumulative', detail: 'slide total would be 5.5 µm (limit 5)', scanner: 'scanner-a', slide: 'slide-1', tile: 9, seq: 9, suppressed: 2 });
    const refused = await sub.wait((m) => m.topic === s.topics.error && m.json.reason === 'action_refused', 5000, 'action_refused');
    assertSchema('error', refused.json);
    expect(refused.json.detail).toMatch(/z_offset for slide-1 tile 9 refused by max_cumulative: .*\(2 more since the last report\)/);

    const act = await sub.wait((m) => m.topic === s.topics.action, 5000, 'action');
    assertSchema('action', act.json);
    expect(act.json).toMatchObject({ type: 'reacquire', z_offset_um: -3.2, tile: { index: 6, seq: 6 }, dry_run: false });
    expect(act.packet.qos).toBe(1);
    expect(act.json.predicted).toMatchObject({ model: 'plane' });

    const stats = await sub.wait((m) => m.topic === s.topics.stats, 5000, 'stats');
    assertSchema('stats', stats.json);
    expect(stats.json).toMatchObject({ engine: 'classical', scored: 7, runtime: { dryRun: false } });
    expect(typeof stats.json.outbox_pending).toBe('number');
    expect(stats.packet.retain).toBe(false); // live delivery; the retained copy is what late subscribers get
    await until(() => s.store.outboxCount() === 0, 5000, 'outbox empty after PUBACK');
    expect(s.ctx.metrics.publishFailures).toBe(0);
    expect(s.ctx.metrics.published).toBeGreaterThanOrEqual(10);
  });

  it('answers every control request on its response topic with the caller’s correlation data (MQTT 5)', async () => {
    const s = await side();
    s.ctx.events.emit('tile:scored', outcome({ seq: 0, slide: 'S-42', d: 0.2 }));
    s.ctx.events.emit('tile:scored', outcome({ seq: 1, slide: 'S-42', d: 2.2 }));
    const replyTopic = `${s.base}/replies/${uniqueId('me')}`;
    const sub = await Collector.connect(MOSQUITTO_URL, [replyTopic, s.topics.status]);
    collectors.push(sub);
    await sub.wait((m) => m.topic === s.topics.status, 5000);
    let n = 0;
    const ask = async (body: unknown) => {
      const corr = Buffer.from(`corr-${n++}-${uniqueId()}`);
      await sub.client.publishAsync(s.topics.request, typeof body === 'string' ? body : JSON.stringify(body), {
        qos: 1,
        properties: { responseTopic: replyTopic, correlationData: corr },
      });
      const r = await sub.wait((m) => m.topic === replyTopic && Buffer.compare(m.packet.properties?.correlationData ?? Buffer.alloc(0), corr) === 0, 5000, `answer to ${JSON.stringify(body)}`);
      assertSchema('control-response', r.json);
      return r.json;
    };
    expect(await ask({ command: 'pause' })).toMatchObject({ ok: true, command: 'pause', result: { runtime: { paused: true } } });
    expect(s.ctx.runtime.paused).toBe(true);
    // a runtime change is also visible in the retained status
    await sub.wait((m) => m.topic === s.topics.status && (m.json.runtime as { paused: boolean }).paused === true, 5000, 'status paused');
    expect(await ask({ command: 'resume' })).toMatchObject({ ok: true });
    expect(s.ctx.runtime.paused).toBe(false);
    expect(await ask({ schema: 'focusd/control-request/1', command: 'set_tolerance', tolerance_um: 1.5 })).toMatchObject({ ok: true, result: { runtime: { toleranceUm: 1.5 } } });
    expect(s.ctx.runtime.toleranceUm).toBe(1.5);
    expect(await ask({ command: 'set_dry_run', dry_run: true })).toMatchObject({ ok: true });
    expect(s.ctx.runtime.dryRun).toBe(true);
    const cfg = await ask({ command: 'get_config' });
    expect(cfg).toMatchObject({ ok: true, result: { scanner: { id: 'scanner-a' }, mqtt: { baseTopic: s.base } } });
    const sum = await ask({ command: 'get_slide_summary', slide: 'S-42' });
    expect(sum).toMatchObject({ ok: true, result: { slide: 'S-42', tiles: 2, verdicts: { out_of_focus: 1 } } });
    expect(await ask({ command: 'get_status' })).toMatchObject({ ok: true, result: { engine: 'classical', runtime: { dryRun: true } } });

    // invalid requests get an error response, not silence
    expect(await ask('{not json')).toMatchObject({ ok: false, command: null, error: { reason: 'bad_json' } });
    const unknown = await ask({ command: 'self_destruct' });
    expect(unknown).toMatchObject({ ok: false, error: { reason: 'invalid_request' } });
    expect((unknown.error as { detail: string }).detail).toMatch(/pause/);
    expect(await ask({ command: 'set_tolerance' })).toMatchObject({ ok: false, error: { reason: 'invalid_request' } });
    expect(await ask({ command: 'set_tolerance', tolerance_um: -1 })).toMatchObject({ ok: false });
    expect(s.ctx.runtime.toleranceUm).toBe(1.5);
    expect(await ask({ command: 'get_slide_summary', slide: 'never-seen' })).toMatchObject({ ok: false, error: { reason: 'not_found' } });
    expect(await ask([1, 2])).toMatchObject({ ok: false, error: { reason: 'invalid_request' } });
  });

  it('MQTT 3.1.1 callers put response_topic and correlation_id in the body; no response topic → control/response', async () => {
    const s = await side();
    const sub = await Collector.connect(MOSQUITTO_URL, [`${s.base}/#`], { protocolVersion: 4 });
    collectors.push(sub);
    await sub.wait((m) => m.topic === s.topics.status, 5000);
    await sub.client.publishAsync(s.topics.request, JSON.stringify({ command: 'get_status', correlation_id: 'abc-1', response_topic: `${s.base}/mine` }), { qos: 1 });
    const r = await sub.wait((m) => m.topic === `${s.base}/mine`, 5000, 'answer on body response_topic');
    expect(r.json).toMatchObject({ ok: true, correlation_id: 'abc-1' });
    await sub.client.publishAsync(s.topics.request, 'garbage', { qos: 1 });
    const e = await sub.wait((m) => m.topic === s.topics.response, 5000, 'answer on default response topic');
    assertSchema('control-response', e.json);
    expect(e.json).toMatchObject({ ok: false, error: { reason: 'bad_json' } });
  });

  it('redacts secrets in get_config', () => {
    const out = redactConfig({ mqtt: { password: 'hunter2', passwordFile: '/run/cred', username: 'u' }, resolved: { mqttPassword: 'hunter2' } });
    expect(JSON.stringify(out)).not.toContain('hunter2');
    expect(out).toMatchObject({ mqtt: { passwordFile: '/run/cred', username: 'u' } });
  });

  it('start() honours the abort signal while the broker is unreachable', async () => {
    const port = await freePort();
    const ctx = makeCtx({ 'mqtt.url': `mqtt://127.0.0.1:${port}`, 'mqtt.reconnectMs': 100, 'mqtt.clientId': uniqueId('c') });
    const a = new MqttAdapter(ctx, { statusProvider, control: createControlApi(ctx, { slideSummary: () => null }) });
    const ac = new AbortController();
    const p = a.start(ac.signal);
    await sleep(400);
    ac.abort(new Error('systemd gave up'));
    await expect(p).rejects.toThrow('systemd gave up');
    await a.stop();
    expect(ctx.logLines().some((l) => l.includes('ECONNREFUSED'))).toBe(true);
  });
});

describe('embedded broker (aedes)', () => {
  it('runs in-process and accepts an external subscriber', async () => {
    const port = await freePort();
    const ctx = makeCtx({ 'mqtt.url': 'embedded', 'mqtt.embedded.port': port, 'mqtt.baseTopic': uniqueId('emb'), 'mqtt.clientId': uniqueId('c') });
    const broker = new EmbeddedBroker(ctx);
    const adapter = new MqttAdapter(ctx, { statusProvider, control: createControlApi(ctx, { slideSummary: () => null }) });
    await broker.start(new AbortController().signal);
    running.push(broker);
    await adapter.start(new AbortController().signal);
    running.push(adapter);
    expect(adapter.protocolVersion).toBe(4);
    // an external client over TCP, as mosquitto_sub or the scanner would connect
    const sub = await Collector.connect(`mqtt://127.0.0.1:${port}`, [`${adapter.topics.status}`, `${adapter.topics.tile}`, adapter.topics.response], { protocolVersion: 4 });
    collectors.push(sub);
    const st = await sub.wait(() => true, 5000, 'retained status from the embedded broker');
    assertSchema('status', st.json);
    expect(st.json.state).toBe('online');
    ctx.events.emit('tile:scored', outcome({ seq: 0, d: 0.3 }));
    const t = await sub.wait((m) => m.topic === adapter.topics.tile, 5000, 'tile');
    assertSchema('tile', t.json);
    await sub.client.publishAsync(adapter.topics.request, JSON.stringify({ command: 'pause', correlation_id: 'k' }), { qos: 1 });
    const r = await sub.wait((m) => m.topic === adapter.topics.response, 5000, 'control response');
    expect(r.json).toMatchObject({ ok: true, correlation_id: 'k' });
    expect(ctx.runtime.paused).toBe(true);
    // graceful stop of the adapter: the subscriber sees offline; then the broker closes cleanly
    await adapter.stop();
    running.splice(running.indexOf(adapter), 1);
    await sub.wait((m) => m.json.state === 'offline', 5000, 'offline');
    await broker.stop();
    running.splice(running.indexOf(broker), 1);
    const c = mqtt.connect(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, connectTimeout: 1000 });
    const err = await new Promise<Error>((res) => c.once('error', res));
    c.end(true);
    expect(err.message).toMatch(/ECONNREFUSED/);
  });
});

describe('TLS with client certificate and password (private Mosquitto)', () => {
  it('connects over mqtts with CA, client cert/key and a password file; a wrong password never connects', async () => {
    const dir = tempDir('focusd-tls-');
    chmodSync(dir, 0o755);
    const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
    ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=focusd-test-ca');
    for (const [name, cn] of [['server', '127.0.0.1'], ['client', 'focusd']] as const) {
      ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
      writeFileSync(join(dir, `${name}.ext`), name === 'server' ? 'subjectAltName=IP:127.0.0.1\n' : 'extendedKeyUsage=clientAuth\n');
      ssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`);
    }
    execFileSync('mosquitto_passwd', ['-b', '-c', join(dir, 'passwd'), 'focusd', 's3cret-pw'], { stdio: 'ignore' });
    for (const f of ['ca.crt', 'server.crt', 'server.key', 'passwd']) chmodSync(join(dir, f), 0o644);
    writeFileSync(join(dir, 'pw'), 's3cret-pw\n');
    writeFileSync(join(dir, 'bad-pw'), 'wrong\n');
    const mosq = new PrivateMosquitto({
      scheme: 'mqtts',
      listenerLines: [`cafile ${dir}/ca.crt`, `certfile ${dir}/server.crt`, `keyfile ${dir}/server.key`, 'require_certificate true'],
      globalLines: ['allow_anonymous false', `password_file ${dir}/passwd`],
    });
    await mosq.start();
    try {
      const base = uniqueId('focusd-tls');
      const tls = { 'mqtt.tls.ca': join(dir, 'ca.crt'), 'mqtt.tls.cert': join(dir, 'client.crt'), 'mqtt.tls.key': join(dir, 'client.key'), 'mqtt.username': 'focusd' };
      const ctx = makeCtx({ 'mqtt.url': mosq.url, 'mqtt.baseTopic': base, 'mqtt.clientId': uniqueId('c'), 'mqtt.reconnectMs': 100, 'mqtt.passwordFile': join(dir, 'pw'), ...tls });
      expect(ctx.config.resolved.mqttPassword).toBe('s3cret-pw');
      const a = new MqttAdapter(ctx, { statusProvider, control: createControlApi(ctx, { slideSummary: () => null }) });
      await a.start(new AbortController().signal);
      running.push(a);
      const sub = await Collector.connect(mosq.url, [a.topics.status], {
        ca: readFileSync(join(dir, 'ca.crt')), cert: readFileSync(join(dir, 'client.crt')), key: readFileSync(join(dir, 'client.key')),
        username: 'focusd', password: 's3cret-pw',
      });
      collectors.push(sub);
      assertSchema('status', (await sub.wait((m) => m.json.state === 'online', 5000, 'online over TLS')).json);
      const cfg = createControlApi(ctx, { slideSummary: () => null }).getConfig();
      expect(JSON.stringify(cfg)).not.toContain('s3cret-pw');

      const bad = makeCtx({ 'mqtt.url': mosq.url, 'mqtt.baseTopic': base, 'mqtt.clientId': uniqueId('c'), 'mqtt.reconnectMs': 100, 'mqtt.passwordFile': join(dir, 'bad-pw'), ...tls });
      const b = new MqttAdapter(bad, { statusProvider, control: createControlApi(bad, { slideSummary: () => null }) });
      const ac = new AbortController();
      const p = b.start(ac.signal);
      await until(() => bad.logLines().some((l) => /Not authorized|Bad user name or password/i.test(l)), 5000, 'authentication error logged');
      ac.abort(new Error('gave up'));
      await expect(p).rejects.toThrow('gave up');
      await b.stop();
    } finally {
      while (running.length) await running.pop()!.stop().catch(() => undefined);
      for (const c of collectors.splice(0)) await c.close();
      await mosq.stop();
    }
  });
});
