/**
 * The report's charts: Vega-Lite specifications compiled to Vega and rendered to SVG strings in Node by Vega's
 * headless view (renderer 'none' + view.toSVG(): no DOM, no canvas, no network). Why Vega-Lite: a declarative,
 * well-kept grammar (axes, legends, scales, colour schemes done right), the same spec renders in a browser or
 * notebook for anyone who wants to explore, and its SVG output is plain markup we can inline in a file without any
 * script. Each chart's data marks carry a known name (`<name>_marks` CSS class), so tests can count them.
 */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { SlideDetail } from './report-details.js';
import { METRIC_LABEL, TREND_METRICS, type ChangeAlert, type NightFigures } from './report-trend.js';

export interface Chart {
  id: string;
  title: string;
  svg: string;
  /** data marks per mark name: what a reader (or test) should find in the SVG (`g.<name>_marks > *`). */
  marks: Record<string, number>;
}

const CONFIG = {
  font: 'system-ui, sans-serif',
  view: { stroke: '#ccc' },
  axis: { labelFontSize: 10, titleFontSize: 11, titleFontWeight: 'normal' as const, grid: true, gridColor: '#eee' },
  legend: { labelFontSize: 10, titleFontSize: 10 },
  background: 'white',
};

async function render(spec: TopLevelSpec): Promise<string> {
  const v = compile({ ...spec, config: CONFIG } as TopLevelSpec).spec;
  const view = new vega.View(vega.parse(v), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Symmetric colour domain around 0 so that blue = stage below focus, red = above, white = in focus. */
function defocusColor(maxAbs: number) {
  const m = Math.max(1, Math.ceil(maxAbs * 2) / 2);
  return { scheme: 'redblue', reverse: true, domain: [-m, m], clamp: true };
}

/** First and final acquisition per tile position, side by side (one rect per tile with tissue). */
export async function focusMapChart(d: SlideDetail): Promise<Chart> {
  const values = [
    ...d.first.map(([row, col, defocus]) => ({ row, col, defocus, which: 'first acquisition' })),
    ...d.final.map(([row, col, defocus]) => ({ row, col, defocus, which: 'final acquisition' })),
  ];
  const maxAbs = Math.max(0, ...values.map((v) => Math.abs(v.defocus)));
  const cell = 14;
  const svg = await render({
    data: { values },
    facet: { column: { field: 'which', type: 'nominal', sort: ['first acquisition', 'final acquisition'], title: null } },
    spec: {
      name: 'cells',
      width: Math.max(1, d.cols) * cell,
      height: Math.max(1, d.rows) * cell,
      mark: { type: 'rect', stroke: 'white', strokeWidth: 0.5 },
      encoding: {
        x: { field: 'col', type: 'ordinal', title: 'tile column', scale: { domain: range(d.cols) }, axis: { labelFontSize: 8 } },
        y: { field: 'row', type: 'ordinal', title: 'tile row', scale: { domain: range(d.rows) }, axis: { labelFontSize: 8 } },
        color: { field: 'defocus', type: 'quantitative', title: 'defocus µm', scale: defocusColor(maxAbs) },
      },
    },
  } as TopLevelSpec);
  return { id: `map-${d.slide}`, title: 'Focus map', svg, marks: { cells: values.length } };
}

/** Defocus of every scored tile in scan order (re-acquisitions in a second colour), z-offsets as vertical rules. */
export async function scanChart(d: SlideDetail, toleranceUm: number): Promise<Chart> {
  const tiles = d.scan.map(([min, defocus, attempt]) => ({ min, defocus, kind: attempt > 0 ? 're-acquired' : 'first acquisition' }));
  const zs = d.z_offsets.map(([min, z]) => ({ min, z }));
  const layers: object[] = [
    { name: 'tolerance', data: { values: [{ y: -toleranceUm }, { y: toleranceUm }] }, mark: { type: 'rule', color: '#999', strokeDash: [4, 3] }, encoding: { y: { field: 'y', type: 'quantitative' } } },
    {
      name: 'tiles',
      data: { values: tiles },
      mark: { type: 'point', filled: true, size: 14, opacity: 0.8 },
      encoding: {
        x: { field: 'min', type: 'quantitative', title: 'minutes since the first tile' },
        y: { field: 'defocus', type: 'quantitative', title: 'defocus µm' },
        color: { field: 'kind', type: 'nominal', title: null, scale: { domain: ['first acquisition', 're-acquired'], range: ['#4c78a8', '#f58518'] }, legend: { orient: 'top' } },
      },
    },
  ];
  if (zs.length)
    layers.push({ name: 'zoffsets', data: { values: zs }, mark: { type: 'rule', color: '#2ca02c', strokeWidth: 1.5 }, encoding: { x: { field: 'min', type: 'quantitative' } } });
  const svg = await render({ width: 520, height: 170, layer: layers } as TopLevelSpec);
  return { id: `scan-${d.slide}`, title: 'Defocus along the scan (green: z-offset corrections)', svg, marks: { tiles: tiles.length, zoffsets: zs.length, tolerance: 2 } };
}

/** The fitted best-focus surface over the tile grid, relative to its mean. */
export async function surfaceChart(d: SlideDetail): Promise<Chart | null> {
  const s = d.surface;
  if (!s) return null;
  const values = s.grid.map(([row, col, z]) => ({ row, col, z }));
  const m = Math.max(0.5, ...values.map((v) => Math.abs(v.z)));
  const cell = 14;
  const svg = await render({
    name: 'surface',
    data: { values },
    width: Math.max(1, d.cols) * cell,
    height: Math.max(1, d.rows) * cell,
    mark: { type: 'rect' },
    encoding: {
      x: { field: 'col', type: 'ordinal', title: 'tile column', scale: { domain: range(d.cols) }, axis: { labelFontSize: 8 } },
      y: { field: 'row', type: 'ordinal', title: 'tile row', scale: { domain: range(d.rows) }, axis: { labelFontSize: 8 } },
      color: { field: 'z', type: 'quantitative', title: 'best focus µm (rel.)', scale: { scheme: 'viridis', domain: [-m, m] } },
    },
  } as TopLevelSpec);
  return { id: `surface-${d.slide}`, title: 'Fitted focus surface', svg, marks: { surface: values.length } };
}

/** One figure across nights: a line with a point per night, the change (if any) shaded from its first night. */
export async function trendChart(metric: (typeof TREND_METRICS)[number], nights: NightFigures[], alerts: ChangeAlert[]): Promise<Chart> {
  const values = nights.filter((n) => n[metric] !== null).map((n) => ({ date: n.date, v: n[metric] }));
  const changes = alerts.filter((a) => a.metric === metric).map((a) => ({ since: a.since, end: nights[nights.length - 1]!.date }));
  const x = { field: 'date', type: 'temporal', title: null, axis: { format: '%d %b', labelAngle: 0 } };
  const layers: object[] = [];
  if (changes.length)
    layers.push({ name: 'change', data: { values: changes }, mark: { type: 'rect', color: '#d62728', opacity: 0.12 }, encoding: { x: { ...x, field: 'since' }, x2: { field: 'end' } } });
  layers.push(
    // the figure's caption names the quantity; a long y title would only squeeze the plot
    { name: 'line', data: { values }, mark: { type: 'line', color: '#4c78a8' }, encoding: { x, y: { field: 'v', type: 'quantitative', title: null } } },
    { name: 'nights', data: { values }, mark: { type: 'point', filled: true, size: 20, color: '#4c78a8' }, encoding: { x, y: { field: 'v', type: 'quantitative' } } },
  );
  const svg = await render({ width: 380, height: 120, layer: layers } as TopLevelSpec);
  return { id: `trend-${metric}`, title: METRIC_LABEL[metric], svg, marks: { nights: values.length, line: values.length ? 1 : 0, change: changes.length } };
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}
