// Text and markdown tables of simulation reports (focusd simulate, the demo, npm run bench -- --loop).
import type { ScanCounts } from './scanner.js';
import type { SimulationReport } from './run.js';

const pct = (x: number) => `${(x * 100).toFixed(0)} %`;

export const TABLE_HEAD = ['instrument', 'run', 'slides', 'yield', 'mean |defocus|', 'acquisitions / tile', 'wrong-way moves', 'z_offsets', 'probes', 'time'];

function row(instrument: string, run: string, slides: string, c: ScanCounts): string[] {
  return [
    instrument,
    run,
    slides,
    `${pct(c.yield)} (${c.in_tolerance}/${c.tissue_tiles})`,
    `${c.mean_abs_defocus_um.toFixed(2)} µm`,
    c.acquisitions_per_tile.toFixed(2),
    c.reacquires + c.z_offsets > 0 || c.wrong_way_moves > 0 ? String(c.wrong_way_moves) : '–',
    String(c.z_offsets),
    String(c.probes),
    `${c.time_s.toFixed(1)} s`,
  ];
}

/** Rows of one report: without feedback (all slides), with feedback (all, the first slide, the later ones). */
export function reportRows(r: SimulationReport): string[][] {
  const out: string[][] = [];
  const n = r.with_feedback?.slides.length ?? r.without_feedback?.slides.length ?? 0;
  const fb = r.calibration ? 'focusd feedback, calibrated' : 'focusd feedback';
  if (r.without_feedback) out.push(row(r.instrument, 'actions ignored (no feedback)', `1–${n}`, r.without_feedback.total));
  const f = r.with_feedback;
  if (f) {
    out.push(row(r.instrument, fb, `1–${n}`, f.total));
    if (f.slides.length > 1) {
      out.push(row(r.instrument, fb, '1', f.slides[0]!));
      out.push(row(r.instrument, fb, `2–${n}`, f.after_first!));
    }
  }
  return out;
}

export function markdownTable(reports: SimulationReport[]): string {
  const md = (cells: string[]) => `| ${cells.map((c) => c.replace(/\|/g, '\\|')).join(' | ')} |`;
  const lines = [md(TABLE_HEAD), `|${TABLE_HEAD.map(() => '---').join('|')}|`];
  for (const r of reports) for (const cells of reportRows(r)) lines.push(md(cells));
  return lines.join('\n');
}

/** The same table aligned for a terminal. */
export function textTable(reports: SimulationReport[]): string {
  const rows = [TABLE_HEAD, ...reports.flatMap(reportRows)];
  const widths = TABLE_HEAD.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}

/** One line per slide. */
export function slideLine(run: string, r: { slide: string } & ScanCounts): string {
  return (
    `  ${run.padEnd(11)} ${r.slide}: yield ${pct(r.yield)} (${r.in_tolerance}/${r.tissue_tiles}), mean |defocus| ${r.mean_abs_defocus_um.toFixed(2)} µm, ` +
    `${r.acquisitions_per_tile.toFixed(2)} acquisitions/tile, ${r.wrong_way_moves} wrong-way, ${r.z_offsets} z_offsets, ${r.probes} probes, ${r.time_s.toFixed(1)} s`
  );
}
