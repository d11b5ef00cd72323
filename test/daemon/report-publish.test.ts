import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { buildMqttSide } from '../../daemon/wiring.js';
import { generateHistory } from '../../sim/history.js';
import { assertSchema, Collector, makeCtx, tempDir } from '../helpers/mqtt-side.js';
import { mqttTestScope } from '../helpers/mqtt-scope.js';
import { MOSQUITTO_URL, uniqueId } from '../helpers/net.js';
import { runFocusd } from '../helpers/proc.js';
import { Store } from '../../adapters/store.js';

const { running, collectors, bases } = mqttTestScope();

const END = Date.parse('2026-11-30T02:00:00Z');

describe('nightly report job (real Mosquitto, real SQLite)', () => {
  it('writes Markdown, JSON, HTML and the index, and announces them with a retained report message', async () => {
    const base = uniqueId('focusd-test');
    bases.push(base);
    const ctx = makeCtx({
      'scanner.id': 'axioscan-01',
      'mqtt.url': MOSQUITTO_URL,
      'mqtt.baseTopic': base,
      'mqtt.clientId': uniqueId('focusd'),
      'mqtt.statsIntervalS': 0,
      'store.dir': tempDir('focusd-report-pub-'),
      'reports.schedule': '',
      'reports.trendNights': 12,
      'reports.change.baselineNights': 6,
    });
    // the daemon's own wiring: the reporter publishes through the MQTT adapter
    const side = buildMqttSide(ctx, { status: () => ({ engine: 'classical', version: '0.1.0' }) });
    for (const c of side.components) {
      await c.start(new AbortController().signal);
      running.push(c);
    }
    generateHistory(side.store, { scanner: 'axioscan-01', end: END, nights: 12, slidesPerNight: 2, rows: 6, cols: 8, changeAfterNight: 6, seed: 3 });
    const files = await side.reports.runOnce(END);
    expect(files).not.toBeNull();
    for (const f of [files!.markdown, files!.json, files!.html!, files!.index!]) expect(existsSync(f), f).toBe(true);

    // a subscriber that comes later still gets the report: it is retained
    const late = await Collector.connect(MOSQUITTO_URL, [`${base}/report`]);
    collectors.push(late);
    const m = await late.wait(() => true, 5000, 'retained report message');
    expect(m.packet.retain).toBe(true);
    assertSchema('report', m.json);
    const r = JSON.parse(readFileSync(files!.json, 'utf8'));
    expect(m.json.files).toEqual(files);
    expect(m.json.period).toEqual({ from: '2026-11-29T02:00:00.000Z', to: '2026-11-30T02:00:00.000Z' });
    expect(m.json.headline).toMatchObject({ slides: 2, tiles: r.totals.tiles, out_of_focus_rate: r.totals.out_of_focus_rate, z_offsets: r.totals.z_offsets, reacquisitions: r.actions.reacquisitions });
    const alerts = m.json.alerts as { kind: string; message: string }[];
    expect(alerts.length).toBe(r.alerts.length + r.trend.alerts.length);
    expect(alerts.filter((a) => a.kind === 'change').map((a) => a.message)).toEqual(r.trend.alerts.map((a: { message: string }) => a.message));
  }, 60_000);

  it('the schema rejects a message without its file paths or with an unknown alert kind', () => {
    const ok = { schema: 'focusd/report/1', scanner: 's', at: '2026-11-30T02:00:01Z', period: { from: '2026-11-29T02:00:00Z', to: '2026-11-30T02:00:00Z' },
      headline: { slides: 0, tiles: 0, with_tissue: 0, out_of_focus: 0, out_of_focus_rate: null, z_offsets: 0 }, alerts: [], files: { markdown: '/a.md', json: '/a.json' } };
    assertSchema('report', ok);
    const { files: _f, ...noFiles } = ok;
    expect(() => assertSchema('report', noFiles)).toThrow(/files/);
    expect(() => assertSchema('report', { ...ok, alerts: [{ kind: 'bogus', message: 'x' }] })).toThrow(/kind/);
  });

  it('focusd report --html writes the HTML report, the index and the detailed JSON of a state directory', async () => {
    const state = tempDir('focusd-report-cli-');
    const ctx = makeCtx({ 'store.dir': state, 'scanner.id': 'axioscan-01' });
    const store = new Store(ctx);
    await store.start(new AbortController().signal);
    generateHistory(store, { scanner: 'axioscan-01', end: END, nights: 3, slidesPerNight: 2, rows: 6, cols: 8, seed: 5 });
    await store.stop();
    const out = tempDir('focusd-report-cli-out-');
    const r = await runFocusd(['report', '--html', '--out', out, '--to', '2026-11-30T02:00:00Z', '--scanner-id', 'axioscan-01'], { FOCUSD_STATE_DIR: state, FOCUSD_SCORER: 'classical' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/written: .*drift-2026-11-30\.md, .*drift-2026-11-30\.json, .*drift-2026-11-30\.html, .*index\.html/);
    const html = readFileSync(join(out, 'drift-2026-11-30.html'), 'utf8');
    expect(html).toMatch(/<h1>Focus drift report — axioscan-01<\/h1>/);
    expect((html.match(/<figure class="chart"/g) ?? []).length).toBe(2 * 3 + 4);
    const json = JSON.parse(readFileSync(join(out, 'drift-2026-11-30.json'), 'utf8'));
    expect(json.trend.nights.length).toBe(30);
    expect(json.trend.nights.filter((n: { slides: number }) => n.slides === 2).length).toBe(3);
    expect(json.details.map((d: { slide: string }) => d.slide)).toEqual(['S20261130-01', 'S20261130-02']);
    expect(readFileSync(join(out, 'index.html'), 'utf8')).toContain('href="drift-2026-11-30.html"');
  }, 60_000);
});
