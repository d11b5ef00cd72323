import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Store } from '../../adapters/store.js';
import { DriftReporter } from '../../daemon/reports.js';
import { makeCtx, outcome, tempDir } from '../helpers/mqtt-side.js';
import { runFocusd } from '../helpers/proc.js';

const HOUR = 3_600_000;

/** A night of history in a real SQLite file: slide-drift creeps out of focus at ~1 µm/h, slide-ok stays put. */
async function nightOfHistory(stateDir: string, now: number) {
  const ctx = makeCtx({ 'store.dir': stateDir, 'scanner.id': 'scanner-a', 'reports.schedule': '' });
  const store = new Store(ctx);
  await store.start(new AbortController().signal);
  for (let i = 0; i < 40; i++) {
    const at = now - 6 * HOUR + (i * 5 * HOUR) / 40;
    store.recordTile(outcome({ slide: 'slide-drift', seq: i, d: 0.1 + ((at - (now - 6 * HOUR)) / HOUR) * 1.0 }), at);
    store.recordTile(outcome({ slide: 'slide-ok', seq: i, d: i % 2 ? 0.2 : -0.2 }), at);
    store.recordTile(outcome({ slide: 'slide-ok', seq: 1000 + i, d: null }), at);
  }
  // outside the 24 h window: must not count
  store.recordTile(outcome({ slide: 'slide-old', seq: 1, d: 3 }), now - 30 * HOUR);
  return { ctx, store };
}

describe('nightly drift report', () => {
  it('summarises the window per slide, flags drift and out-of-focus rates, writes Markdown and JSON', async () => {
    const dir = tempDir('focusd-report-');
    const now = Date.parse('2026-11-25T02:00:00Z');
    const { ctx, store } = await nightOfHistory(dir, now);
    const reporter = new DriftReporter(ctx, store);
    const files = await reporter.runOnce(now);
    await store.stop();
    expect(files).not.toBeNull();
    expect(files!.markdown).toBe(join(dir, 'reports', 'drift-2026-11-25.md'));
    const r = JSON.parse(readFileSync(files!.json, 'utf8'));
    expect(r.slides.map((s: { slide: string }) => s.slide).sort()).toEqual(['slide-drift', 'slide-ok']);
    const drift = r.slides.find((s: { slide: string }) => s.slide === 'slide-drift');
    expect(drift.drift_um_per_h).toBeCloseTo(1.0, 1);
    const ok = r.slides.find((s: { slide: string }) => s.slide === 'slide-ok');
    expect(ok.tiles).toBe(80);
    expect(ok.with_tissue).toBe(40);
    expect(Math.abs(ok.drift_um_per_h)).toBeLessThan(0.1);
    expect(r.alerts.map((a: { slide: string; kind: string }) => `${a.slide}:${a.kind}`).sort()).toEqual(['slide-drift:drift', 'slide-drift:out_of_focus_rate']);
    const md = readFileSync(files!.markdown, 'utf8');
    expect(md).toMatch(/\*\*slide-drift\*\*: focus drifted 1\.0\d µm\/h/);
    expect(md).toMatch(/\| slide-ok \| 80 \| 40 \| 0 \|/);
  });

  it('reports the feedback loop: wrong-way moves, slides under the stop-loss and the learned sign with its evidence', async () => {
    const dir = tempDir('focusd-report-');
    const now = Date.parse('2026-11-25T02:00:00Z');
    const { ctx, store } = await nightOfHistory(dir, now);
    const key = { scanner: 'scanner-a', objective: '20x', model_sha256: 'f00dfeed0123456789', calibration_sign: 'model' as const, calibrated: false };
    for (let i = 0; i < 7; i++) store.addEvidence(key, 2, 0, 1, now - HOUR);
    store.addEvidence(key, 2, 1, 0, now - HOUR);
    store.recordLoopEvent({ at: now - 2 * HOUR, scanner: 'scanner-a', slide: 'slide-drift', kind: 'wrong_way', detail: 'tile 3' });
    store.recordLoopEvent({ at: now - 2 * HOUR, scanner: 'scanner-a', slide: 'slide-drift', kind: 'wrong_way', detail: 'tile 9' });
    store.recordLoopEvent({ at: now - 2 * HOUR, scanner: 'scanner-a', slide: 'slide-drift', kind: 'loop_diverging', detail: '2 wrong-way moves' });
    store.recordLoopEvent({ at: now - 30 * HOUR, scanner: 'scanner-a', slide: 'slide-old', kind: 'wrong_way', detail: 'outside the window' });
    const files = await new DriftReporter(ctx, store).runOnce(now);
    await store.stop();
    const r = JSON.parse(readFileSync(files!.json, 'utf8'));
    expect(r.loop).toMatchObject({ wrong_way_moves: 2, diverging_slides: ['slide-drift'], sign_inverted_detected: 0 });
    expect(r.loop.slides).toEqual([{ slide: 'slide-drift', wrong_way_moves: 2, loop_diverging: true }]);
    expect(r.loop.sign_learning).toHaveLength(1);
    expect(r.loop.sign_learning[0]).toMatchObject({ objective: '20x', direction: -1, experiments: 8 });
    expect(r.loop.sign_learning[0].bins[2]).toMatchObject({ right: 1, wrong: 7, p_right: 0.2, direction: -1 });
    const md = readFileSync(files!.markdown, 'utf8');
    expect(md).toMatch(/wrong-way moves: 2; slides where the stop-loss fired: slide-drift/);
    expect(md).toMatch(/\| 20x \| f00dfeed0123 \| model \| -1 \| .*0\.95–1 at 0–2\.5 µm: 1\/7 \(0\.20\)/);
  });

  it('a report that cannot be written is an error in the log, not a silent success', async () => {
    const dir = tempDir('focusd-report-');
    const now = Date.now();
    const { ctx, store } = await nightOfHistory(dir, now);
    // the report directory lies below a regular file: writing must fail (ENOTDIR)
    writeFileSync(join(dir, 'a-file'), 'x');
    const bad = makeCtx({ 'store.dir': dir, 'reports.dir': join(dir, 'a-file', 'reports') });
    const reporter = new DriftReporter({ ...ctx, config: bad.config, logger: bad.logger }, store);
    expect(await reporter.runOnce(now)).toBeNull();
    await store.stop();
    expect(bad.logLines().some((l) => l.includes('drift report failed'))).toBe(true);
  });

  it('focusd report writes the report of a state directory on demand', async () => {
    const dir = tempDir('focusd-report-');
    const now = Date.now();
    const { store } = await nightOfHistory(dir, now);
    await store.stop();
    const out = tempDir('focusd-report-out-');
    const r = await runFocusd(['report', '--out', out, '--scanner-id', 'scanner-a'], { FOCUSD_STATE_DIR: dir, FOCUSD_SCORER: 'classical' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/# Focus drift report — scanner-a/);
    expect(r.stdout).toMatch(/slide-drift/);
    expect(existsSync(join(out, `drift-${new Date(now).toISOString().slice(0, 10)}.json`))).toBe(true);
  });

  it('focusd report on a state directory that holds another scanner\'s history says so instead of a silent empty report', async () => {
    const dir = tempDir('focusd-report-');
    const { store } = await nightOfHistory(dir, Date.now());
    await store.stop();
    const out = tempDir('focusd-report-out-');
    // no --scanner-id: the default scanner.id (axioscan-1) has no tiles here, scanner-a has 120 in the window
    const r = await runFocusd(['report', '--out', out], { FOCUSD_STATE_DIR: dir, FOCUSD_SCORER: 'classical' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/no tiles of scanner "axioscan-1" \(scanner.id\).*holds tiles of "scanner-a" \(120 tiles\); report on one with --config FILE or FOCUSD_SCANNER_ID=<id>/);
    // and with the right scanner, no such notice
    const ok = await runFocusd(['report', '--out', out], { FOCUSD_STATE_DIR: dir, FOCUSD_SCORER: 'classical', FOCUSD_SCANNER_ID: 'scanner-a' });
    expect(ok.stderr).not.toMatch(/no tiles of scanner/);
  });

  it('focusd report where there is no history (a missing --config, a typo in store.dir) says where it looked and exits 66, creating nothing', async () => {
    const dir = join(tempDir('focusd-report-'), 'typo');
    const r = await runFocusd(['report'], { FOCUSD_STATE_DIR: dir, FOCUSD_SCORER: 'classical' });
    expect(r.code).toBe(66);
    expect(r.stderr).toMatch(/no tile history at .*typo\/focusd\.sqlite .*--config \/etc\/focusd\/focusd\.yaml/);
    expect(existsSync(dir)).toBe(false);
  });

  it('slide ids with newline, |, ESC, NUL and <script> are escaped in Markdown and stripped on the terminal; other scanners are reported (issue 10, defect 7)', async () => {
    const dir = tempDir('focusd-report-');
    const now = Date.now();
    const ctx = makeCtx({ 'store.dir': dir, 'scanner.id': 'scanner-a', 'reports.schedule': '' });
    const store = new Store(ctx);
    await store.start(new AbortController().signal);
    const evil = 'S1\n| fake | 999 |\u001b[2J\u0000<script>alert(1)</script>\u009b31m*x*';
    for (let i = 0; i < 4; i++) {
      store.recordTile(outcome({ slide: evil, seq: i, d: 3 }), now - HOUR + i * 1000);
      store.recordTile(outcome({ scanner: 'scanner-b\u001b[31m', slide: 'b-1', seq: i, d: 0.1 }), now - HOUR + i * 1000);
    }
    store.recordTile(outcome({ scanner: 'scanner-c', slide: 'c-1', seq: 9, d: 4 }), now - HOUR);
    const reporter = new DriftReporter(ctx, store);
    const files = await reporter.runOnce(now);
    expect(files).not.toBeNull();
    const md = readFileSync(files!.markdown, 'utf8');
    for (const bad of ['\u001b', '\u0000', '\u009b', '<script>', '\n| fake']) expect(md, JSON.stringify(bad)).not.toContain(bad);
    // one table row for the slide: the pipe is escaped, the newline did not start a row of its own
    const rows = md.split('\n').filter((l) => l.startsWith('| S1'));
    expect(rows).toHaveLength(1);
    expect(rows[0]).toContain('S1\ufffd\\| fake \\| 999 \\|\ufffd\\[2J\ufffd&lt;script&gt;alert(1)&lt;/script&gt;\ufffd31m\\*x\\* | 4 |');
    // tiles of other scanners: per scanner, not mixed into this scanner's slides
    const r = JSON.parse(readFileSync(files!.json, 'utf8'));
    expect(r.slides.map((s: { slide: string }) => s.slide)).toEqual([evil]);
    expect(r.other_scanners).toEqual([
      { scanner: 'scanner-b\u001b[31m', slides: 1, tiles: 4, with_tissue: 4, out_of_focus: 0 },
      { scanner: 'scanner-c', slides: 1, tiles: 1, with_tissue: 1, out_of_focus: 1 },
    ]);
    expect(md).toContain('## Other scanners');
    expect(md).toContain('| scanner-b\ufffd\\[31m | 1 | 4 | 4 | 0 |');
    expect(ctx.logLines().some((l) => l.includes('4 tiles from scanner scanner-b\ufffd[31m'))).toBe(true);
    await store.stop();

    // the terminal: focusd report prints the Markdown (and --json) with no control character in it
    const out = tempDir('focusd-report-out-');
    for (const args of [[], ['--json']]) {
      const t = await runFocusd(['report', '--out', out, '--scanner-id', 'scanner-a', ...args], { FOCUSD_STATE_DIR: dir, FOCUSD_SCORER: 'classical' });
      expect(t.code, t.stderr).toBe(0);
      // eslint-disable-next-line no-control-regex
      expect(t.stdout.replace(/\n/g, ''), args.join()).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
    }
    // a report of a quiet period says no other scanner was seen
    const quietCtx = makeCtx({ 'store.dir': tempDir('focusd-report-quiet-'), 'scanner.id': 'scanner-a', 'reports.schedule': '' });
    const empty = new Store(quietCtx);
    await empty.start(new AbortController().signal);
    const quiet = await new DriftReporter(quietCtx, empty).runOnce(now);
    await empty.stop();
    expect(readFileSync(quiet!.markdown, 'utf8')).toContain('None: every tile in the period came from this scanner.');
  });
});
