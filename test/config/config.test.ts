import { copyFileSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, DEFAULT_MODEL_DIR, describeSchema, loadConfig } from '../../config/load.js';
import { runFocusd } from '../helpers/proc.js';

const dir = mkdtempSync(join(tmpdir(), 'focusd-config-'));
const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};
const problems = (fn: () => unknown): string[] => {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('expected a ConfigError');
};

describe('configuration', () => {
  it('has the documented defaults and derived values', () => {
    const c = loadConfig({ env: {} });
    expect(c.ingest.endpoint).toBe('tcp://127.0.0.1:5555');
    expect(c.ingest.pattern).toBe('pull');
    expect(c.mqtt.url).toBe('embedded');
    expect(c.decision.toleranceUm).toBe(1);
    expect(c.resolved.baseTopic).toBe(`focusd/${c.scanner.id}`);
  });

  it('documents every key with a doc line', () => {
    const keys = describeSchema();
    expect(keys.length).toBeGreaterThan(30);
    for (const k of keys) expect(k.doc.length, k.key).toBeGreaterThan(10);
    const env = Object.fromEntries(keys.filter((k) => k.env).map((k) => [k.key, k.env]));
    expect(env).toMatchObject({
      'scanner.id': 'FOCUSD_SCANNER_ID',
      'ingest.endpoint': 'FOCUSD_INGEST_ENDPOINT',
      'ingest.pattern': 'FOCUSD_INGEST_PATTERN',
      'mqtt.url': 'FOCUSD_MQTT_URL',
      'mqtt.baseTopic': 'FOCUSD_MQTT_BASE_TOPIC',
      'decision.toleranceUm': 'FOCUSD_TOLERANCE_UM',
    });
  });

  it('layers file < environment < command line', () => {
    const f = file('layers.yaml', 'scanner:\n  id: from-file\ndecision:\n  toleranceUm: 2\ningest:\n  pattern: router\n');
    const c = loadConfig({ file: f, env: { FOCUSD_TOLERANCE_UM: '1.5', FOCUSD_SCANNER_ID: 'from-env' }, args: ['--scanner-id', 'from-args'] });
    expect(c.scanner.id).toBe('from-args');
    expect(c.decision.toleranceUm).toBe(1.5);
    expect(c.ingest.pattern).toBe('router');
    expect(c.resolved.baseTopic).toBe('focusd/from-args');
    const j = loadConfig({ file: file('c.json', JSON.stringify({ mqtt: { baseTopic: 'lab/a/focusd' } })), env: {} });
    expect(j.resolved.baseTopic).toBe('lab/a/focusd');
  });

  it('rejects unknown keys, bad values and bad combinations, naming each key', () => {
    const f = file('bad.yaml', ['ingest:', '  pattern: pub', '  endpoint: localhost:5555', 'decision:', '  toleranceUm: -1', 'mqt:', '  url: x'].join('\n'));
    const p = problems(() => loadConfig({ file: f, env: {} }));
    expect(p.some((l) => l.startsWith('ingest.pattern:'))).toBe(true);
    expect(p.some((l) => l.startsWith('ingest.endpoint:'))).toBe(true);
    expect(p.some((l) => l.startsWith('decision.toleranceUm:'))).toBe(true);
    expect(p.some((l) => l.includes("'mqt'") || l.includes('mqt.url'))).toBe(true);

    const cross = problems(() =>
      loadConfig({ env: { FOCUSD_MQTT_URL: 'mqtt://broker:1883', FOCUSD_MQTT_CERT: '/nonexistent/cert.pem', FOCUSD_MQTT_BASE_TOPIC: 'a/+/b' } }),
    );
    expect(cross.some((l) => l.startsWith('mqtt.tls.cert / mqtt.tls.key:'))).toBe(true);
    expect(cross.some((l) => l.startsWith('mqtt.tls.cert: file not found'))).toBe(true);
    expect(cross.some((l) => l.startsWith('mqtt.baseTopic:'))).toBe(true);
    expect(cross.some((l) => l.startsWith('mqtt.url: TLS files are set'))).toBe(true);

    expect(problems(() => loadConfig({ env: { FOCUSD_ENGINE: 'tfjs', FOCUSD_DEVICE: 'cuda' } }))[0]).toMatch(/^scoring\.engine\.device:/);
    expect(problems(() => loadConfig({ file: join(dir, 'missing.yaml'), env: {} }))[0]).toMatch(/^--config: file not found/);
  });

  it('a boolean is true or false: "yes", "flase" or 1 in a file or the environment is an error naming the key', () => {
    for (const v of ['"yes"', '"flase"', '1', '"0"']) {
      const p = problems(() => loadConfig({ file: file(`b-${v.replace(/"/g, '')}.json`, `{"controller":{"audit":{"enabled":${v}}}}`), env: {} }));
      expect(p[0], v).toMatch(/^controller\.audit\.enabled: must be true or false/);
    }
    expect(problems(() => loadConfig({ env: { FOCUSD_DRY_RUN: 'nope' } }))[0]).toMatch(/^controller\.dryRun: must be true or false/);
    expect(loadConfig({ env: { FOCUSD_DRY_RUN: 'TRUE' } }).controller.dryRun).toBe(true);
    expect(loadConfig({ env: { FOCUSD_DRY_RUN: 'false' } }).controller.dryRun).toBe(false);
    expect(loadConfig({ file: file('b-ok.json', '{"controller":{"audit":{"enabled":false}}}'), env: {} }).controller.audit.enabled).toBe(false);
  });

  it('reads the MQTT password from a file or the systemd credential, never from the config text', () => {
    const pw = file('pw', 's3cret\n');
    expect(loadConfig({ env: { FOCUSD_MQTT_URL: 'mqtt://b:1883', FOCUSD_MQTT_PASSWORD_FILE: pw } }).resolved.mqttPassword).toBe('s3cret');
    const creds = mkdtempSync(join(tmpdir(), 'focusd-creds-'));
    writeFileSync(join(creds, 'mqtt-password'), 'from-credential\n');
    expect(loadConfig({ env: { FOCUSD_MQTT_URL: 'mqtt://b:1883', CREDENTIALS_DIRECTORY: creds } }).resolved.mqttPassword).toBe('from-credential');
    expect(loadConfig({ env: { STATE_DIRECTORY: '/var/lib/focusd' } }).resolved.stateDir).toBe('/var/lib/focusd');
  });

  it('refuses values that convict accepts but that break at run time, naming the key (issue 10, defect 6)', () => {
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ 'ingest.endpoint': 'tcp://127.0.0.1:99999' }, /^ingest\.endpoint: port 99999/],
      [{ 'mqtt.url': 'mqtt://127.0.0.1:70000' }, /^mqtt\.url: port "70000" is not 1\.\.65535/],
      [{ 'mqtt.baseTopic': '$SYS/focusd' }, /^mqtt\.baseTopic: "\$SYS\/focusd" starts with \$/],
      [{ 'mqtt.baseTopic': 'lab/fo\u0000cusd' }, /^mqtt\.baseTopic: .* contains a control character/],
      [{ 'mqtt.baseTopic': 'lab/\ud800' }, /^mqtt\.baseTopic: .* is not valid UTF-8/],
      [{ 'mqtt.baseTopic': 'lab/#' }, /^mqtt\.baseTopic: .* contains \+ or #/],
      [{ 'mqtt.baseTopic': 'a'.repeat(2000) }, /^mqtt\.baseTopic: .* is 2000 bytes long, at most 1024/],
      [{ 'shutdown.drainTimeoutMs': 3_000_000_000 }, /^shutdown\.drainTimeoutMs: 3000000000 ms is longer than a timer can wait/],
      [{ 'shutdown.drainTimeoutMs': 30_000 }, /^shutdown\.drainTimeoutMs: 30000 ms plus 5000 ms to stop the rest is not below TimeoutStopSec of systemd\/focusd\.service \(30000 ms\)/],
      [{ 'shutdown.drainTimeoutMs': 25_000 }, /^shutdown\.drainTimeoutMs: 25000 ms plus 5000 ms .* at most 24999 ms/],
      [{ 'mqtt.reconnectMs': 2 ** 31 }, /^mqtt\.reconnectMs: .* longer than a timer can wait/],
      [{ 'mqtt.statsIntervalS': 3_000_000 }, /^mqtt\.statsIntervalS: .* longer than a timer can wait/],
      [{ 'mqtt.keepaliveS': 70_000 }, /^mqtt\.keepaliveS: 70000 is above the MQTT maximum/],
      [{ 'controller.limits.deadBandUm': -0.5 }, /^controller\.limits\.deadBandUm: must be >= 0, got -0\.5/],
      [{ 'controller.limits.maxTiltUmPerMm': -1 }, /^controller\.limits\.maxTiltUmPerMm: must be >= 0, got -1/],
      [{ 'controller.drift.hysteresisUm': -1 }, /^controller\.drift\.hysteresisUm: must be >= 0, got -1/],
      [{ 'controller.drift.leadUm': 1 }, /^controller\.drift\.leadUm: must be >= 0 and below decision\.toleranceUm \(1\), got 1/],
      [{ 'controller.drift.leadUm': -0.1 }, /^controller\.drift\.leadUm: must be >= 0/],
    ];
    for (const [overrides, re] of cases) {
      const p = problems(() => loadConfig({ env: {}, overrides }));
      expect(p.some((l) => re.test(l)), `${JSON.stringify(overrides).slice(0, 80)}: ${p.join(' | ')}`).toBe(true);
    }
    // the edges that are fine
    expect(loadConfig({ env: {}, overrides: { 'ingest.endpoint': 'tcp://127.0.0.1:65535', 'mqtt.baseTopic': 'lab/é/focusd', 'controller.limits.deadBandUm': 0 } }).resolved.baseTopic).toBe('lab/é/focusd');
  });

  it('hostile configurations found by attack fail at load, naming the key, without repeating a secret', () => {
    const cases: Array<[Record<string, string>, RegExp]> = [
      // a password with an unencoded @ / ? # connected or went elsewhere; a URL without a host went to localhost:1883
      [{ FOCUSD_MQTT_URL: 'mqtt://atuser:p@ssXw0rd@127.0.0.1:18885' }, /^mqtt\.url: must be .* percent-encoded/],
      [{ FOCUSD_MQTT_URL: 'mqtt://slashuser:pa/ss#wo?rd@127.0.0.1:18885' }, /^mqtt\.url: must be .* percent-encoded/],
      [{ FOCUSD_MQTT_URL: 'mqtt://revuser:NoHostSecret5@' }, /^mqtt\.url: must be /],
      [{ FOCUSD_MQTT_URL: 'ftp://revuser:SchemeSecret7@h:1' }, /^mqtt\.url: must be /],
      // convict's parseInt took these as 0, 8080, 5; Number took 0x10 as 16
      [{ FOCUSD_HTTP_PORT: '0x1f90' }, /^http\.port: must be a port number/],
      [{ FOCUSD_HTTP_PORT: '8080abc' }, /^http\.port: must be a port number/],
      [{ FOCUSD_STATS_INTERVAL_S: '5xyz' }, /^mqtt\.statsIntervalS: must be an integer >= 0/],
      [{ FOCUSD_STATS_INTERVAL_S: '2.9' }, /^mqtt\.statsIntervalS: must be an integer >= 0/],
      [{ FOCUSD_TOLERANCE_UM: '0x10' }, /^decision\.toleranceUm: must be a positive number/],
      [{ FOCUSD_STATE_DIR: '/proc/focusd' }, /^store\.dir: \/proc\/focusd is under \/proc/],
      [{ FOCUSD_HTTP_PORT: '1884' }, /^mqtt\.embedded\.port: port 1884 on 127\.0\.0\.1 is also http\.port's/],
    ];
    for (const [env, re] of cases) {
      const p = problems(() => loadConfig({ env }));
      expect(p.some((l) => re.test(l)), `${JSON.stringify(env)}: ${p.join(' | ')}`).toBe(true);
      expect(p.join(' '), JSON.stringify(env)).not.toMatch(/ssXw0rd|NoHostSecret5|SchemeSecret7|wo\?rd/);
    }
    const sizes = problems(() => loadConfig({ env: {}, overrides: { 'pipeline.queueSize': 1e9, 'ingest.maxMessageBytes': 1e12 } }));
    expect(sizes.join('\n')).toMatch(/pipeline\.queueSize: 1000000000 is more than 4096 tiles/);
    expect(sizes.join('\n')).toMatch(/ingest\.maxMessageBytes: .* is more than 1 GiB/);
    // a file that is not a mapping, prototype keys, a syntax error that quotes a password, a huge file
    for (const [name, text, re] of [
      ['n.yaml', '42\n', /must hold a mapping of settings/],
      ['p.json', '{"__proto__": {"polluted": 1}}', /__proto__: not a setting/],
      ['c.yaml', 'scanner:\n  constructor: 1\n', /scanner\.constructor: not a setting/],
      ['s5.yaml', 'scanner: 5\n', /scanner: is a section \(scanner\.id\), not a single value/],
      ['s.yaml', 'mqtt:\n  url: "mqtt://u:QuoteSecret3@h:1\n', /^--config: .*s\.yaml: Missing closing "quote/],
      ['big.yaml', `# ${'x'.repeat(2 * 1024 * 1024)}\n`, /is \d+ bytes; a configuration is at most 1048576 bytes/],
    ] as const) {
      const p = problems(() => loadConfig({ env: {}, file: file(name, text) }));
      expect(p.some((l) => re.test(l)), `${name}: ${p.join(' | ')}`).toBe(true);
      expect(p.join(' ')).not.toContain('QuoteSecret3');
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    // still fine: a percent-encoded password, a decimal number
    expect(loadConfig({ env: { FOCUSD_MQTT_URL: 'mqtt://u:p%40ss%2Fw@broker:1883', FOCUSD_HTTP_PORT: '8080' } }).http.port).toBe(8080);
  });

  it('check-config verifies the model bundle sha256 (issue 10, defect 6)', async () => {
    const bundle = mkdtempSync(join(tmpdir(), 'focusd-bundle-'));
    copyFileSync(join(DEFAULT_MODEL_DIR, 'manifest.json'), join(bundle, 'manifest.json'));
    writeFileSync(join(bundle, 'model.onnx'), 'not the model');
    const r = await runFocusd(['check-config', '--model', bundle]);
    expect(r.code, r.stderr).toBe(78);
    expect(r.stderr).toMatch(/scoring\.model: model bundle .* \/sha256 mismatch: model\.onnx hashes to [0-9a-f]{64}/);
  });

  it('check-config exits non-zero and names every problem; accepts the development example', async () => {
    const bad = file('bad2.yaml', 'ingest:\n  pattern: pub\ndecision:\n  toleranceUm: zero\nnope: 1\n');
    const r = await runFocusd(['check-config', '--config', bad]);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/ingest\.pattern:/);
    expect(r.stderr).toMatch(/decision\.toleranceUm:/);
    expect(r.stderr).toMatch(/nope/);
    const ok = await runFocusd(['check-config', '--config', 'config/development.yaml', '--print']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout.slice(ok.stdout.indexOf('{'))).scanner.id).toBe('dev-scanner');
    // the production example points at TLS files that only exist on a deployed host: each one is named
    const prod = await runFocusd(['check-config', '--config', 'config/production.yaml']);
    expect(prod.code).toBe(78);
    expect(prod.stderr).toMatch(/mqtt\.tls\.ca: file not found: \/etc\/focusd\/tls\/ca\.pem/);
    expect(prod.stderr).toMatch(/mqtt\.tls\.key: file not found/);
  });
});
