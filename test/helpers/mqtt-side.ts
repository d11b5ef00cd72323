// Helpers of the MQTT / controller / outbox / store tests: a real context, scripted tiles, schema validation,
// a private Mosquitto process for outage tests (test/helpers/mosquitto.ts), and a subscriber that collects messages.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import AjvModule from 'ajv';
import addFormatsModule from 'ajv-formats';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import type { Context } from '../../core/context.js';
import type { TileOutcome, Verdict } from '../../core/types.js';
import { testContext } from './context.js';

export function makeCtx(overrides: Record<string, unknown> = {}): Context & { logLines: () => string[] } {
  const { ctx, logs } = testContext(overrides);
  return { ...ctx, logLines: () => logs.map((l) => JSON.stringify(l)) };
}

export function tempDir(prefix = 'focusd-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export interface TileSpec {
  scanner?: string;
  slide?: string;
  scan?: string;
  seq: number;
  index?: number;
  row?: number;
  col?: number;
  attempt?: number;
  x?: number;
  y?: number;
  z?: number;
  /** signed defocus the scorer reports; null = no tissue. */
  d: number | null;
  conf?: number | null;
  /** the bundle's calibration as the scorer reports it; default: fitted on a focus stack, sign as the model says. */
  calibration?: { sign: 'model' | 'inverted' | 'unrecoverable'; fitted: boolean; guard_um?: number };
  tol?: number;
  verdict?: Verdict;
  /** the tile's relative sharpness (ScoreResult.sharpness); absent: not measured. */
  sharp?: number;
  /** tissue fraction (default 0.6 with a score, 0.01 without). */
  tissue?: number;
}

/** A scored tile as the pipeline emits it. */
export function outcome(t: TileSpec): TileOutcome {
  const tol = t.tol ?? 1;
  const index = t.index ?? t.seq;
  // as daemon/pipeline.ts decides: a calibrated bundle's guard band moves the boundary inside the tolerance
  const verdict: Verdict = t.verdict ?? (t.d === null ? 'no_tissue' : Math.abs(t.d) > tol - (t.calibration?.guard_um ?? 0) ? 'out_of_focus' : 'in_focus');
  return {
    header: {
      v: 1,
      scanner: t.scanner ?? 'scanner-a',
      slide: t.slide ?? 'slide-1',
      scan: t.scan ?? 'scan-1',
      seq: t.seq,
      tile: { index, row: t.row ?? Math.floor(index / 10), col: t.col ?? index % 10 },
      stage_um: { x: t.x ?? (index % 10) * 500, y: t.y ?? Math.floor(index / 10) * 500, z: t.z ?? 100 },
      pixel_size_um: 0.22,
      objective: '20x',
      acquired_at: new Date().toISOString(),
      attempt: t.attempt ?? 0,
      format: 'png',
    },
    verdict,
    score: {
      defocus_um: t.d,
      uncertainty_um: t.d === null ? null : 0.2,
      sign_confidence: t.d === null ? null : (t.conf === undefined ? 0.95 : t.conf),
      tissue_fraction: t.tissue ?? (t.d === null ? 0.01 : 0.6),
      patches: t.d === null ? 0 : 8,
      focus_map: t.d === null ? null : { rows: 2, cols: 2, defocus_um: [t.d, t.d, null, t.d] },
      // a bundle calibrated on this instrument's focus stack: its confident signs are trusted from the start
      model: { name: 'test-model', version: '1.0.0', sha256: 'abc', engine: 'classical', pixel_size_um: 0.22, calibration: { guard_um: 0, ...(t.calibration ?? { sign: 'model', fitted: true }) } },
      ...(t.sharp === undefined ? {} : { sharpness: t.sharp }),
    },
    latency_ms: 12.5,
  };
}

// ---- schemas ------------------------------------------------------------------------------------------------

const Ajv = AjvModule.default;
const addFormats = addFormatsModule.default;
const ajv = new Ajv({ allErrors: true, strict: true, strictRequired: false });
addFormats(ajv);
const SCHEMA_DIR = resolve(import.meta.dirname, '../../docs/schemas');
const validators = new Map<string, ReturnType<typeof ajv.compile>>();

/** Throws with ajv's errors when `payload` does not match docs/schemas/<name>.schema.json. */
export function assertSchema(name: string, payload: unknown): void {
  let v = validators.get(name);
  if (!v) {
    v = ajv.compile(JSON.parse(readFileSync(join(SCHEMA_DIR, `${name}.schema.json`), 'utf8')));
    validators.set(name, v);
  }
  if (!v(payload)) throw new Error(`${name} payload does not match its schema: ${ajv.errorsText(v.errors)}\n${JSON.stringify(payload)}`);
}

// ---- subscriber ---------------------------------------------------------------------------------------------

export interface Received {
  topic: string;
  json: Record<string, unknown>;
  packet: IPublishPacket;
}

export class Collector {
  readonly messages: Received[] = [];
  private waiters: { pred: (m: Received) => boolean; res: (m: Received) => void }[] = [];
  constructor(readonly client: MqttClient) {
    client.on('message', (topic, payload, packet) => {
      let json: Record<string, unknown>;
      try {
        json = JSON.parse(payload.toString());
      } catch {
        json = { unparsable: payload.toString() };
      }
      const m = { topic, json, packet };
      this.messages.push(m);
      this.waiters = this.waiters.filter((w) => (w.pred(m) ? (w.res(m), false) : true));
    });
  }

  static async connect(url: string, topics: string[], opts: IClientOptions = {}): Promise<Collector> {
    const client = await mqtt.connectAsync(url, { protocolVersion: 5, reconnectPeriod: 100, ...opts });
    const c = new Collector(client);
    if (topics.length) await client.subscribeAsync(topics, { qos: 1 });
    return c;
  }

  on(topic: string): Received[] {
    return this.messages.filter((m) => m.topic === topic);
  }

  /** The first message (already received or future) matching pred. */
  wait(pred: (m: Received) => boolean, timeoutMs = 10_000, what = 'message'): Promise<Received> {
    const have = this.messages.find(pred);
    if (have) return Promise.resolve(have);
    return new Promise((res, rej) => {
      const t = setTimeout(() => rej(new Error(`timed out waiting for ${what}; got ${this.messages.map((m) => m.topic).join(', ')}`)), timeoutMs);
      this.waiters.push({ pred, res: (m) => (clearTimeout(t), res(m)) });
    });
  }

  async until(cond: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await sleep(25);
    }
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function until(cond: () => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

// ---- a private Mosquitto (outage tests must not stop the shared one) --------------------------------------

export { PrivateMosquitto } from './mosquitto.js';
