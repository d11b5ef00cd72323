// A slow scorer must not stop the daemon from answering on ZeroMQ and MQTT: inference runs off the event loop.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../config/load.js';
import { Daemon } from '../../daemon/daemon.js';
import { createLogger } from '../../core/logger.js';
import type { TileHeader } from '../../core/types.js';
import { synthTile } from '../../sim/procedural.js';
import { TileSender } from '../../sim/replay.js';
import { Collector } from '../helpers/mqtt-side.js';
import { freePort, MOSQUITTO_URL, uniqueId } from '../helpers/net.js';
import { writeOnnxBundle } from '../helpers/tiny-model.js';

const W = 1600;
const H = 1200;
let daemon: Daemon;
let base: string;
let raw: Buffer;

beforeAll(async () => {
  const bundle = join(mkdtempSync(join(tmpdir(), 'focusd-slow-')), 'slow');
  // an 8-layer, 48-channel CNN on every tissue patch of a full tile: seconds of inference per tile on this machine
  writeOnnxBundle(bundle, 'model', true);
  raw = synthTile({ width: W, height: H, seed: 3, kind: 'tissue', defocusUm: 1 }).rgb;
  const id = uniqueId('slow');
  base = `focusd/${id}`;
  const config = loadConfig({
    env: {},
    overrides: {
      'scanner.id': id,
      'ingest.endpoint': `tcp://127.0.0.1:${await freePort()}`,
      'ingest.pattern': 'router',
      'mqtt.url': MOSQUITTO_URL,
      'store.dir': mkdtempSync(join(tmpdir(), 'focusd-slow-state-')),
      'scoring.scorer': 'cnn',
      'scoring.model': bundle,
      'scoring.patches.maxPerTile': 0,
      // one inference call per tile: were it on the event loop, nothing could be answered until it finished
      'scoring.engine.batchSize': 256,
      'reports.schedule': '',
      'mqtt.statsIntervalS': 0,
    },
  });
  daemon = new Daemon(config, { logger: createLogger({ level: 'error', format: 'json' }), env: {} });
  await daemon.start();
}, 120_000);

afterAll(async () => {
  await daemon?.stop('test done');
});

const header = (seq: number): TileHeader => ({
  v: 1, scanner: 'slow', slide: 's', scan: 'c', seq, tile: { index: seq, row: 0, col: seq }, stage_um: { x: seq * 352, y: 0, z: 50 },
  pixel_size_um: 0.22, objective: '20x', acquired_at: new Date().toISOString(), attempt: 0, format: 'raw', width: W, height: H, pixel_type: 'RGB24',
});

it('answers a bad ZeroMQ message and an MQTT control request while slow tiles are being scored', async () => {
  const events: string[] = [];
  const tiles = new TileSender({ endpoint: daemon.ingestEndpoint, pattern: 'dealer', timeoutMs: 120_000 });
  const other = new TileSender({ endpoint: daemon.ingestEndpoint, pattern: 'req', timeoutMs: 120_000 });
  tiles.connect();
  other.connect();
  const ctl = await Collector.connect(MOSQUITTO_URL, [`${base}/control/response`]);
  try {
    const t0 = performance.now();
    const verdicts = [0, 1, 2].map((i) => tiles.send(header(i), raw).then((r) => (events.push(`tile${i}`), r)));
    // wait until the daemon is busy with the first tile
    await new Promise<void>((r) => {
      const off = daemon.ctx.events.on('tile:received', () => (off(), r()));
    });
    const bad = other.sendFrames([Buffer.from('{"v":1,'), Buffer.from('x')]).then((r) => (events.push('zmq-reply'), r));
    await ctl.client.publishAsync(`${base}/control/request`, JSON.stringify({ command: 'get_status', correlation_id: 'c-1' }), { qos: 1 });
    const resp = await ctl.wait((m) => m.json.correlation_id === 'c-1' || m.json.command === 'get_status', 60_000, 'control response');
    events.push('mqtt-response');
    expect(await bad).toMatchObject({ ok: false, reason: 'bad_json' });
    expect(resp.json.ok).toBe(true);
    const replies = await Promise.all(verdicts);
    const scoringMs = performance.now() - t0;
    expect(replies.every((r) => r?.ok)).toBe(true);
    // the check only means something if scoring really was slow
    expect(scoringMs).toBeGreaterThan(1000);
    // both answers came while tiles were still being scored, before the first verdict
    expect(events.indexOf('zmq-reply')).toBeLessThan(events.indexOf('tile0'));
    expect(events.indexOf('mqtt-response')).toBeLessThan(events.indexOf('tile0'));
  } finally {
    await tiles.close();
    await other.close();
    await ctl.close();
  }
});
