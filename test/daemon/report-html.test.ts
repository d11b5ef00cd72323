import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Store } from '../../adapters/store.js';
import type { DetailedReport } from '../../daemon/report-details.js';
import { produceReport, type ReportFiles } from '../../daemon/report-run.js';
import { generateHistory } from '../../sim/history.js';
import { chromiumBinary, openPage, type PageVisit } from '../helpers/chromium.js';
import { makeCtx, tempDir } from '../helpers/mqtt-side.js';
import { ROOT } from '../helpers/proc.js';

const DAY = 86_400_000;
const END = Date.parse('2026-11-30T02:00:00Z');
const OUT = join(ROOT, 'var', 'test-output', 'reports');

let files: ReportFiles;
let report: DetailedReport;
let page: PageVisit;

/** 30 nights × 5 slides of simulated history (drift ×5 after night 20) in a real SQLite store; the last two nights reported. */
beforeAll(async () => {
  const dir = tempDir('focusd-report-html-');
  const ctx = makeCtx({ 'store.dir': dir, 'scanner.id': 'axioscan-01', 'reports.schedule': '' });
  const store = new Store(ctx);
  await store.start(new AbortController().signal);
  generateHistory(store, { scanner: 'axioscan-01', end: END, nights: 30, slidesPerNight: 5, changeAfterNight: 20, seed: 12 });
  await produceReport(ctx, store, END - 2 * DAY, END - DAY, { dir: ctx.config.resolved.reportDir, html: true });
  const run = await produceReport(ctx, store, END - DAY, END, { dir: ctx.config.resolved.reportDir, html: true });
  await store.stop();
  files = run.files;
  report = JSON.parse(readFileSync(files.json, 'utf8')) as DetailedReport;
  page = await openPage(pathToFileURL(files.html!).href, { width: 1200 });
}, 120_000);

afterAll(async () => {
  await page?.close();
});

/** The value at a dotted path of the report JSON (numeric segments index arrays). */
function at(obj: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], obj);
}

describe('HTML drift report in headless Chromium', () => {
  it('loads from file:// without console errors or any network request, and carries no script', async () => {
    expect(page.errors).toEqual([]);
    expect(page.requests).toEqual([]);
    const html = readFileSync(files.html!, 'utf8');
    // SVG gradients are referenced in-document (url(#…)); the only absolute URLs are the SVG namespaces
    expect(html).not.toMatch(/<script|<link|@import|url\((?!#)|https?:\/\/(?!www\.w3\.org\/)/i);
    expect(await page.evaluate<number>('document.scripts.length')).toBe(0);
    // many inline SVGs in one document: their gradient/clip ids must not collide
    const ids = await page.evaluate<string[]>(`[...document.querySelectorAll('[id]')].map((e) => e.id)`);
    expect(ids.length).toBeGreaterThan(20);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('every chart is an inline SVG with one mark per data point of the JSON', async () => {
    const charts = await page.evaluate<{ id: string; marks: Record<string, number>; found: Record<string, number> }[]>(`
      [...document.querySelectorAll('figure.chart')].map((f) => {
        const marks = JSON.parse(f.dataset.marks);
        const found = {};
        for (const name of Object.keys(marks)) found[name] = f.querySelectorAll('svg g.' + name + '_marks > *').length;
        return { id: f.dataset.chart, marks, found, svgs: f.querySelectorAll('svg').length };
      })`);
    // per slide: focus map, scan, surface; plus four trend charts
    expect(charts.length).toBe(report.slides.length * 3 + 4);
    for (const c of charts) expect(c.found, c.id).toEqual(c.marks);
    // and the expected counts are those of the JSON, not only of the page's own annotation
    const byId = new Map(charts.map((c) => [c.id, c.found]));
    for (const d of report.details) {
      expect(byId.get(`map-${d.slide}`)!.cells).toBe(d.first.length + d.final.length);
      expect(byId.get(`scan-${d.slide}`)!.tiles).toBe(d.scan.length);
      expect(byId.get(`scan-${d.slide}`)!.zoffsets).toBe(d.z_offsets.length);
      expect(byId.get(`surface-${d.slide}`)!.surface).toBe(d.surface!.grid.length);
      expect(d.first.length).toBeGreaterThan(50);
    }
    expect(byId.get('trend-corrections_per_slide')!.nights).toBe(30);
    expect(byId.get('trend-corrections_per_slide')!.change).toBe(1);
  });

  it('every number on the page equals the one in the JSON', async () => {
    const shown = await page.evaluate<{ key: string; text: string; digits: string | null; scale: string | null; isNull: boolean }[]>(`
      [...document.querySelectorAll('[data-key]')].map((e) => ({ key: e.dataset.key, text: e.textContent, digits: e.dataset.digits ?? null, scale: e.dataset.scale ?? null, isNull: 'null' in e.dataset }))`);
    expect(shown.length).toBeGreaterThan(250);
    const keys = new Set(shown.map((s) => s.key.split('.')[0]));
    expect([...keys].sort()).toEqual(['actions', 'details', 'loop', 'slides', 'totals', 'trend']);
    for (const s of shown) {
      const v = at(report, s.key);
      if (s.isNull) {
        expect(v, s.key).toBeNull();
        continue;
      }
      expect(typeof v, s.key).toBe('number');
      expect(s.text, s.key).toBe(((v as number) * Number(s.scale ?? 1)).toFixed(Number(s.digits)));
    }
    // the alerts at the top are those of the JSON, change alerts included
    const alerts = await page.evaluate<string[]>(`[...document.querySelectorAll('#alerts li')].map((l) => l.textContent)`);
    expect(alerts.length).toBe(report.alerts.length + report.trend.alerts.length);
    for (const a of [...report.trend.alerts, ...report.alerts]) expect(alerts.some((t) => t.endsWith(a.message))).toBe(true);
    expect(alerts.some((t) => /drift correction per slide up \d+(\.\d)?× since 2026-11-2\d/.test(t))).toBe(true);
  });

  it('writes a screenshot, an index of nights newest first, and stays under 2 MB', async () => {
    mkdirSync(OUT, { recursive: true });
    const png = await page.screenshot(2600);
    writeFileSync(join(OUT, 'report.png'), png);
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    expect(png.length).toBeGreaterThan(50_000);
    expect(statSync(files.html!).size).toBeLessThan(2 * 1024 * 1024);

    const index = await openPage(pathToFileURL(files.index!).href);
    try {
      expect(index.errors).toEqual([]);
      const nights = await index.evaluate<string[]>(`[...document.querySelectorAll('#index a')].map((a) => a.textContent)`);
      expect(nights).toEqual(['2026-11-30', '2026-11-29']);
    } finally {
      await index.close();
    }
  });

  it('the Chromium check is not vacuous: a page that fetches or logs an error is caught', async () => {
    const dir = tempDir('focusd-chromium-neg-');
    const file = join(dir, 'bad.html');
    writeFileSync(file, '<!doctype html><title>bad</title><img src="http://127.0.0.1:9/x.png"><script>console.error("boom")</script>');
    const bad = await openPage(pathToFileURL(file).href);
    try {
      expect(bad.requests).toEqual(['http://127.0.0.1:9/x.png']);
      expect(bad.errors.some((e) => e.includes('console.error: boom'))).toBe(true);
    } finally {
      await bad.close();
    }
  });

  it('without Chromium the tests fail with a message naming the Debian package (they never skip)', () => {
    const saved = { PATH: process.env.PATH, CHROMIUM_BIN: process.env.CHROMIUM_BIN };
    process.env.PATH = '/nonexistent';
    process.env.CHROMIUM_BIN = '/nonexistent/chromium';
    try {
      expect(() => chromiumBinary()).toThrow(/Debian's "chromium" package \(apt-get install -y chromium\)/);
    } finally {
      process.env.PATH = saved.PATH;
      if (saved.CHROMIUM_BIN === undefined) delete process.env.CHROMIUM_BIN;
      else process.env.CHROMIUM_BIN = saved.CHROMIUM_BIN;
    }
  });
});
