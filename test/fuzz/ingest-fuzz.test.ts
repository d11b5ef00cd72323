// Ingest fuzz suite (issue 10): the committed corpus of malformed messages (test/fuzz/corpus/*.json) and a seeded
// mutation fuzzer, sent to the real forked daemon (classical scorer, real Mosquitto) in both ingest patterns.
// Every message must get exactly one reply (router) and exactly one count (metrics) and one tile or error message
// (MQTT); a valid tile sent after malformed ones must still score; the daemon's RSS must stay bounded.
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as zmq from 'zeromq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseHeader, buildCase, type FuzzMessage, loadCorpus, makePayloads, mutants, type Payloads } from '../helpers/fuzz.js';
import { Collector, until } from '../helpers/mqtt-side.js';
import { freePort, MOSQUITTO_URL, uniqueId } from '../helpers/net.js';
import { spawnFocusd, type FocusdProcess } from '../helpers/proc.js';
import { validateReply } from '../helpers/tile-reply-schema.js';

/** Mutants per pattern (with the corpus and the probes, ~1 000 messages per pattern, ~2 000 in all). */
const MUTANTS = Number(process.env.FOCUSD_FUZZ_MUTANTS ?? 900);
const SEED = Number(process.env.FOCUSD_FUZZ_SEED ?? 20261201);
/** A valid tile is sent after every this many messages (router) and must score. */
const PROBE_EVERY = 100;
/** RSS may grow by at most this much from after the first probe to the end (no leak per message). */
const RSS_GROWTH_LIMIT_MB = 200;
const RSS_LIMIT_MB = 1024;


const corpus = loadCorpus(new URL('./corpus/', import.meta.url));
let payloads: Payloads;
const children: FocusdProcess[] = [];

beforeAll(async () => {
  payloads = await makePayloads();
});
afterAll(() => {
  for (const c of children) if (c.child.exitCode === null) c.child.kill('SIGKILL');
});

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

interface Counts {
  scored: number;
  rejected: number;
  skipped: number;
}

async function startDaemon(pattern: 'pull' | 'router') {
  const id = uniqueId('fuzz');
  const httpPort = await freePort();
  const proc = spawnFocusd(['run'], {
    FOCUSD_SCANNER_ID: id,
    FOCUSD_INGEST_ENDPOINT: `tcp://127.0.0.1:${await freePort()}`,
    FOCUSD_INGEST_PATTERN: pattern,
    FOCUSD_MQTT_URL: MOSQUITTO_URL,
    FOCUSD_STATE_DIR: mkdtempSync(join(tmpdir(), 'focusd-fuzz-')),
    FOCUSD_REPORT_SCHEDULE: '',
    FOCUSD_SCORER: 'classical',
    FOCUSD_HTTP_PORT: String(httpPort),
    FOCUSD_MAX_MESSAGE_BYTES: String(4 * 1024 * 1024),
    FOCUSD_STATS_INTERVAL_S: '0',
    // every rejection is a warning line; errors only keep the test's log parsing cheap
    FOCUSD_LOG_LEVEL: 'error',
  });
  children.push(proc);
  // the ready line is at info: ask /healthz instead
  const deadline = Date.now() + 60_000;
  for (;;) {
    const ok = await fetch(`http://127.0.0.1:${httpPort}/healthz`).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > deadline || proc.child.exitCode !== null) throw new Error(`focusd did not get ready: ${proc.stderr.join('')}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const counts = async (): Promise<Counts> => {
    const s = (await (await fetch(`http://127.0.0.1:${httpPort}/status`)).json()) as { metrics: Counts };
    return { scored: s.metrics.scored, rejected: s.metrics.rejected, skipped: s.metrics.skipped };
  };
  const endpoint = (await (await fetch(`http://127.0.0.1:${httpPort}/status`)).json() as { ingest: { endpoint: string } }).ingest.endpoint;
  return { id, base: `focusd/${id}`, proc, counts, endpoint };
}

describe.each(['router', 'pull'] as const)('ingest fuzz against the real daemon (%s)', (pattern) => {
  it(`corpus (${corpus.length} cases) and ${MUTANTS} seeded mutants: one reply, one count, one message each; the next tile scores; RSS bounded`, async () => {
    const d = await startDaemon(pattern);
    const sub = await Collector.connect(MOSQUITTO_URL, [`${d.base}/tile`, `${d.base}/error`]);
    let tiles = 0;
    let errors = 0;
    // error messages about messages carry `received`; the controller's own (action_refused) do not
    sub.client.on('message', (topic, payload) => {
      if (topic.endsWith('/tile')) tiles++;
      else if ((JSON.parse(payload.toString()) as { received?: unknown }).received) errors++;
    });
    let seq = 0;
    /** a valid tile with the next seq: it must be scored. */
    const probe = (): FuzzMessage => {
      const h = baseHeader(d.id, seq++);
      return { name: `probe ${h.seq}`, frames: [Buffer.from(JSON.stringify(h)), payloads.raw], expect: 'ok' };
    };
    const messages: FuzzMessage[] = [];
    for (const c of corpus) messages.push(buildCase(c, d.id, seq++, payloads));
    for (const m of mutants(SEED + (pattern === 'pull' ? 1 : 0), MUTANTS, d.id, 100_000, payloads)) {
      if (messages.length % PROBE_EVERY === 0) messages.push(probe());
      messages.push(m);
    }
    messages.push(probe());

    // warm-up: one valid tile scored (workers started, buffers allocated), then the RSS baseline
    const warm = probe();
    if (pattern === 'pull') {
      const push = new zmq.Push({ linger: 5000 });
      push.connect(d.endpoint);
      await push.send(warm.frames);
      push.close();
    } else {
      const dealer = new zmq.Dealer({ linger: 0, receiveTimeout: 30_000 });
      dealer.connect(d.endpoint);
      await dealer.send([Buffer.alloc(0), ...warm.frames]);
      await dealer.receive();
      dealer.close();
    }
    await until(() => tiles === 1, 20_000, 'the warm-up tile');
    const rssStart = rssMb(d.proc.child.pid!);
    const failures: string[] = [];
    const t0 = performance.now();
    if (pattern === 'router') {
      const dealer = new zmq.Dealer({ linger: 0, receiveTimeout: 30_000 });
      dealer.connect(d.endpoint);
      try {
        for (const m of messages) {
          await dealer.send([Buffer.alloc(0), ...m.frames]);
          let reply: Record<string, unknown>;
          try {
            const frames = await dealer.receive();
            reply = JSON.parse(frames[frames.length - 1]!.toString('utf8'));
          } catch (err) {
            failures.push(`${m.name}: no reply (${(err as Error).message})`);
            break;
          }
          if (!validateReply(reply)) failures.push(`${m.name}: reply does not match tile-reply.schema.json: ${JSON.stringify(validateReply.errors)}`);
          const got = reply.ok ? 'ok' : String(reply.reason);
          if (m.expect !== null && got !== m.expect) failures.push(`${m.name}: expected ${m.expect}, got ${got}: ${String(reply.detail ?? '')}`);
        }
        // exactly one reply each: nothing more may arrive
        dealer.receiveTimeout = 300;
        const extra = await dealer.receive().then(
          (f) => f,
          () => null,
        );
        if (extra) failures.push(`an extra reply arrived: ${extra[extra.length - 1]!.toString('utf8').slice(0, 200)}`);
      } finally {
        dealer.close();
      }
    }
    // pull: the socket stays open until everything is counted (back-pressure holds messages in its queue)
    const push = pattern === 'pull' ? new zmq.Push({ linger: 0, sendTimeout: 30_000 }) : null;
    push?.connect(d.endpoint);
    if (push) for (const m of messages) await push.send(m.frames);
    expect(failures, failures.slice(0, 20).join('\n')).toEqual([]);

    // one count and one MQTT message per message
    const n = messages.length + 1; // and the warm-up tile
    let c: Counts = { scored: 0, rejected: 0, skipped: 0 };
    const deadline = Date.now() + 60_000;
    for (;;) {
      c = await d.counts();
      if (c.scored + c.rejected + c.skipped >= n || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(c.scored + c.rejected + c.skipped, JSON.stringify(c)).toBe(n);
    await until(() => tiles + errors >= n, 20_000, `${n} tile/error messages (have ${tiles} + ${errors})`).catch(() => undefined);
    expect(tiles + errors).toBe(n);
    expect(tiles).toBe(c.scored);

    // the next valid tile scores (pull: it is only visible as the count and its tile message)
    if (push) {
      const last = probe();
      const h = JSON.parse(last.frames[0]!.toString()) as { seq: number };
      await push.send(last.frames);
      const m = await sub.wait((x) => x.topic === `${d.base}/tile` && x.json.seq === h.seq, 20_000, 'the probe tile');
      expect(['in_focus', 'out_of_focus']).toContain(m.json.verdict);
      push.close();
    }
    const rssEnd = rssMb(d.proc.child.pid!);
    const secs = (performance.now() - t0) / 1000;
    // the numbers the report quotes (vitest prints console output of passing tests with --reporter=verbose)
    console.log(`fuzz ${pattern}: ${n} messages in ${secs.toFixed(1)} s, scored ${c.scored}, rejected ${c.rejected}, rss ${rssStart.toFixed(0)} → ${rssEnd.toFixed(0)} MB`);
    expect(rssEnd).toBeLessThan(RSS_LIMIT_MB);
    expect(rssEnd - rssStart).toBeLessThan(RSS_GROWTH_LIMIT_MB);
    expect(d.proc.child.exitCode).toBeNull();

    await sub.close();
    d.proc.child.kill('SIGTERM');
    const exit = await d.proc.exited;
    expect(exit.code).toBe(0);
  }, 240_000);
});
