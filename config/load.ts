import { accessSync, constants as fsConstants, existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, extname, isAbsolute, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import convict from 'convict';
import cron from 'node-cron';
import YAML from 'yaml';
import { schema } from './schema.js';
import { redactUrl } from './secrets.js';

/** Repository root (works from source and from dist/). */
export const PACKAGE_ROOT = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(resolve(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('focusd: package.json not found above ' + dirname(fileURLToPath(import.meta.url)));
    dir = up;
  }
  return dir;
})();

export const DEFAULT_MODEL_DIR = resolve(PACKAGE_ROOT, 'models/default');

/** A number as people write it in a file, a variable or an option (no hex, no trailing text). */
const DECIMAL = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

/** Largest configuration file read: a real one is a few KiB; YAML's duplicate-key check is quadratic in keys. */
export const MAX_CONFIG_FILE_BYTES = 1024 * 1024;
/** Keys that are never configuration (they would reach Object.prototype in a careless merge). */
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** The parsed file must be a mapping without prototype keys at any depth; else the error names where. */
function checkParsedConfig(v: unknown): unknown {
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new Error(`the file must hold a mapping of settings (e.g. "scanner:" / {"scanner": ...}), not ${Array.isArray(v) ? 'a list' : v === null ? 'nothing' : `a ${typeof v}`}`);
  // node: the schema at this path (a section holds settings, a setting has doc and default)
  const walk = (x: unknown, path: string, node: Record<string, unknown> | null) => {
    if (x === null || typeof x !== 'object') return;
    for (const k of Object.keys(x)) {
      const key = path ? `${path}.${k}` : k;
      if (FORBIDDEN_KEYS.has(k)) throw new Error(`${key}: not a setting (refused)`);
      const child = node && Object.hasOwn(node, k) ? (node[k] as Record<string, unknown>) : null;
      const value = (x as Record<string, unknown>)[k];
      // convict says "scanner.id missing from config, did you override its parent?" for `scanner: 5`
      if (child && !('doc' in child && 'default' in child) && (value === null || typeof value !== 'object' || Array.isArray(value)))
        throw new Error(`${key}: is a section (${Object.keys(child).map((c) => `${key}.${c}`).slice(0, 4).join(', ')}${Object.keys(child).length > 4 ? ', …' : ''}), not a single value`);
      walk(value, key, child && !('doc' in child) ? child : null);
    }
  };
  walk(v, '', schema as unknown as Record<string, unknown>);
  return v;
}

let formatsAdded = false;
function addFormats(): void {
  if (formatsAdded) return;
  formatsAdded = true;
  convict.addParser([
    { extension: 'json', parse: (t: string) => checkParsedConfig(JSON.parse(t)) },
    { extension: ['yml', 'yaml'], parse: (t: string) => checkParsedConfig(YAML.parse(t)) },
  ]);
  const check = (name: string, ok: (v: unknown) => boolean, msg: string, coerce?: (v: unknown) => unknown) =>
    convict.addFormat({
      name,
      validate(v: unknown) {
        if (!ok(v)) throw new Error(msg);
      },
      ...(coerce ? { coerce } : {}),
    });
  // numbers from the environment or the command line: decimal notation only. convict's own parseInt/parseFloat took
  // "8080abc" as 8080, "0x1f90" as 0 and "2.9" as 2 for an integer; Number() takes "0x10" as 16
  const num = (v: unknown) => (typeof v === 'string' && DECIMAL.test(v.trim()) ? Number(v) : v);
  check('port', (v) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 65535, 'must be a port number 0..65535', num);
  check('nat', (v) => Number.isInteger(v) && (v as number) >= 0, 'must be an integer >= 0', num);
  check('int', (v) => Number.isInteger(v), 'must be an integer', num);
  check('number', (v) => typeof v === 'number' && Number.isFinite(v), 'must be a finite number', num);
  // convict's Boolean takes any string but "false" as true ("flase", "no" and "0" included); only true/false here,
  // and from the environment or the command line the strings "true"/"false"
  check('bool', (v) => typeof v === 'boolean', 'must be true or false', (v) => {
    if (typeof v !== 'string') return v;
    const t = v.trim().toLowerCase();
    return t === 'true' ? true : t === 'false' ? false : v;
  });
  check('positive-int', (v) => Number.isInteger(v) && (v as number) > 0, 'must be a positive integer', num);
  check('positive-number', (v) => typeof v === 'number' && Number.isFinite(v) && v > 0, 'must be a positive number', num);
  check('unit-interval', (v) => typeof v === 'number' && v >= 0 && v <= 1, 'must be a number between 0 and 1', num);
  check(
    'identifier',
    (v) => typeof v === 'string' && /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(v),
    'must be 1-64 characters of letters, digits, ".", "_" or "-" (it becomes part of MQTT topics)',
  );
  check(
    'cron-or-empty',
    (v) => typeof v === 'string' && (v === '' || cron.validate(v)),
    'must be a cron expression such as "0 2 * * *" (minute hour day month weekday), or empty',
  );
  check(
    'zmq-endpoint',
    (v) => typeof v === 'string' && /^(tcp:\/\/[^:/]+:\d{1,5}|ipc:\/\/.+|inproc:\/\/.+)$/.test(v),
    'must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555 or ipc:///run/focusd/ingest',
  );
  check(
    'mqtt-url',
    (v) => typeof v === 'string' && (v === 'embedded' || brokerUrlOk(v)),
    'must be "embedded" or a broker URL with a host, such as mqtt://127.0.0.1:1883 or mqtts://broker:8883 (a user name or password holding @ / ? # : must be percent-encoded: %40 %2F %3F %23 %3A)',
  );
}

/** A broker URL the client will read as written: known scheme, a host, and userinfo that parses whole. */
function brokerUrlOk(v: string): boolean {
  if (!/^(mqtts?|wss?):\/\//.test(v)) return false;
  let u: URL;
  try {
    // a numeric port out of range is rangeProblems' to name ("port 70000 is not 1..65535"), not a parse failure here
    u = new URL(v.replace(/:(\d{6,}|[7-9]\d{4}|6[6-9]\d{3}|65[6-9]\d{2}|655[4-9]\d|6553[6-9])(?=[/?#]|$)/, ':1'));
  } catch {
    return false;
  }
  if (!u.hostname) return false;
  // an unencoded @ in the password: the parser splits at the last @, the host part then holds no @; but a / ? or #
  // in the userinfo ends the authority early and leaves a "host" with the user name in it: the text before the host
  // must be exactly the userinfo the parser saw
  const authority = v.slice(v.indexOf('//') + 2).split(/[/?#]/, 1)[0]!;
  const at = authority.lastIndexOf('@');
  const userinfo = at >= 0 ? authority.slice(0, at) : '';
  return userinfo === (u.username || u.password ? `${u.username}${u.password ? ':' + u.password : ''}` : '') && !v.slice(v.indexOf('//') + 2 + authority.length).includes('@');
}

function buildConvict() {
  addFormats();
  return convict(schema);
}
type Schema = ReturnType<typeof buildConvict>;
type Props = ReturnType<Schema['getProperties']>;

/** The validated configuration, with derived values resolved. Passed around in the context; never global. */
export type FocusdConfig = Props & {
  /** where the config came from, for logs and `check-config`. */
  source: { file: string | null };
  resolved: {
    baseTopic: string;
    mqttClientId: string;
    mqttPassword: string;
    /** ZeroMQ CURVE of the ingest socket (ingest.curve.*), null when off. */
    ingestCurve: { secretKey: string; clientKeys: string[] } | null;
    stateDir: string;
    modelDir: string;
    reportDir: string;
  };
};

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super('invalid configuration:\n  ' + problems.join('\n  '));
    this.name = 'ConfigError';
  }
}

export interface LoadOptions {
  file?: string | null;
  /** CLI arguments (convict `arg` names, e.g. --scanner-id x). */
  args?: string[];
  env?: NodeJS.ProcessEnv;
  /** plain overrides, applied last (tests, the demo). */
  overrides?: Record<string, unknown>;
}

/** Loads file → env → args → overrides, validates strictly and runs the cross-field checks. Collects every problem. */
export function loadConfig(opts: LoadOptions = {}): FocusdConfig {
  const env = opts.env ?? process.env;
  const conf = buildConvict();
  const problems: string[] = [];
  // convict reads env/args from the options, not from the process, so nothing here touches global state
  const c = convict(schema, { env: env as Record<string, string>, args: opts.args ?? [] });
  void conf;
  const file = opts.file ?? env.FOCUSD_CONFIG ?? null;
  if (file) {
    if (!existsSync(file)) throw new ConfigError([`--config: file not found: ${file}`]);
    const st = statSync(file);
    if (st.isDirectory()) throw new ConfigError([`--config: ${file} is a directory; name the configuration file in it`]);
    const ext = extname(file).toLowerCase();
    if (!['.json', '.yaml', '.yml'].includes(ext)) throw new ConfigError([`--config: ${file}: must end in .json, .yaml or .yml`]);
    if (st.size > MAX_CONFIG_FILE_BYTES) throw new ConfigError([`--config: ${file} is ${st.size} bytes; a configuration is at most ${MAX_CONFIG_FILE_BYTES} bytes`]);
    try {
      c.loadFile(file);
    } catch (err) {
      // the parser's message, without the code frame it quotes from the file (that line may hold a password)
      const msg = redactUrl((err as Error).message.split('\n')[0]!.trim());
      throw new ConfigError([`--config: ${file}: ${msg}`]);
    }
  }
  if (opts.overrides) {
    for (const [k, v] of Object.entries(opts.overrides)) {
      try {
        c.set(k as never, v as never);
      } catch (err) {
        problems.push(`${k}: ${(err as Error).message}`);
      }
    }
  }
  try {
    c.validate({ allowed: 'strict' });
  } catch (err) {
    // convict repeats the value ("value was ..."): no URL userinfo, and not a 50 MB string
    for (const line of (err as Error).message.split('\n')) if (line.trim()) problems.push(clip(redactUrl(line.trim()), 400));
  }
  const p = c.getProperties() as Props;
  if (problems.length > 0) {
    // every problem at once: the cross-field and range checks still judge the keys the schema accepted (a check that
    // trips over a value of the wrong type has nothing to add to the schema's own message for it)
    const reported = new Set(problems.map(keyOf));
    let more: string[] = [];
    try {
      more = [...crossFieldProblems(p), ...rangeProblems(p)];
    } catch {
      more = [];
    }
    problems.push(...more.filter((m) => !reported.has(keyOf(m))));
    throw new ConfigError(problems);
  }
  problems.push(...crossFieldProblems(p), ...rangeProblems(p));
  const stateDir = p.store.dir || env.STATE_DIRECTORY?.split(':')[0] || resolve(process.cwd(), 'var');
  const modelDir = p.scoring.model ? resolve(p.scoring.model) : DEFAULT_MODEL_DIR;
  let mqttPassword = p.mqtt.password;
  const pwFile =
    p.mqtt.passwordFile ||
    (env.CREDENTIALS_DIRECTORY && existsSync(resolve(env.CREDENTIALS_DIRECTORY, 'mqtt-password'))
      ? resolve(env.CREDENTIALS_DIRECTORY, 'mqtt-password')
      : '');
  // a missing passwordFile is reported once, by crossFieldProblems
  if (pwFile && existsSync(pwFile)) {
    try {
      mqttPassword = readFileSync(pwFile, 'utf8').split(/\r?\n/)[0] ?? '';
    } catch (err) {
      problems.push(`mqtt.passwordFile: cannot read ${pwFile}: ${(err as Error).message}`);
    }
  }
  const ingestCurve = readCurveKeys(p, env, problems);
  if (p.scoring.scorer === 'cnn' && !existsSync(resolve(modelDir, 'manifest.json'))) {
    problems.push(`scoring.model: no manifest.json in ${modelDir}`);
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    ...p,
    source: { file },
    resolved: {
      baseTopic: (p.mqtt.baseTopic || `focusd/${p.scanner.id}`).replace(/\/+$/, ''),
      mqttClientId: p.mqtt.clientId || `focusd-${p.scanner.id}`,
      mqttPassword,
      ingestCurve,
      stateDir: isAbsolute(stateDir) ? stateDir : resolve(stateDir),
      modelDir,
      reportDir: p.reports.dir ? resolve(p.reports.dir) : resolve(stateDir, 'reports'),
    },
  }) as FocusdConfig;
}

function clip(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n)}… (${s.length} characters)`;
}

/** The key a problem line names ("decision.toleranceUm: must be ..." -> "decision.toleranceUm"). */
function keyOf(problem: string): string {
  return problem.split(/[:\s]/, 1)[0] ?? problem;
}

function readable(file: string): boolean {
  try {
    accessSync(file, fsConstants.R_OK);
    return true;
  } catch {
    return false;
  }
}

function crossFieldProblems(p: Props): string[] {
  const out: string[] = [];
  const bt = p.mqtt.baseTopic;
  // + and #, $, NUL and length: rangeProblems
  if (bt && (bt.startsWith('/') || bt.includes('//'))) out.push(`mqtt.baseTopic: "${bt}" must not start with / or contain empty levels`);
  const tls = p.mqtt.tls;
  if ((tls.cert && !tls.key) || (!tls.cert && tls.key)) out.push('mqtt.tls.cert / mqtt.tls.key: a client certificate needs both cert and key');
  for (const [k, f] of Object.entries({ 'mqtt.tls.ca': tls.ca, 'mqtt.tls.cert': tls.cert, 'mqtt.tls.key': tls.key, 'mqtt.passwordFile': p.mqtt.passwordFile })) {
    if (!f) continue;
    if (!existsSync(f)) out.push(`${k}: file not found: ${f}`);
    else if (!readable(f))
      out.push(`${k}: ${f} exists but this user (uid ${process.getuid?.() ?? '?'}) cannot read it; the daemon reads it as the service user (systemd/focusd.service: User=focusd), so check the file's owner and mode as that user`);
  }
  const secure = /^(mqtts|wss):/.test(p.mqtt.url);
  if ((tls.ca || tls.cert) && !secure) out.push(`mqtt.url: TLS files are set (mqtt.tls.*) but the URL "${p.mqtt.url}" is not mqtts:// or wss://`);
  if (p.mqtt.url === 'embedded' && (p.mqtt.username || p.mqtt.passwordFile || tls.cert))
    out.push('mqtt.url: focusd logs in to the embedded broker with credentials it generates; mqtt.username, mqtt.passwordFile, mqtt.tls.cert need an external broker URL');
  if (p.mqtt.url === 'embedded' && p.mqtt.embedded.open && !/^(127\.|::1$|localhost$)/.test(p.mqtt.embedded.host))
    out.push(`mqtt.embedded.open: an open broker is for loopback only, but mqtt.embedded.host is ${p.mqtt.embedded.host}`);
  if (/[+#\u0000-\u001f]/.test(p.mqtt.control.responsePrefix))
    out.push('mqtt.control.responsePrefix: must not contain wildcards (+, #) or control characters');
  if (p.mqtt.embedded.controlPasswordFile && !existsSync(p.mqtt.embedded.controlPasswordFile))
    out.push(`mqtt.embedded.controlPasswordFile: file not found: ${p.mqtt.embedded.controlPasswordFile}`);
  if (p.mqtt.topics.action.qos === 0)
    out.push('mqtt.topics.action.qos: must be 1 or 2, the action outbox waits for the broker acknowledgement');
  if (p.scoring.engine.device === 'gpu' && p.scoring.engine.type === 'onnx')
    out.push('scoring.engine.device: "gpu" is a tfjs device; for onnx use cuda or tensorrt');
  if ((p.scoring.engine.device === 'cuda' || p.scoring.engine.device === 'tensorrt') && p.scoring.engine.type === 'tfjs')
    out.push(`scoring.engine.device: "${p.scoring.engine.device}" is an onnx execution provider; for tfjs use gpu`);
  if (p.tissue.maxOd <= p.tissue.odThreshold) out.push('tissue.maxOd: must be larger than tissue.odThreshold');
  if (p.ingest.maxMessageBytes < 1024) out.push('ingest.maxMessageBytes: must be at least 1024');
  if (p.reports.timezone) {
    try {
      new Intl.DateTimeFormat('en', { timeZone: p.reports.timezone });
    } catch {
      out.push(`reports.timezone: "${p.reports.timezone}" is not an IANA time zone`);
    }
  }
  if (p.mqtt.embedded.port === 0 && p.mqtt.url === 'embedded') out.push('mqtt.embedded.port: must be set when mqtt.url is embedded');
  return out;
}

const Z85_KEY = /^[0-9a-zA-Z.\-:+=^!/*?&<>()[\]{}@%$#]{40}$/;

/**
 * ingest.curve.*: the server secret key and the allowed client public keys, from the configured files or the systemd
 * credentials ingest-curve-secret-key / ingest-curve-clients (like mqtt.passwordFile). Problems are collected.
 */
function readCurveKeys(p: Props, env: NodeJS.ProcessEnv, problems: string[]): FocusdConfig['resolved']['ingestCurve'] {
  const cred = (name: string) =>
    env.CREDENTIALS_DIRECTORY && existsSync(resolve(env.CREDENTIALS_DIRECTORY, name)) ? resolve(env.CREDENTIALS_DIRECTORY, name) : '';
  const secretFile = p.ingest.curve.secretKeyFile || cred('ingest-curve-secret-key');
  const clientsFile = p.ingest.curve.clientKeysFile || cred('ingest-curve-clients');
  if (!secretFile && !clientsFile) return null;
  const read = (key: string, file: string): string[] | null => {
    if (!file) {
      problems.push(`${key}: required when ${key === 'ingest.curve.clientKeysFile' ? 'ingest.curve.secretKeyFile' : 'ingest.curve.clientKeysFile'} is set`);
      return null;
    }
    try {
      return readFileSync(file, 'utf8')
        .split(/\r?\n/)
        .map((l) => l.trim())
        // whole-line comments only: # is a Z85 digit
        .filter((l) => l !== '' && !l.startsWith('#'));
    } catch (err) {
      problems.push(`${key}: cannot read ${file}: ${(err as Error).message}`);
      return null;
    }
  };
  const secret = read('ingest.curve.secretKeyFile', secretFile);
  const clients = read('ingest.curve.clientKeysFile', clientsFile);
  if (!secret || !clients) return null;
  // never echo a secret key, not even a malformed one
  if (secret.length !== 1 || !Z85_KEY.test(secret[0]!)) problems.push(`ingest.curve.secretKeyFile: ${secretFile} must hold one Z85 key of 40 characters`);
  const bad = clients.filter((k) => !Z85_KEY.test(k));
  if (bad.length) problems.push(`ingest.curve.clientKeysFile: ${bad.length} line(s) of ${clientsFile} are not Z85 public keys of 40 characters: ${bad.map((k) => JSON.stringify(k.slice(0, 44))).join(', ')}`);
  if (clients.length === 0) problems.push(`ingest.curve.clientKeysFile: ${clientsFile} lists no client key; no scanner could connect`);
  return { secretKey: secret[0] ?? '', clientKeys: clients };
}

/** Largest delay a Node.js timer takes; a larger one overflows to 1 ms (TimeoutOverflowWarning) and fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Longest base topic in UTF-8 bytes; MQTT allows 65 535 for the whole topic, sub-topics are appended to this. */
export const MAX_BASE_TOPIC_BYTES = 1024;

/** Why `topic` (a topic name or prefix from the configuration) cannot be published to, or null. */
export function topicProblem(topic: string, maxBytes = MAX_BASE_TOPIC_BYTES): string | null {
  if (Buffer.from(topic, 'utf8').toString('utf8') !== topic) return 'is not valid UTF-8 (a lone surrogate)';
  // MQTT forbids U+0000 (the broker drops the connection) and discourages the other control characters
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f-\u009f]/.test(topic)) return 'contains a control character (NUL, newline, ...)';
  if (topic.startsWith('$')) return 'starts with $ (reserved for the broker, e.g. $SYS: publishes there are refused)';
  if (/[+#]/.test(topic)) return 'contains + or # (wildcards cannot be published to)';
  const bytes = Buffer.byteLength(topic, 'utf8');
  if (bytes > maxBytes) return `is ${bytes} bytes long, at most ${maxBytes} allowed`;
  return null;
}

/**
 * After the drain, the rest of the stop (outbox, MQTT offline status, store) gets this long before `focusd run` exits
 * hard; drain + this must end before systemd's TimeoutStopSec.
 */
export const STOP_TEARDOWN_MS = 5000;

/** TimeoutStopSec of the shipped systemd unit, in ms (null when the unit is not there or does not set it). */
export function unitTimeoutStopMs(unit = resolve(PACKAGE_ROOT, 'systemd/focusd.service')): number | null {
  if (!existsSync(unit)) return null;
  const m = /^TimeoutStopSec=(\d+)(ms|s|min)?\s*$/m.exec(readFileSync(unit, 'utf8'));
  if (!m) return null;
  return Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 'min' ? 60_000 : 1000);
}

/**
 * Ranges convict's formats cannot express: ports inside endpoints, topics the broker accepts, timers Node.js can
 * set, signs of limits. Each of these was accepted by `check-config` and then broke at run time (issue 10).
 */
function rangeProblems(p: Props): string[] {
  const out: string[] = [];
  const tcp = /^tcp:\/\/(.+):(\d+)$/.exec(p.ingest.endpoint);
  // port 0 asks the OS for a free port (tests); libzmq takes any other number modulo 65536
  if (tcp && Number(tcp[2]) > 65535) out.push(`ingest.endpoint: port ${tcp[2]} in "${p.ingest.endpoint}" is not 1..65535`);
  if (p.mqtt.url !== 'embedded') {
    const m = /^[a-z]+:\/\/(?:[^@/]*@)?(?:\[[^\]]*\]|[^:/]*)(?::(\d*))?(?:\/|$)/i.exec(p.mqtt.url);
    if (m && m[1] !== undefined && !(Number(m[1]) >= 1 && Number(m[1]) <= 65535))
      out.push(`mqtt.url: port "${m[1]}" is not 1..65535`);
  }
  const bt = p.mqtt.baseTopic;
  const why = bt ? topicProblem(bt) : null;
  if (why) out.push(`mqtt.baseTopic: ${JSON.stringify(bt)} ${why}`);
  const clientIdWhy = p.mqtt.clientId ? topicProblem(p.mqtt.clientId, 65535) : null;
  if (clientIdWhy && /UTF-8|control/.test(clientIdWhy)) out.push(`mqtt.clientId: ${clientIdWhy}`);
  const timers: Array<[string, number]> = [
    ['shutdown.drainTimeoutMs', p.shutdown.drainTimeoutMs],
    ['mqtt.connectTimeoutMs', p.mqtt.connectTimeoutMs],
    ['mqtt.reconnectMs', p.mqtt.reconnectMs],
    ['mqtt.statsIntervalS', p.mqtt.statsIntervalS * 1000],
    ['controller.actionTtlS', p.controller.actionTtlS * 1000],
  ];
  for (const [k, ms] of timers) if (ms > MAX_TIMER_MS) out.push(`${k}: ${ms} ms is longer than a timer can wait (${MAX_TIMER_MS} ms, about 24.8 days)`);
  const stopMs = unitTimeoutStopMs();
  if (stopMs !== null && p.shutdown.drainTimeoutMs + STOP_TEARDOWN_MS >= stopMs && p.shutdown.drainTimeoutMs <= MAX_TIMER_MS)
    out.push(
      `shutdown.drainTimeoutMs: ${p.shutdown.drainTimeoutMs} ms plus ${STOP_TEARDOWN_MS} ms to stop the rest is not below TimeoutStopSec of systemd/focusd.service (${stopMs} ms): systemd would kill focusd mid-stop; at most ${stopMs - STOP_TEARDOWN_MS - 1} ms`,
    );
  // sizes that are memory: a typo (an extra zero, 1e300) must not become a daemon that can be made to hold gigabytes
  const ceilings: Array<[string, number, number, string]> = [
    ['ingest.maxMessageBytes', p.ingest.maxMessageBytes, 1024 ** 3, '1 GiB'],
    ['ingest.maxPixels', p.ingest.maxPixels, 400_000_000, '400 Mpx'],
    ['ingest.highWaterMark', p.ingest.highWaterMark, 10_000, '10 000 messages'],
    ['pipeline.queueSize', p.pipeline.queueSize, 4096, '4096 tiles'],
    ['pipeline.scoreConcurrency', p.pipeline.scoreConcurrency, 64, '64'],
    ['pipeline.decodeConcurrency', p.pipeline.decodeConcurrency, 64, '64'],
    ['mqtt.maxOfflineQueue', p.mqtt.maxOfflineQueue, 1_000_000, '1 000 000'],
    ['mqtt.maxErrorBacklog', p.mqtt.maxErrorBacklog, 1_000_000, '1 000 000'],
    ['mqtt.embedded.maxPacketBytes', p.mqtt.embedded.maxPacketBytes, 256 * 1024 ** 2, '256 MiB'],
  ];
  if (p.mqtt.url === 'embedded' && p.mqtt.embedded.maxPacketBytes < p.mqtt.control.maxRequestBytes + 1024)
    out.push(`mqtt.embedded.maxPacketBytes: ${p.mqtt.embedded.maxPacketBytes} leaves no room for a control request of mqtt.control.maxRequestBytes (${p.mqtt.control.maxRequestBytes}) and its topic`);
  for (const [k, v, max, what] of ceilings) if (v > max) out.push(`${k}: ${v} is more than ${what}; memory is held in proportion`);
  // procfs and sysfs are not storage (a recursive mkdir there never returns)
  const dir = p.store.dir ? resolve(p.store.dir) : '';
  if (/^\/(proc|sys|dev)(\/|$)/.test(dir)) out.push(`store.dir: ${dir} is under /proc, /sys or /dev, not a place for the history`);
  if (p.mqtt.embedded.controlPasswordFile && existsSync(p.mqtt.embedded.controlPasswordFile) && !statSync(p.mqtt.embedded.controlPasswordFile).isFile())
    out.push(`mqtt.embedded.controlPasswordFile: ${p.mqtt.embedded.controlPasswordFile} is not a file`);
  // one port, one listener: name both keys here instead of an EADDRINUSE at start
  const ports: Array<[string, string, number]> = [];
  if (p.http.port > 0) ports.push(['http.port', p.http.host, p.http.port]);
  if (p.mqtt.url === 'embedded' && p.mqtt.embedded.port > 0) ports.push(['mqtt.embedded.port', p.mqtt.embedded.host, p.mqtt.embedded.port]);
  if (tcp && Number(tcp[2]) > 0) ports.push(['ingest.endpoint', tcp[1]!, Number(tcp[2])]);
  const any = (h: string) => ['0.0.0.0', '::', '*', '[::]', ''].includes(h);
  for (let i = 0; i < ports.length; i++)
    for (let j = i + 1; j < ports.length; j++) {
      const [ka, ha, pa] = ports[i]!;
      const [kb, hb, pb] = ports[j]!;
      if (pa === pb && (ha === hb || any(ha) || any(hb))) out.push(`${kb}: port ${pb} on ${hb} is also ${ka}'s; each listener needs its own`);
    }
  if (p.mqtt.keepaliveS > 65535) out.push(`mqtt.keepaliveS: ${p.mqtt.keepaliveS} is above the MQTT maximum of 65535 s`);
  if (!(p.controller.limits.deadBandUm >= 0)) out.push(`controller.limits.deadBandUm: must be >= 0, got ${p.controller.limits.deadBandUm}`);
  if (!(p.controller.limits.maxTiltUmPerMm >= 0)) out.push(`controller.limits.maxTiltUmPerMm: must be >= 0, got ${p.controller.limits.maxTiltUmPerMm}`);
  if (!(p.controller.drift.leadUm >= 0 && p.controller.drift.leadUm < p.decision.toleranceUm))
    out.push(`controller.drift.leadUm: must be >= 0 and below decision.toleranceUm (${p.decision.toleranceUm}), got ${p.controller.drift.leadUm}`);
  if (!(p.controller.drift.hysteresisUm >= 0)) out.push(`controller.drift.hysteresisUm: must be >= 0, got ${p.controller.drift.hysteresisUm}`);
  return out;
}

/** Schema with docs and defaults, for `focusd check-config --schema` and the README reference. */
export function describeSchema(): Array<{ key: string; doc: string; default: unknown; env?: string; arg?: string; format: string }> {
  const out: Array<{ key: string; doc: string; default: unknown; env?: string; arg?: string; format: string }> = [];
  const walk = (node: Record<string, unknown>, prefix: string) => {
    for (const [k, v] of Object.entries(node)) {
      const key = prefix ? `${prefix}.${k}` : k;
      const o = v as Record<string, unknown>;
      if (o && typeof o === 'object' && 'doc' in o && 'default' in o) {
        const fmt = o.format;
        out.push({
          key,
          doc: String(o.doc),
          // mqtt.url is sensitive (it may carry a password) but its default is not a secret
          default: o.sensitive && /pass|secret|token/i.test(k) ? '(secret)' : o.default,
          ...(o.env ? { env: String(o.env) } : {}),
          ...(o.arg ? { arg: `--${String(o.arg)}` } : {}),
          format: Array.isArray(fmt) ? fmt.join(' | ') : typeof fmt === 'function' ? fmt.name.toLowerCase() : String(fmt),
        });
      } else if (o && typeof o === 'object') walk(o, key);
    }
  };
  walk(schema as unknown as Record<string, unknown>, '');
  return out;
}
