import { execFileSync } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { describe, expect, it } from 'vitest';
import { EmbeddedBroker } from '../../adapters/embedded-broker.js';
import { createControlApi, MqttAdapter, redactConfig } from '../../adapters/mqtt.js';
import { buildMqttSide } from '../../daemon/wiring.js';
import { freePort, MOSQUITTO_URL, uniqueId } from '../helpers/net.js';
import { assertSchema, Collector, makeCtx, outcome, PrivateMosquitto, sleep, tempDir, until } from '../helpers/mqtt-side.js';
import { mqttTestScope } from '../helpers/mqtt-scope.js';

const { running, collectors, bases } = mqttTestScope();

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
    const replyTopic = `${s.topics.response}/${uniqueId('me')}`;
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
    // no command: the answer says that, not what three other commands would need
    const none = (await ask({ tolerance_um: 2 })) as { error: { detail: string } };
    expect(none.error.detail).toMatch(/command/);
    expect(none.error.detail).not.toMatch(/dry_run|slide/);
  });

  it('MQTT 3.1.1 callers put response_topic and correlation_id in the body; no response topic → control/response', async () => {
    const s = await side();
    const sub = await Collector.connect(MOSQUITTO_URL, [`${s.base}/#`], { protocolVersion: 4 });
    collectors.push(sub);
    await sub.wait((m) => m.topic === s.topics.status, 5000);
    await sub.client.publishAsync(s.topics.request, JSON.stringify({ command: 'get_status', correlation_id: 'abc-1', response_topic: `${s.topics.response}/mine` }), { qos: 1 });
    const r = await sub.wait((m) => m.topic === `${s.topics.response}/mine`, 5000, 'answer on body response_topic');
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
    const pwFile = join(tempDir(), 'control-pw');
    writeFileSync(pwFile, 'ctl-secret\n');
    const { ctx, adapter, broker } = await embedded(port, { 'mqtt.embedded.controlPasswordFile': pwFile });
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
    // control requests need the control user (mqtt.embedded.controlUsername + controlPasswordFile)
    const ctl = await Collector.connect(`mqtt://127.0.0.1:${port}`, [], { protocolVersion: 4, username: 'control', password: 'ctl-secret' });
    collectors.push(ctl);
    await ctl.client.publishAsync(adapter.topics.request, JSON.stringify({ command: 'pause', correlation_id: 'k' }), { qos: 1 });
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

describe('control requests cannot mute, crash or redirect focusd (issue 10)', () => {
  /** Six sharp tiles and a blurry one on a fresh slide: a tile message each and one reacquire action. */
  async function stillFlows(s: Awaited<ReturnType<typeof side>>, sub: Collector, slide: string): Promise<void> {
    for (let i = 0; i < 6; i++) s.ctx.events.emit('tile:scored', outcome({ seq: i, index: i, slide, d: 0.1 }));
    s.ctx.events.emit('tile:scored', outcome({ seq: 6, index: 6, slide, d: 3.2 }));
    await sub.wait((m) => m.topic === s.topics.tile && m.json.slide === slide && m.json.seq === 6, 5000, `tile of ${slide}`);
    const act = await sub.wait((m) => m.topic === s.topics.action && m.json.slide === slide, 5000, `action of ${slide}`);
    assertSchema('action', act.json);
  }

  it('a wide mqtt.control.responsePrefix ("focusd/") still never reaches another daemon\'s action, status or control request topic', () => {
    const ctx = makeCtx({ 'mqtt.control.responsePrefix': 'focusd/', 'mqtt.baseTopic': 'focusd/me' });
    const a = new MqttAdapter(ctx, { statusProvider, control: createControlApi(ctx, { slideSummary: () => null }) });
    for (const t of ['focusd/other/action', 'focusd/other/status', 'focusd/other/control/request', 'focusd/other/tile', 'focusd/x/y/error'])
      expect(a.responseTopicProblem(t), t).toMatch(/ends like a focusd topic/);
    expect(a.responseTopicProblem('focusd/me/action')).toMatch(/own topics/);
    expect(a.responseTopicProblem('focusd/lims/answers')).toBeNull();
    expect(a.responseTopicProblem('focusd/other/control/response/lims')).toBeNull();
  });

  it('refuses response topics with NUL, wildcards, over 256 bytes, focusd’s own or another scanner’s topics; answers on the default topic; output keeps flowing', async () => {
    const s = await side();
    const other = uniqueId('focusd-test-other');
    bases.push(other);
    const sub = await Collector.connect(MOSQUITTO_URL, [`${s.base}/#`, `${other}/#`], { protocolVersion: 4 });
    collectors.push(sub);
    await sub.wait((m) => m.topic === s.topics.status, 5000, 'status');
    const bad: Array<[string, string]> = [
      ['NUL', `${s.topics.response}/a\u0000b`],
      ['300 bytes', `${s.topics.response}/${'x'.repeat(300)}`],
      ['action topic', s.topics.action],
      ['status topic', s.topics.status],
      ['request topic', s.topics.request],
      ['another scanner', `${other}/action`],
      ["another scanner's answers", `${other}/control/response/x`],
      ['wildcard', `${s.topics.response}/#`],
      ['lone surrogate', `${s.topics.response}/\ud800`],
      ['newline', `${s.topics.response}/a\nb`],
      ['not a string', 42 as unknown as string],
    ];
    for (const [i, [what, rt]] of bad.entries()) {
      await sub.client.publishAsync(s.topics.request, JSON.stringify({ command: 'pause', correlation_id: `c${i}`, response_topic: rt }), { qos: 1 });
      const r = await sub.wait((m) => m.topic === s.topics.response && m.json.correlation_id === `c${i}`, 5000, `answer to ${what} on the default topic`);
      assertSchema('control-response', r.json);
      expect(r.json, what).toMatchObject({ ok: false, command: 'pause', error: { reason: 'invalid_response_topic' } });
      expect(s.ctx.runtime.paused, what).toBe(false);
      await stillFlows(s, sub, `slide-${i}`);
    }
    // a 70 000-character topic makes a request beyond mqtt.control.maxRequestBytes: refused unparsed
    await sub.client.publishAsync(s.topics.request, JSON.stringify({ command: 'pause', response_topic: 'x'.repeat(70_000) }), { qos: 1 });
    const big = await sub.wait((m) => m.topic === s.topics.response && (m.json.error as { reason?: string })?.reason === 'too_large', 5000, 'too_large');
    assertSchema('control-response', big.json);
    await stillFlows(s, sub, 'slide-big');

    // MQTT 5: the response-topic property is checked the same way, the correlation data still comes back
    const v5 = await Collector.connect(MOSQUITTO_URL, [s.topics.response]);
    collectors.push(v5);
    const corr = Buffer.from(uniqueId('corr'));
    await v5.client.publishAsync(s.topics.request, JSON.stringify({ command: 'resume' }), { qos: 1, properties: { responseTopic: `${other}/control/response/x`, correlationData: corr } });
    const r5 = await v5.wait((m) => Buffer.compare(m.packet.properties?.correlationData ?? Buffer.alloc(0), corr) === 0, 5000, 'MQTT 5 answer');
    expect(r5.json).toMatchObject({ ok: false, error: { reason: 'invalid_response_topic' } });
    // a valid one under the prefix is honoured
    await v5.client.subscribeAsync(`${s.topics.response}/me`, { qos: 1 });
    await v5.client.publishAsync(s.topics.request, JSON.stringify({ command: 'get_status' }), { qos: 1, properties: { responseTopic: `${s.topics.response}/me`, correlationData: corr } });
    expect((await v5.wait((m) => m.topic === `${s.topics.response}/me`, 5000, 'answer under the prefix')).json).toMatchObject({ ok: true });
    // correlation data too long to echo: refused, on the requester's own valid topic, without the data
    await v5.client.publishAsync(s.topics.request, JSON.stringify({ command: 'pause' }), { qos: 1, properties: { responseTopic: `${s.topics.response}/me`, correlationData: Buffer.alloc(1000, 7) } });
    const long = await v5.wait((m) => m.topic === `${s.topics.response}/me` && m.json.ok === false, 5000, 'refusal of long correlation data on the requested topic');
    expect((long.json.error as { detail: string }).detail).toMatch(/correlation data of 1000 bytes/);
    expect(long.packet.properties?.correlationData).toBeUndefined();
    expect(s.ctx.runtime.paused).toBe(false);

    // nothing but actions on the action topic, statuses on the status topic, nothing at all on the other scanner's topics
    expect(sub.on(s.topics.action).every((m) => m.json.schema === 'focusd/action/1')).toBe(true);
    expect(sub.on(s.topics.status).every((m) => m.json.schema === 'focusd/status/1')).toBe(true);
    expect(sub.messages.filter((m) => m.topic.startsWith(`${other}/`))).toEqual([]);
    expect(s.ctx.metrics.controlRejected.get('invalid_response_topic')).toBe(bad.length + 1);
    expect(s.ctx.metrics.controlRejected.get('too_large')).toBe(1);
    expect(s.ctx.metrics.publishFailures).toBe(0);
    expect(s.adapter.connected).toBe(true);
    const refusals = s.ctx.logLines().filter((l) => l.includes('MQTT control request refused') && l.includes('invalid_response_topic'));
    // counted in full, logged once per reason and 10 s with the repeats counted (a flood cannot flood the journal)
    expect(refusals).toHaveLength(1);
    // the log shows a bounded, escaped excerpt of the topic, never 70 000 characters or a raw NUL
    expect(refusals.every((l) => l.length < 2000)).toBe(true);
  });

  it('a 70 000-character response topic inside an accepted request size is refused, not published (it stopped all output, then crashed mqtt-packet)', async () => {
    const s = await side({ 'mqtt.control.maxRequestBytes': 200_000 });
    const sub = await Collector.connect(MOSQUITTO_URL, [`${s.base}/#`], { protocolVersion: 4 });
    collectors.push(sub);
    await sub.wait((m) => m.topic === s.topics.status, 5000, 'status');
    await sub.client.publishAsync(s.topics.request, JSON.stringify({ command: 'get_status', correlation_id: 'long', response_topic: `${s.topics.response}/${'x'.repeat(70_000)}` }), { qos: 1 });
    const r = await sub.wait((m) => m.topic !== s.topics.request && m.json.correlation_id === 'long', 5000, 'the answer');
    expect(r.topic).toBe(s.topics.response);
    expect(r.json).toMatchObject({ ok: false, error: { reason: 'invalid_response_topic' } });
    expect((r.json.error as { detail: string }).detail).toMatch(/70\d{3} bytes long \(at most 256\)/);
    await stillFlows(s, sub, 'after-long');
    expect(s.adapter.connected).toBe(true);
  });

  it('bounds set_tolerance to 0.1–10 µm and refuses absurd numbers, deep JSON, huge payloads and invalid UTF-8 with a clear error, each counted', async () => {
    const s = await side();
    const sub = await Collector.connect(MOSQUITTO_URL, [`${s.topics.response}/#`, s.topics.status]);
    collectors.push(sub);
    await sub.wait((m) => m.topic === s.topics.status, 5000, 'status');
    let n = 0;
    const ask = async (body: string | Buffer, userProperties?: Record<string, string>) => {
      const corr = Buffer.from(`c-${n++}`);
      await sub.client.publishAsync(s.topics.request, body, { qos: 1, properties: { responseTopic: `${s.topics.response}/t`, correlationData: corr, ...(userProperties ? { userProperties } : {}) } });
      const r = await sub.wait((m) => Buffer.compare(m.packet.properties?.correlationData ?? Buffer.alloc(0), corr) === 0, 5000, `answer ${n}`);
      assertSchema('control-response', r.json);
      return r.json as { ok: boolean; error?: { reason: string; detail: string } };
    };
    const tol = (t: number) => ask(JSON.stringify({ command: 'set_tolerance', tolerance_um: t }));
    for (const t of [1e-300, 0, -1, 0.09, 10.01, 1e300]) {
      const r = await tol(t);
      expect(r, String(t)).toMatchObject({ ok: false, error: { reason: 'invalid_request' } });
      expect(r.error!.detail).toMatch(/tolerance_um/);
    }
    expect(s.ctx.runtime.toleranceUm).toBe(1);
    expect(await tol(0.1)).toMatchObject({ ok: true });
    expect(await tol(10)).toMatchObject({ ok: true });
    expect(s.ctx.runtime.toleranceUm).toBe(10);

    const deep = `{"command":"pause","slide":${'['.repeat(5000)}${']'.repeat(5000)}}`;
    expect(await ask(deep)).toMatchObject({ ok: false, error: { reason: 'invalid_request' } });
    const huge = await ask(JSON.stringify({ command: 'get_slide_summary', slide: 'x'.repeat(20_000) }));
    expect(huge).toMatchObject({ ok: false, error: { reason: 'too_large' } });
    expect(huge.error!.detail).toMatch(/mqtt.control.maxRequestBytes/);
    expect(await ask(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]))).toMatchObject({ ok: false, error: { reason: 'bad_json' } });
    expect(await ask(JSON.stringify({ command: 'pause', extra: 1 }))).toMatchObject({ ok: false, error: { reason: 'invalid_request' } });
    expect(s.ctx.runtime.paused).toBe(false);

    // requests that change behaviour are logged with the requester: the MQTT 5 user property client_id, else the body's client_id
    expect(await ask(JSON.stringify({ command: 'pause' }), { client_id: 'lims-7' })).toMatchObject({ ok: true });
    expect(await ask(JSON.stringify({ command: 'resume', client_id: 'bench-script' }))).toMatchObject({ ok: true });
    const applied = s.ctx.logLines().filter((l) => l.includes('MQTT control request applied')).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(applied.map((l) => [l.command, l.requester])).toEqual([
      ['set_tolerance', '(unidentified)'],
      ['set_tolerance', '(unidentified)'],
      ['pause', 'lims-7'],
      ['resume', 'bench-script'],
    ]);
    expect(s.ctx.metrics.controlRequests).toBe(n);
    expect(Object.fromEntries(s.ctx.metrics.controlRejected)).toEqual({ invalid_request: 8, too_large: 1, bad_json: 1 });
  });
});

/** An embedded broker on `port` with focusd's MQTT adapter logged in to it (both stopped after the test). */
async function embedded(port: number, overrides: Record<string, unknown>) {
  const ctx = makeCtx({ 'mqtt.url': 'embedded', 'mqtt.embedded.port': port, 'mqtt.baseTopic': uniqueId('emb'), 'mqtt.clientId': uniqueId('c'), ...overrides });
  const broker = new EmbeddedBroker(ctx);
  const adapter = new MqttAdapter(ctx, { statusProvider, control: createControlApi(ctx, { slideSummary: () => null }), credentials: () => broker.daemonCredentials });
  await broker.start(new AbortController().signal);
  running.push(broker);
  await adapter.start(new AbortController().signal);
  running.push(adapter);
  return { ctx, adapter, broker, url: `mqtt://127.0.0.1:${port}` };
}

describe('embedded broker access control (aedes)', () => {
  it('only focusd publishes under its base topic; control requests need the control user; nobody takes focusd’s client id', async () => {
    const port = await freePort();
    const pwFile = join(tempDir(), 'control-pw');
    writeFileSync(pwFile, 'ctl-secret\n');
    const clientId = uniqueId('c');
    const { ctx, adapter, url } = await embedded(port, { 'mqtt.embedded.controlPasswordFile': pwFile, 'mqtt.clientId': clientId });
    // anyone may read
    const sub = await Collector.connect(url, [`${adapter.topics.status}`, adapter.topics.action, adapter.topics.tile, adapter.topics.response], { protocolVersion: 4 });
    collectors.push(sub);
    await sub.wait((m) => m.json.state === 'online', 5000, 'online');

    /** An anonymous client publishes once; the broker refuses by closing its connection. */
    const intruder = async (topic: string, body: string, opts: { retain?: boolean } = {}) => {
      const c = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
      const closed = new Promise<void>((res) => c.once('close', () => res()));
      c.publish(topic, body, { qos: 1, ...opts });
      await closed;
      c.end(true);
    };
    await intruder(adapter.topics.request, JSON.stringify({ command: 'set_tolerance', tolerance_um: 0.1 }));
    await intruder(adapter.topics.action, JSON.stringify({ schema: 'focusd/action/1', id: 'fake', type: 'z_offset', z_offset_um: 40 }));
    await intruder(adapter.topics.status, JSON.stringify({ state: 'offline' }), { retain: true });
    await sleep(200);
    expect(ctx.runtime.toleranceUm).toBe(1);
    expect(sub.on(adapter.topics.action)).toEqual([]);
    expect(sub.on(adapter.topics.response)).toEqual([]);
    expect(sub.on(adapter.topics.status).every((m) => m.json.state === 'online')).toBe(true);
    // one line per reason per interval (control requests need the control user; only focusd publishes under its base)
    expect(ctx.logLines().filter((l) => l.includes('publish refused'))).toHaveLength(2);

    // the wrong password, or focusd's own client id, never connects
    await expect(mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, username: 'control', password: 'guess' })).rejects.toThrow(/Bad username or password|Not authorized/i);
    await expect(mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, clientId })).rejects.toThrow(/Identifier rejected/i);
    expect(adapter.connected).toBe(true);

    // the control user may; focusd still publishes tiles
    const ctl = await Collector.connect(url, [], { protocolVersion: 4, username: 'control', password: 'ctl-secret' });
    collectors.push(ctl);
    await ctl.client.publishAsync(adapter.topics.request, JSON.stringify({ command: 'set_tolerance', tolerance_um: 2, correlation_id: 'ok-1' }), { qos: 1 });
    expect((await sub.wait((m) => m.json.correlation_id === 'ok-1', 5000, 'answer')).json).toMatchObject({ ok: true });
    expect(ctx.runtime.toleranceUm).toBe(2);
    ctx.events.emit('tile:scored', outcome({ seq: 0, d: 0.3 }));
    await sub.wait((m) => m.topic === adapter.topics.tile, 5000, 'tile');
  });

  it('a packet larger than mqtt.embedded.maxPacketBytes closes that connection before its body is read; refusals with ever new client ids and topics are a few log lines; focusd keeps working', async () => {
    const port = await freePort();
    const { ctx, adapter, url } = await embedded(port, { 'mqtt.embedded.maxPacketBytes': 64 * 1024 });
    const sub = await Collector.connect(url, [adapter.topics.tile, 'lab/#'], { protocolVersion: 4 });
    collectors.push(sub);

    // 200 KB to a topic anyone may use: the connection is closed, nothing is delivered
    const big = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
    const closed = new Promise<void>((res) => big.once('close', () => res()));
    big.publish('lab/big', Buffer.alloc(200 * 1024, 1), { qos: 0 });
    await closed;
    big.end(true);
    // a message under the limit still goes through
    const small = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0 });
    await small.publishAsync('lab/small', 'ok', { qos: 1 });
    await sub.wait((m) => m.topic === 'lab/small', 5000, 'the small message');
    await small.endAsync();
    expect(sub.messages.some((m) => m.topic === 'lab/big')).toBe(false);
    expect(ctx.logLines().filter((l) => l.includes('connection closed: MQTT packet of') && l.includes('more than mqtt.embedded.maxPacketBytes'))).toHaveLength(1);

    // 30 refused publishes with new long client ids and topics: one line per reason, client ids clipped
    for (let i = 0; i < 30; i++) {
      const c = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, clientId: `x${i}-${'y'.repeat(3000)}` });
      const gone = new Promise<void>((res) => c.once('close', () => res()));
      c.publish(`${adapter.topics.action}/${i}`, '{}', { qos: 1 });
      await gone;
      c.end(true);
    }
    const refused = ctx.logLines().filter((l) => l.includes('publish refused'));
    expect(refused).toHaveLength(1);
    expect(refused[0]!.length).toBeLessThan(1000);
    ctx.events.emit('tile:scored', outcome({ seq: 0, d: 0.3 }));
    await sub.wait((m) => m.topic === adapter.topics.tile, 5000, 'tile');
  });

  it('mqtt.embedded.open lets anyone publish (loopback only: refused with another host)', async () => {
    const port = await freePort();
    const { ctx, adapter } = await embedded(port, { 'mqtt.embedded.open': true });
    const anyone = await Collector.connect(`mqtt://127.0.0.1:${port}`, [adapter.topics.response], { protocolVersion: 4 });
    collectors.push(anyone);
    await anyone.client.publishAsync(adapter.topics.request, JSON.stringify({ command: 'pause' }), { qos: 1 });
    await anyone.wait(() => true, 5000, 'answer');
    expect(ctx.runtime.paused).toBe(true);
    expect(() => makeCtx({ 'mqtt.embedded.open': true, 'mqtt.embedded.host': '0.0.0.0' })).toThrow(/mqtt.embedded.open: an open broker is for loopback only/);
  });
});
