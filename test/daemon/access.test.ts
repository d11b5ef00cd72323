// The forked daemon against a private Mosquitto with the ACL of docs/mqtt.md and a password file: who may send
// control requests and actions (issue 10), and that the broker password in mqtt.url never shows in logs or answers.
import { execFileSync } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TileSender } from '../../sim/replay.js';
import { getJson, scanTiles, startDaemon, stopDaemon, tileHeader, type RunningDaemon } from '../helpers/daemon-run.js';
import { assertSchema, Collector, PrivateMosquitto, sleep, tempDir } from '../helpers/mqtt-side.js';
import { uniqueId } from '../helpers/net.js';
import { ROOT } from '../helpers/proc.js';

const PASSWORD = 'pw-Zq81-daemon';
const users = { automation: 'pw-auto', scanner: 'pw-scan', viewer: 'pw-view' };
let mosq: PrivateMosquitto;
let d: RunningDaemon;
const collectors: Collector[] = [];

/** The ACL block of docs/mqtt.md, for this test's scanner id. */
function aclFromDocs(id: string): string {
  const doc = readFileSync(join(ROOT, 'docs/mqtt.md'), 'utf8');
  const m = /<!-- acl:begin -->\n```\n([\s\S]*?)```\n<!-- acl:end -->/.exec(doc);
  if (!m) throw new Error('docs/mqtt.md has no ACL block');
  return m[1]!.replaceAll('axioscan-1', id);
}

beforeAll(async () => {
  const id = uniqueId('acl');
  const dir = tempDir('focusd-acl-');
  chmodSync(dir, 0o755); // mosquitto drops to its own user and must read these
  const passwd = join(dir, 'passwd');
  const acl = join(dir, 'focusd.acl');
  execFileSync('mosquitto_passwd', ['-b', '-c', passwd, `focusd-${id}`, PASSWORD], { stdio: 'ignore' });
  for (const [u, p] of Object.entries(users)) execFileSync('mosquitto_passwd', ['-b', passwd, u, p], { stdio: 'ignore' });
  writeFileSync(acl, aclFromDocs(id));
  for (const f of [passwd, acl]) chmodSync(f, 0o644);
  mosq = new PrivateMosquitto({ globalLines: ['allow_anonymous false', `password_file ${passwd}`, `acl_file ${acl}`] });
  await mosq.start();
  // the password travels in the URL's userinfo: the redaction test below looks for it everywhere
  d = await startDaemon({ FOCUSD_MQTT_URL: `mqtt://focusd-${id}:${PASSWORD}@127.0.0.1:${mosq.port}`, FOCUSD_LOG_LEVEL: 'debug' }, id);
});

afterAll(async () => {
  for (const c of collectors.splice(0)) await c.close();
  if (d) expect(await stopDaemon(d)).toBe(0);
  await mosq?.stop();
});

const as = async (user: keyof typeof users, topics: string[]) => {
  const c = await Collector.connect(mosq.url, topics, { username: user, password: users[user], clientId: uniqueId(user) });
  collectors.push(c);
  return c;
};

describe('Mosquitto with the ACL of docs/mqtt.md', () => {
  it('viewer and scanner cannot send control requests or fake actions; automation can; the daemon keeps working', async () => {
    const scanner = await as('scanner', [`${d.base}/action`, `${d.base}/status`]);
    const automation = await as('automation', [`${d.base}/control/response/#`, `${d.base}/tile`]);
    const viewer = await as('viewer', [`${d.base}/tile`]);
    await scanner.wait((m) => m.topic === `${d.base}/status` && m.json.state === 'online', 5000, 'online status');

    // anonymous clients do not get in at all
    await expect(mqtt.connectAsync(mosq.url, { reconnectPeriod: 0, protocolVersion: 5 })).rejects.toThrow(/Not authorized|Bad User Name or Password/i);
    // what the ACL forbids: Mosquitto answers QoS 1 with reason 135 (not authorized) and drops the message
    const refused: string[] = [];
    const attempt = async (c: Collector, who: string, topic: string, body: object) => {
      await c.client.publishAsync(topic, JSON.stringify(body), { qos: 1 }).catch((err: Error) => refused.push(`${who}: ${err.message}`));
    };
    await attempt(viewer, 'viewer', `${d.base}/control/request`, { command: 'set_tolerance', tolerance_um: 0.1 });
    await attempt(viewer, 'viewer', `${d.base}/action`, { schema: 'focusd/action/1', id: 'fake-1', type: 'z_offset', z_offset_um: 40 });
    await attempt(scanner, 'scanner', `${d.base}/control/request`, { command: 'pause' });
    await attempt(scanner, 'scanner', `${d.base}/action`, { schema: 'focusd/action/1', id: 'fake-2', type: 'z_offset', z_offset_um: -40 });
    await attempt(viewer, 'viewer', `${d.base}/status`, { schema: 'focusd/status/1', state: 'offline' });
    expect(refused).toHaveLength(5);
    expect(refused.every((r) => /135|not authorized/i.test(r))).toBe(true);

    // lab automation may; the answer comes back under its response prefix
    const corr = Buffer.from(uniqueId('corr'));
    await automation.client.publishAsync(`${d.base}/control/request`, JSON.stringify({ command: 'set_dry_run', dry_run: false }), {
      qos: 1, properties: { responseTopic: `${d.base}/control/response/lims`, correlationData: corr, userProperties: { client_id: 'lims-7' } },
    });
    const ans = await automation.wait((m) => m.topic === `${d.base}/control/response/lims`, 5000, 'answer to automation');
    assertSchema('control-response', ans.json);
    expect(ans.json).toMatchObject({ ok: true, result: { runtime: { dryRun: false, paused: false, toleranceUm: 1 } } });
    await d.proc.waitForLine((l) => l.message === 'MQTT control request applied' && l.requester === 'lims-7', 5000);

    // the daemon works: tiles scored and published, the real action reaches the scanner, the fakes never did
    const { inFocus, blurred } = await scanTiles();
    const sender = new TileSender({ endpoint: d.endpoint, pattern: 'req', timeoutMs: 30_000 });
    sender.connect();
    try {
      expect(await sender.send(tileHeader(0, d.id), inFocus)).toMatchObject({ ok: true, verdict: 'in_focus' });
      expect(await sender.send(tileHeader(1, d.id), blurred)).toMatchObject({ ok: true, verdict: 'out_of_focus' });
    } finally {
      await sender.close();
    }
    const action = await scanner.wait((m) => m.topic === `${d.base}/action`, 10_000, 'the real action');
    assertSchema('action', action.json);
    await viewer.until(() => viewer.on(`${d.base}/tile`).length === 2, 5000, 'two tiles for the viewer');
    await sleep(300);
    expect(scanner.on(`${d.base}/action`).map((m) => m.json.id)).toEqual([action.json.id]);
    expect(scanner.on(`${d.base}/status`).every((m) => m.json.state === 'online')).toBe(true);
    const st = await getJson(`${d.http}/status`);
    expect(st.body.runtime).toEqual({ toleranceUm: 1, dryRun: false, paused: false });
    expect(st.body.metrics.control_requests).toBe(1);
    expect((await getJson(`${d.http}/healthz`)).code).toBe(200);
  });

  it('the password in mqtt.url never appears in log lines, get_config or /status', async () => {
    const automation = await as('automation', [`${d.base}/control/response/#`]);
    await automation.client.publishAsync(`${d.base}/control/request`, JSON.stringify({ command: 'get_config', correlation_id: 'cfg', response_topic: `${d.base}/control/response/cfg` }), { qos: 1 });
    const cfg = await automation.wait((m) => m.json.correlation_id === 'cfg', 5000, 'get_config answer');
    expect(cfg.json.ok).toBe(true);
    const result = cfg.json.result as { mqtt: { url: string } };
    expect(result.mqtt.url).toBe(`mqtt://(redacted)@127.0.0.1:${mosq.port}`);
    const status = await getJson(`${d.http}/status`);
    expect(status.body.mqtt).toMatchObject({ url: `mqtt://(redacted)@127.0.0.1:${mosq.port}`, connected: true });
    // the real log output of the forked daemon: the start line and the connect line name the broker, redacted
    const start = d.proc.lines.find((l) => l.message === 'focusd starting');
    const connected = d.proc.lines.find((l) => l.message === 'MQTT connected');
    expect(start?.mqtt).toBe(`mqtt://(redacted)@127.0.0.1:${mosq.port}`);
    expect(connected?.url).toBe(`mqtt://(redacted)@127.0.0.1:${mosq.port}`);
    const everything = [JSON.stringify(d.proc.lines), d.proc.stderr.join(''), JSON.stringify(cfg.json), JSON.stringify(status.body)].join('\n');
    expect(everything).not.toContain(PASSWORD);
    expect(everything).not.toContain(`focusd-${d.id}:`);
  });
});
