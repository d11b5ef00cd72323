// Seeded fuzz of MQTT control requests (issue 10) against the forked daemon on the real Mosquitto: 500 requests of
// valid, absurd, malformed, deep, huge and mis-addressed kinds. Every request gets exactly one answer (counted as a
// request, refusals counted by reason), nothing lands outside the response topics, the daemon keeps scoring and its
// RSS stays bounded. FOCUSD_FUZZ_SEED replays a run; the seed is in the failure message.
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TileSender } from '../../sim/replay.js';
import { getJson, scanTiles, startDaemon, stopDaemon, tileHeader, type RunningDaemon } from '../helpers/daemon-run.js';
import { assertSchema, Collector, sleep } from '../helpers/mqtt-side.js';
import { MOSQUITTO_URL, uniqueId } from '../helpers/net.js';
import { rng32 } from '../../sim/procedural.js';

const N = 500;
const SEED = Number(process.env.FOCUSD_FUZZ_SEED ?? 20261201);
/** RSS growth allowed (MB) over the run: V8 grows its heap lazily (seen: +45 to +60 MB on a loaded 2-core box), so this
 * catches runaway growth (the 5 GB patch-grid class of bug), not a leak of a few kB per request. */
const RSS_BOUND_MB = 150;

/** mulberry32, seeded (the procedural generator's). */
const rng = rng32;

interface Case {
  payload: Buffer;
  responseTopic?: string;
  what: string;
}

function makeCases(base: string, other: string, seed: number): Case[] {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const int = (lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1));
  const prefix = `${base}/control/response/`;
  const numbers = [0, -0, 1e-300, -1, 0.0999, 0.1, 1, 2.5, 10, 10.0001, 1e300, -1e308, 2 ** 53 + 1, 0.5, 7];
  const commands = ['pause', 'resume', 'set_tolerance', 'set_dry_run', 'get_config', 'get_slide_summary', 'get_status', 'reboot', '', 'PAUSE'];
  const junkValue = (depth = 0): unknown => {
    const makers = [() => null, () => true, () => pick(numbers), () => 'x'.repeat(int(0, 40)), () => pick(commands), () => [junkValue(depth + 1)], () => ({ k: junkValue(depth + 1) })];
    return makers[int(0, depth > 3 ? 4 : 6)]!();
  };
  const goodTopics = [`${prefix}${uniqueId('me')}`, `${base}/control/response`, `${prefix}a/b/c`];
  const badTopics = [
    `${prefix}a\u0000b`, `${base}/action`, `${base}/status`, `${base}/tile`, `${other}/action`, `${other}/control/response/x`,
    `${prefix}#`, `${prefix}+/x`, `${prefix}${'y'.repeat(300)}`, `${prefix}\ud800`, `${prefix}a\nb`, '', 'elsewhere/topic', `$SYS/x`,
  ];
  const out: Case[] = [];
  for (let i = 0; i < N; i++) {
    const kind = int(0, 9);
    let body: unknown;
    let what: string;
    let raw: Buffer | null = null;
    if (kind <= 2) {
      const command = pick(commands);
      body = { command };
      if (command === 'set_tolerance' || r() < 0.2) (body as Record<string, unknown>).tolerance_um = r() < 0.8 ? pick(numbers) : junkValue();
      if (command === 'set_dry_run' || r() < 0.1) (body as Record<string, unknown>).dry_run = r() < 0.8 ? r() < 0.5 : junkValue();
      if (command === 'get_slide_summary' || r() < 0.1) (body as Record<string, unknown>).slide = r() < 0.7 ? `slide-${int(0, 3)}` : junkValue();
      if (r() < 0.15) (body as Record<string, unknown>)[pick(['extra', 'schema', 'client_id', 'scanner'])] = junkValue();
      what = `command ${command}`;
    } else if (kind === 3) {
      body = junkValue();
      what = 'random JSON value';
    } else if (kind === 4) {
      const depth = int(100, 7000);
      raw = Buffer.from(`{"command":"get_status","slide":${'['.repeat(depth)}${']'.repeat(depth)}}`);
      what = `nested ${depth} deep`;
    } else if (kind === 5) {
      raw = Buffer.from(JSON.stringify({ command: 'get_slide_summary', slide: 'z'.repeat(int(15_000, 60_000)) }));
      what = 'huge';
    } else if (kind === 6) {
      raw = Buffer.from(Array.from({ length: int(1, 64) }, () => int(0, 255)));
      what = 'random bytes';
    } else if (kind === 7) {
      const s = Buffer.from(JSON.stringify({ command: pick(commands), tolerance_um: pick(numbers) }));
      for (let k = int(1, 4); k > 0; k--) s[int(0, s.length - 1)] = int(0, 255);
      raw = s;
      what = 'mutated JSON';
    } else {
      body = { command: pick(['get_status', 'set_dry_run', 'pause', 'resume']), dry_run: false, response_topic: pick(badTopics) };
      what = 'bad body response_topic';
    }
    const c: Case = { payload: raw ?? Buffer.from(JSON.stringify(body)), what };
    // the MQTT 5 property: mostly a good topic, sometimes one that must be refused; never one Mosquitto itself
    // refuses as a malformed packet (wildcards, control characters, empty): it would drop the fuzzing client instead
    const prop = r();
    if (prop < 0.5) c.responseTopic = pick(goodTopics);
    else if (prop < 0.65) c.responseTopic = pick(badTopics.filter((t) => t !== '' && !/[\u0000-\u001f+#]/.test(t)));
    out.push(c);
  }
  return out;
}

let d: RunningDaemon;
beforeAll(async () => {
  d = await startDaemon({ FOCUSD_MQTT_URL: MOSQUITTO_URL, FOCUSD_SCORER: 'classical' });
});
afterAll(async () => {
  if (d) expect(await stopDaemon(d)).toBe(0);
});

const rssMb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

describe(`control request fuzz (seed ${SEED})`, () => {
  it(`${N} requests: exactly one answer each, counted; nothing published elsewhere; scoring goes on; RSS bounded`, async () => {
    const other = uniqueId('focusd/fuzz-other');
    const sub = await Collector.connect(MOSQUITTO_URL, [`${d.base}/#`, `${other}/#`]);
    const client = await Collector.connect(MOSQUITTO_URL, []);
    const { inFocus, blurred } = await scanTiles();
    const sender = new TileSender({ endpoint: d.endpoint, pattern: 'req', timeoutMs: 30_000 });
    sender.connect();
    const t0 = Date.now();
    try {
      await sub.wait((m) => m.topic === `${d.base}/status`, 5000, 'status');
      expect(await sender.send(tileHeader(0, d.id), inFocus)).toMatchObject({ ok: true });
      const rss0 = rssMb(d.proc.child.pid!);
      const cases = makeCases(d.base, other, SEED);
      let seq = 1;
      let rssMid = 0;
      for (let i = 0; i < cases.length; i += 25) {
        if (i === N / 2) rssMid = rssMb(d.proc.child.pid!);
        await Promise.all(
          cases.slice(i, i + 25).map((c, k) =>
            client.client.publishAsync(`${d.base}/control/request`, c.payload, {
              qos: 1,
              properties: { correlationData: Buffer.from(`fz-${i + k}`), ...(c.responseTopic !== undefined ? { responseTopic: c.responseTopic } : {}) },
            }),
          ),
        );
        // tiles keep being answered in between (scored, or refused as paused when a fuzzed pause got through)
        const reply = await sender.send(tileHeader(seq++, d.id), seq % 2 ? inFocus : blurred);
        expect(reply !== null && (reply.ok || reply.reason === 'paused'), JSON.stringify(reply).slice(0, 300)).toBe(true);
      }
      // (the subscriber also sees the requests themselves on <base>/control/request)
      const answers = () => sub.messages.filter((m) => m.topic !== `${d.base}/control/request` && m.packet.properties?.correlationData?.toString().startsWith('fz-'));
      await sub.until(() => answers().length >= N, 30_000, `${N} answers (seed ${SEED})`);
      await sleep(500);
      const byCorr = new Map<string, number>();
      for (const m of answers()) {
        const key = m.packet.properties!.correlationData!.toString();
        byCorr.set(key, (byCorr.get(key) ?? 0) + 1);
        expect(m.topic === `${d.base}/control/response` || m.topic.startsWith(`${d.base}/control/response/`), m.topic).toBe(true);
        assertSchema('control-response', m.json);
      }
      expect(byCorr.size, `seed ${SEED}`).toBe(N);
      expect([...byCorr.values()].every((v) => v === 1), `seed ${SEED}: duplicate answers`).toBe(true);
      // every answer was the one its case deserved: a refused response topic is answered on the default topic
      for (const [i, c] of cases.entries()) {
        const a = answers().find((m) => m.packet.properties!.correlationData!.toString() === `fz-${i}`)!;
        if (c.what === 'huge') expect(a.json, `case ${i}`).toMatchObject({ ok: false });
        if (c.responseTopic !== undefined && a.topic !== c.responseTopic) expect((a.json.error as { reason: string }).reason, `case ${i} ${c.what}`).toBe('invalid_response_topic');
      }
      // nothing but focusd's own messages on its topics, nothing on the other scanner's
      expect(sub.messages.filter((m) => m.topic.startsWith(`${other}/`))).toEqual([]);
      for (const m of sub.on(`${d.base}/action`)) assertSchema('action', m.json);
      for (const m of sub.on(`${d.base}/status`)) assertSchema('status', m.json);

      // counted: every request, every refusal by reason
      const st = await getJson(`${d.http}/status`);
      const refusedAnswers = answers().filter((m) => m.json.ok === false).length;
      expect(st.body.metrics.control_requests).toBe(N);
      expect(Object.values(st.body.metrics.control_rejected_by_reason as Record<string, number>).reduce((a, b) => a + b, 0)).toBe(refusedAnswers);

      // still scoring once the fuzz's valid changes are undone (it may have paused, set 0.1 µm, dry run)
      for (const body of [{ command: 'resume' }, { command: 'set_tolerance', tolerance_um: 1 }, { command: 'set_dry_run', dry_run: false }]) {
        const corr = Buffer.from(uniqueId('end'));
        await client.client.publishAsync(`${d.base}/control/request`, JSON.stringify(body), { qos: 1, properties: { correlationData: corr } });
        const a = await sub.wait((m) => m.topic === `${d.base}/control/response` && m.packet.properties?.correlationData?.equals(corr) === true, 5000, body.command);
        expect(a.json.ok).toBe(true);
      }
      expect(await sender.send(tileHeader(seq++, d.id), inFocus)).toMatchObject({ ok: true, verdict: 'in_focus' });
      await sub.wait((m) => m.topic === `${d.base}/tile` && m.json.seq === seq - 1, 5000, 'the last tile message');
      expect((await getJson(`${d.http}/healthz`)).code).toBe(200);
      const rssEnd = rssMb(d.proc.child.pid!);
      const grown = rssEnd - rss0;
      console.log(`control fuzz seed ${SEED}: ${N} requests, ${refusedAnswers} refused, RSS ${rss0.toFixed(0)} → ${rssMid.toFixed(0)} → ${rssEnd.toFixed(0)} MB, ${((Date.now() - t0) / 1000).toFixed(1)} s`);
      expect(grown, `RSS grew ${grown.toFixed(1)} MB`).toBeLessThan(RSS_BOUND_MB);
    } finally {
      await sender.close();
      await sub.close();
      await client.close();
    }
  });
});
