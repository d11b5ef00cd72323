/**
 * The nightly report as one self-contained HTML file: inline CSS, inline SVG charts (daemon/report-charts.ts), no
 * script, no fonts, no links to anything but sibling report files; a Content-Security-Policy forbids every fetch, so
 * it opens the same from file://, the status server (/reports/) or an e-mail attachment. Every figure shown carries
 * data-key="<path in the report JSON>" so a test can check the page against the JSON.
 */
import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { focusMapChart, scanChart, surfaceChart, trendChart, type Chart } from './report-charts.js';
import type { DetailedReport, SlideDetail } from './report-details.js';
import { METRIC_LABEL, TREND_METRICS } from './report-trend.js';

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

/** A number as shown, with the JSON path it came from; null shows as an en dash. */
function num(key: string, v: number | null | undefined, digits: number, unit = ''): string {
  if (v === null || v === undefined) return `<span class="n" data-key="${esc(key)}" data-null>–</span>`;
  return `<span class="n" data-key="${esc(key)}" data-digits="${digits}">${v.toFixed(digits)}</span>${unit ? `<span class="u">${unit}</span>` : ''}`;
}
const pct = (key: string, v: number | null) =>
  v === null ? num(key, null, 1) : `<span class="n" data-key="${esc(key)}" data-digits="1" data-scale="100">${(v * 100).toFixed(1)}</span><span class="u"> %</span>`;

const CSS = `
:root{color-scheme:light;--b:#d0d7de;--m:#57606a}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;color:#1f2328;background:#fff}
h1{font-size:22px;margin:0 0 2px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--b);padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.sub{color:var(--m);margin:0 0 12px}
.alerts{border:1px solid #cf222e;background:#ffebe9;border-radius:6px;padding:8px 14px;margin:12px 0}
.alerts.ok{border-color:#1a7f37;background:#dafbe1}.alerts ul{margin:4px 0;padding-left:20px}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:8px;margin:8px 0}
.tile{border:1px solid var(--b);border-radius:6px;padding:6px 10px}.tile .l{color:var(--m);font-size:12px}.tile .n{font-size:20px;font-weight:600}
.u{color:var(--m);font-size:12px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}th,td{border:1px solid var(--b);padding:3px 8px;text-align:right}th{background:#f6f8fa}
td:first-child,th:first-child{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}figure{margin:0;border:1px solid var(--b);border-radius:6px;padding:6px}
figcaption{font-size:12px;color:var(--m);margin-bottom:2px}svg{display:block;max-width:100%;height:auto}
section.slide{page-break-inside:avoid}.mono{font-family:ui-monospace,monospace;font-size:12px}
@media print{body{max-width:none}}
`;

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title><style>${CSS}</style></head>
<body>
${body}
</body></html>
`;
}

const figure = (c: Chart) =>
  `<figure class="chart" id="${esc(c.id)}" data-chart="${esc(c.id)}" data-marks="${esc(JSON.stringify(c.marks))}"><figcaption>${esc(c.title)}</figcaption>${c.svg}</figure>`;

const tile = (label: string, value: string) => `<div class="tile"><div class="l">${esc(label)}</div>${value}</div>`;

async function slideSection(r: DetailedReport, i: number, toleranceUm: number): Promise<string> {
  const s = r.slides[i]!;
  const d: SlideDetail = r.details[i]!;
  const k = (p: string) => `slides.${i}.${p}`;
  const dk = (p: string) => `details.${i}.${p}`;
  const charts = [await focusMapChart(d), await scanChart(d, toleranceUm), await surfaceChart(d)].filter((c): c is Chart => c !== null);
  const sf = d.surface;
  const surface = sf
    ? `<table><tr><th>focus surface</th><th>value</th></tr>
<tr><td>model (points, outliers)</td><td>${esc(sf.model)} (${num(dk('surface.points'), sf.points, 0)}, ${num(dk('surface.outliers'), sf.outliers, 0)})</td></tr>
<tr><td>tilt x / y µm/mm</td><td>${num(dk('surface.tilt_um_per_mm.x'), sf.tilt_um_per_mm.x, 2)} / ${num(dk('surface.tilt_um_per_mm.y'), sf.tilt_um_per_mm.y, 2)}</td></tr>
<tr><td>curvature xx / xy / yy µm/mm²</td><td>${num(dk('surface.curvature_um_per_mm2.xx'), sf.curvature_um_per_mm2.xx, 3)} / ${num(dk('surface.curvature_um_per_mm2.xy'), sf.curvature_um_per_mm2.xy, 3)} / ${num(dk('surface.curvature_um_per_mm2.yy'), sf.curvature_um_per_mm2.yy, 3)}</td></tr>
<tr><td>peak-to-valley µm</td><td>${num(dk('surface.pv_um'), sf.pv_um, 2)}</td></tr>
<tr><td>fit rms µm</td><td>${num(dk('surface.rms_um'), sf.rms_um, 2)}</td></tr></table>`
    : '<p class="sub">Too few tiles with tissue to fit a focus surface.</p>';
  return `<section class="slide" id="slide-${i}"><h3>${esc(s.slide)}</h3>
<table><tr><th>tiles</th><th>with tissue</th><th>out of focus</th><th>rate</th><th>mean |defocus| µm</th><th>p95 |defocus| µm</th><th>drift µm/h</th><th>re-acquired</th><th>probes</th><th>z-offsets</th><th>refused</th><th>expired</th></tr>
<tr><td>${num(k('tiles'), s.tiles, 0)}</td><td>${num(k('with_tissue'), s.with_tissue, 0)}</td><td>${num(k('out_of_focus'), s.out_of_focus, 0)}</td><td>${pct(k('out_of_focus_rate'), s.out_of_focus_rate)}</td>
<td>${num(k('mean_abs_defocus_um'), s.mean_abs_defocus_um, 2)}</td><td>${num(k('p95_abs_defocus_um'), s.p95_abs_defocus_um, 2)}</td><td>${num(k('drift_um_per_h'), s.drift_um_per_h, 2)}</td>
<td>${num(dk('actions.reacquisitions'), d.actions.reacquisitions, 0)}</td><td>${num(dk('actions.probes'), d.actions.probes, 0)}</td><td>${num(dk('actions.z_offsets'), d.actions.z_offsets, 0)}</td><td>${num(dk('actions.refused'), d.actions.refused, 0)}</td><td>${num(dk('actions.expired'), d.actions.expired, 0)}</td></tr></table>
<div class="charts">${charts.map(figure).join('\n')}</div>
${surface}
</section>`;
}

/** The HTML of one report. */
export async function renderDriftHtml(r: DetailedReport, opts: { toleranceUm: number }): Promise<string> {
  const alerts = [
    ...r.trend.alerts.map((a, i) => `<li data-alert="trend.alerts.${i}"><b>trend</b>: ${esc(a.message)}</li>`),
    ...r.alerts.map((a, i) => `<li data-alert="alerts.${i}"><b>${esc(a.slide)}</b>: ${esc(a.message)}</li>`),
  ];
  const t = r.totals;
  const L = r.actions;
  const rules = Object.entries(L.by_rule).sort(([a], [b]) => a.localeCompare(b));
  const refusedBy = Object.entries(L.refused_by_limit).sort(([a], [b]) => a.localeCompare(b));
  const trendCharts: Chart[] = [];
  for (const m of TREND_METRICS) trendCharts.push(await trendChart(m, r.trend.nights, r.trend.alerts));
  const slides: string[] = [];
  for (let i = 0; i < r.slides.length; i++) slides.push(await slideSection(r, i, opts.toleranceUm));
  const nights = r.trend.nights
    .map((n, i) => ({ n, i }))
    .reverse()
    .map(
      ({ n, i }) =>
        `<tr><td>${esc(n.date)}</td><td>${num(`trend.nights.${i}.slides`, n.slides, 0)}</td><td>${num(`trend.nights.${i}.tiles`, n.tiles, 0)}</td><td>${pct(`trend.nights.${i}.out_of_focus_rate`, n.out_of_focus_rate)}</td><td>${num(`trend.nights.${i}.mean_abs_defocus_um`, n.mean_abs_defocus_um, 2)}</td><td>${num(`trend.nights.${i}.drift_um_per_h`, n.drift_um_per_h, 2)}</td><td>${num(`trend.nights.${i}.corrections_per_slide`, n.corrections_per_slide, 2)}</td></tr>`,
    );
  const det = r.trend.detector;
  const body = `<header><h1>Focus drift report — ${esc(r.scanner)}</h1>
<p class="sub">${esc(r.from)} → ${esc(r.to)} · generated ${esc(r.generated_at)} · <a href="index.html">all reports</a> · <a href="${esc(jsonName(r))}">JSON</a></p></header>
<div class="alerts${alerts.length ? '' : ' ok'}" id="alerts"><b>${alerts.length ? `${alerts.length} alert${alerts.length > 1 ? 's' : ''}` : 'No alerts'}</b>${alerts.length ? `<ul>${alerts.join('')}</ul>` : ''}</div>
<h2>Scanner summary</h2>
<div class="tiles" id="summary">
${tile('slides', num('totals.slides', t.slides, 0))}
${tile('tiles', num('totals.tiles', t.tiles, 0))}
${tile('tiles with tissue', num('totals.with_tissue', t.with_tissue, 0))}
${tile('out of focus', num('totals.out_of_focus', t.out_of_focus, 0))}
${tile('out-of-focus rate', pct('totals.out_of_focus_rate', t.out_of_focus_rate))}
${tile('re-acquisitions', num('actions.reacquisitions', L.reacquisitions, 0))}
${tile('probes', num('actions.probes', L.probes, 0))}
${tile('z-offset corrections', num('actions.z_offsets', L.z_offsets, 0))}
${tile('z-offset total', num('actions.z_offset_total_um', L.z_offset_total_um, 2, ' µm'))}
${tile('refused actions', num('actions.refused', L.refused, 0))}
${tile('expired actions', num('actions.expired', L.expired, 0))}
${tile('dry-run actions', num('actions.dry_run', L.dry_run, 0))}
${tile('wrong-way moves', num('loop.wrong_way_moves', r.loop.wrong_way_moves, 0))}
${tile('sign inverted detected', num('loop.sign_inverted_detected', r.loop.sign_inverted_detected, 0))}
${tile('stop-loss slides', r.loop.diverging_slides.length ? esc(r.loop.diverging_slides.join(', ')) : 'none')}
${r.loop.sign_learning.map((l) => tile(`learned sign, ${l.objective}`, `${l.direction === 1 ? 'as the model says' : l.direction === -1 ? 'reversed' : 'not known yet (probing)'} <span class="u">(${l.experiments} experiments)</span>`)).join('\n')}
</div>
<table id="rules"><tr><th>actions by rule</th><th>count</th></tr>${rules.map(([k, v]) => `<tr><td>${esc(k)}</td><td>${num(`actions.by_rule.${k}`, v, 0)}</td></tr>`).join('') || '<tr><td colspan="2">none</td></tr>'}
${refusedBy.map(([k, v]) => `<tr><td>refused: ${esc(k)}</td><td>${num(`actions.refused_by_limit.${k}`, v, 0)}</td></tr>`).join('')}</table>
<p>Model and calibration: ${r.models.length ? r.models.map((m) => `<span class="mono">${esc(m)}</span>`).join(', ') : '–'}</p>
<h2>Across nights (last ${r.trend.nights.length})</h2>
<p class="sub">Change detector: two-sided CUSUM on each nightly figure against the mean of the first ${det.baselineNights} nights (k = ${det.k} σ, h = ${det.h} σ, reported from a ${det.minRatio}× change).</p>
<div class="charts">${trendCharts.map(figure).join('\n')}</div>
<details><summary>Nightly figures</summary><table id="nights"><tr><th>night</th><th>slides</th><th>tiles</th><th>out-of-focus rate</th><th>mean |defocus| µm</th><th>drift µm/h</th><th>corrections per slide</th></tr>
${nights.join('\n')}</table></details>
<h2>Slides</h2>
${slides.join('\n') || '<p>No slides in this period.</p>'}
<p class="sub">Figures: ${TREND_METRICS.map((m) => esc(METRIC_LABEL[m])).join(', ')} per night from the tile history; focus maps show defocus per tile position (blue: stage below focus, red: above).</p>`;
  return page(`Focus drift report ${r.scanner} ${r.to.slice(0, 10)}`, body);
}

export const jsonName = (r: { to: string }) => `drift-${r.to.slice(0, 10)}.json`;

/** Writes drift-<date>.html atomically next to the JSON and returns its path. */
export async function writeDriftHtml(dir: string, r: DetailedReport, opts: { toleranceUm: number }): Promise<string> {
  const path = join(dir, `drift-${r.to.slice(0, 10)}.html`);
  await writeFile(`${path}.tmp`, await renderDriftHtml(r, opts));
  await rename(`${path}.tmp`, path);
  return path;
}

/** index.html: every drift-<date>.html of the directory, newest first, with its headline from the JSON beside it. */
export async function writeReportIndex(dir: string, scanner: string): Promise<string> {
  const names = (await readdir(dir)).filter((n) => /^drift-\d{4}-\d{2}-\d{2}\.html$/.test(n)).sort().reverse();
  const rows: string[] = [];
  for (const n of names) {
    const date = n.slice(6, 16);
    let head = '<td colspan="4">(no JSON)</td>';
    try {
      const j = JSON.parse(await readFile(join(dir, `drift-${date}.json`), 'utf8')) as Partial<DetailedReport>;
      const alerts = (j.alerts?.length ?? 0) + (j.trend?.alerts.length ?? 0);
      const rate = j.totals?.out_of_focus_rate;
      head = `<td>${j.totals?.slides ?? '–'}</td><td>${j.totals?.tiles ?? '–'}</td><td>${rate === null || rate === undefined ? '–' : (rate * 100).toFixed(1) + ' %'}</td><td>${alerts}</td>`;
    } catch (err) {
      // a night whose JSON is missing or broken is still listed; the reason is shown, not hidden
      head = `<td colspan="4">JSON unreadable: ${esc((err as Error).message)}</td>`;
    }
    rows.push(`<tr><td><a href="${esc(n)}">${esc(date)}</a></td>${head}</tr>`);
  }
  const html = page(`Focus drift reports ${scanner}`, `<h1>Focus drift reports — ${esc(scanner)}</h1>
<p class="sub">${names.length} night${names.length === 1 ? '' : 's'}, newest first.</p>
<table id="index"><tr><th>night</th><th>slides</th><th>tiles</th><th>out-of-focus rate</th><th>alerts</th></tr>
${rows.join('\n')}</table>`);
  const path = join(dir, 'index.html');
  await writeFile(`${path}.tmp`, html);
  await rename(`${path}.tmp`, path);
  return path;
}
