// A flood of rejected messages against the real forked daemon (pull, classical scorer, real Mosquitto): rejections
// arrive at the sender's rate, not the scorer's, so their error messages and log lines must be bounded, every one
// counted, the broker link kept, and the next valid tile still scored and published. (Found by attack: 20 000
// messages with 60 KB headers took the daemon to 2.9 GB, its MQTT link down with ENOBUFS, and lost a tile message.)
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as zmq from 'zeromq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_HEADER_ECHO_BYTES } from '../../adapters/mqtt.js';
import { baseHeader, makePayloads, type Payloads } from '../helpers/fuzz.js';
import { Collector } from '../helpers/mqtt-side.js';
import { freePort, MOSQUITTO_URL, uniqueId } from '../helpers/net.js';
import { spawnFocusd, type FocusdProcess } from '../helpers/proc.js';

const FLOOD = 2000;
const BACKLOG = 20;

let payloads: Payloads;
const children: FocusdProcess[] = [];
beforeAll(async () => {
  payloads = await makePayloads();
});
afterAll(() => {
  for (const c of children) if (c.child.exitCode === null) c.child.kill('SIGKILL');
});

describe('a flood of rejected messages (real daemon, pull)', () => {
  it(`${FLOOD} rejections with 60 KB headers: error messages echo the header's ids only, at most mqtt.maxErrorBacklog wait, the rest are counted and summed up; one log line per reason per interval; the next tile is published`, async () => {
    const id = uniqueId('flood');
    const httpPort = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'focusd-flood-'));
    const config = join(dir, 'focusd.json');
    writeFileSync(config, JSON.stringify({ mqtt: { maxErrorBacklog: BACKLOG } }));
    const proc = spawnFocusd(['run', '--config', config], {
      FOCUSD_SCANNER_ID: id,
      FOCUSD_INGEST_ENDPOINT: `tcp://127.0.0.1:${await freePort()}`,
      FOCUSD_INGEST_PATTERN: 'pull',
      FOCUSD_MQTT_URL: MOSQUITTO_URL,
      FOCUSD_STATE_DIR: dir,
      FOCUSD_REPORT_SCHEDULE: '',
      FOCUSD_SCORER: 'classical',
      FOCUSD_HTTP_PORT: String(httpPort),
      FOCUSD_STATS_INTERVAL_S: '0',
      FOCUSD_LOG_LEVEL: 'info',
    });
    children.push(proc);
    await proc.waitForLine((l) => typeof l.message === 'string' && l.message.startsWith('focusd ready'), 60_000);
    const base = `focusd/${id}`;
    const sub = await Collector.connect(MOSQUITTO_URL, [`${base}/tile`, `${base}/error`]);
    try {
      const push = new zmq.Push({ linger: 5000, sendHighWaterMark: 100_000 });
      const endpoint = ((await (await fetch(`http://127.0.0.1:${httpPort}/status`)).json()) as { ingest: { endpoint: string } }).ingest.endpoint;
      push.connect(endpoint);
      const pad = 'x'.repeat(60_000);
      for (let i = 0; i < FLOOD; i++) {
        // v 2: rejected as unsupported_version after the header parsed, so the whole 60 KB header is "received"
        const h = { ...baseHeader(id, i), v: 2, x_pad: pad };
        await push.send([Buffer.from(JSON.stringify(h)), payloads.raw]);
      }
      await push.send([Buffer.from(JSON.stringify(baseHeader(id, FLOOD))), payloads.raw]);
      push.close();

      // the valid tile after the flood is scored and its message arrives (the broker link held)
      await sub.wait((m) => m.topic === `${base}/tile` && m.json.seq === FLOOD, 60_000, 'the tile after the flood');
      // every rejection is counted
      const metrics = async () => ((await (await fetch(`http://127.0.0.1:${httpPort}/status`)).json()) as { metrics: Record<string, unknown> }).metrics;
      for (const end = Date.now() + 30_000; ((await metrics()).rejected_by_reason as Record<string, number>).unsupported_version !== FLOOD; ) {
        if (Date.now() > end) throw new Error(`not every rejection counted: ${JSON.stringify((await metrics()).rejected_by_reason)}`);
        await new Promise((r) => setTimeout(r, 200));
      }
      const summary = await sub.wait((m) => m.topic === `${base}/error` && m.json.reason === 'rejections_suppressed', 30_000, 'the rejections_suppressed summary');
      expect(summary.json.detail).toMatch(/mqtt\.maxErrorBacklog/);

      const errors = sub.on(`${base}/error`);
      const one = errors.filter((m) => m.json.reason === 'unsupported_version');
      const suppressed = errors.filter((m) => m.json.reason === 'rejections_suppressed').map((m) => m.json.suppressed as { total: number; by_reason: Record<string, number> });
      const suppressedTotal = suppressed.reduce((a, s) => a + s.total, 0);
      expect(suppressedTotal).toBeGreaterThan(0);
      for (const s of suppressed) expect(s.by_reason).toEqual({ unsupported_version: s.total });
      // nothing lost uncounted: published one by one, or counted in a summary
      expect(one.length + suppressedTotal).toBe(FLOOD);
      expect((await metrics()).error_messages_suppressed).toBe(suppressedTotal);
      // each message echoes the header's correlation fields and its size, not 60 KB
      for (const m of one) {
        const r = m.json.received as { header: Record<string, unknown>; header_truncated: number };
        expect(r.header_truncated).toBeGreaterThan(60_000);
        expect(r.header).toMatchObject({ v: 2, scanner: id, slide: 'fuzz-slide' });
        expect(typeof r.header.seq).toBe('number');
        expect(m.packet.payload.length).toBeLessThan(ERROR_HEADER_ECHO_BYTES);
      }
      // the journal got a handful of lines for 2000 rejections, each saying how many it stands for
      const lines = proc.lines.filter((l) => typeof l.message === 'string' && l.message.startsWith('tile rejected: unsupported_version'));
      expect(lines.length).toBeGreaterThanOrEqual(1);
      expect(lines.length).toBeLessThanOrEqual(5);
      expect(proc.child.exitCode).toBeNull();
    } finally {
      await sub.client.endAsync();
      proc.child.kill('SIGTERM');
      await proc.exited;
    }
  }, 180_000);
});
