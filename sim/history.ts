/**
 * A realistic tile history for reports, their tests and the docs: nights of slides scanned on one scanner, written
 * through the real Store (SQLite) as the daemon would have written them. No images: the scores are procedural.
 *
 * Per slide: a tile grid with an elliptic tissue region, a true focal surface (tilt + bowl), a scanner focus map
 * that misses it by a little, and thermal drift during the scan. A simplified loop plays the controller: a tile
 * beyond the tolerance is re-acquired (sometimes as a probe, sometimes expired or refused), and a z-offset is sent
 * when the recent defocus stays off to one side. `changeAfterNight` multiplies the drift from that night on, which
 * is the planted change the reports' change detector must find.
 */
import type { Action, ActionRefusal, TileOutcome } from '../core/types.js';
import { rng32 } from './procedural.js';

export interface HistorySink {
  recordTile(o: TileOutcome, at: number): void;
  outboxPut(a: Action): boolean;
  outboxDone(id: string, status: 'sent' | 'expired'): void;
  recordRefusal(r: ActionRefusal, at: number): void;
  /** runs fn in one transaction (thousands of inserts per night). */
  batch<T>(fn: () => T): T;
}

export interface HistoryOptions {
  scanner: string;
  /** end of the last night's report window (the report time); night i ends at end − (nights − 1 − i) days. */
  end: number;
  nights?: number;
  slidesPerNight?: number;
  rows?: number;
  cols?: number;
  seed?: number;
  /** nights with index > this (0-based) drift `changeFactor` times faster; null: no change. */
  changeAfterNight?: number | null;
  changeFactor?: number;
  toleranceUm?: number;
}

export interface HistorySummary {
  nights: { index: number; end: number; date: string; slides: string[]; driftUmPerH: number; zOffsets: number; tiles: number }[];
  /** first night (0-based) with the changed drift; null without a change. */
  changeNight: number | null;
}

const DAY_MS = 86_400_000;
const TILE_UM = 500;
const TILE_S = 8;
const MODEL = { name: 'focusnet-s', version: '1.3.0+cal.2026-11-02', sha256: 'sim', engine: 'onnx', pixel_size_um: 0.22 };

export function generateHistory(sink: HistorySink, o: HistoryOptions): HistorySummary {
  const nights = o.nights ?? 30;
  const slides = o.slidesPerNight ?? 5;
  const rows = o.rows ?? 12;
  const cols = o.cols ?? 18;
  const tol = o.toleranceUm ?? 1;
  const factor = o.changeFactor ?? 5;
  const rnd = rng32(o.seed ?? 12);
  const gauss = () => Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd());
  const summary: HistorySummary = { nights: [], changeNight: o.changeAfterNight == null ? null : o.changeAfterNight + 1 };
  let actionN = 0;

  for (let n = 0; n < nights; n++) sink.batch(() => night(n));
  return summary;

  function night(n: number): void {
    const nightEnd = o.end - (nights - 1 - n) * DAY_MS;
    // slides from 19:00 the evening before the report (report at 02:00 → 7 h earlier), 35 min apart (~30 min scans)
    const firstStart = nightEnd - 7 * 3_600_000;
    const changed = o.changeAfterNight != null && n > o.changeAfterNight;
    const nt = { index: n, end: nightEnd, date: new Date(nightEnd).toISOString().slice(0, 10), slides: [] as string[], driftUmPerH: 0, zOffsets: 0, tiles: 0 };
    for (let s = 0; s < slides; s++) {
      const slide = `S${nt.date.replaceAll('-', '')}-${String(s + 1).padStart(2, '0')}`;
      nt.slides.push(slide);
      const start = firstStart + s * 35 * 60_000;
      // the focal plane of this slide: z0 + tilt (µm/mm) + a shallow bowl; the scanner's focus map misses it by err0
      const tiltX = gauss() * 0.8;
      const tiltY = gauss() * 0.8;
      const bowl = gauss() * 0.4;
      const z0 = 1200 + gauss() * 5;
      const cx = ((cols - 1) * TILE_UM) / 2;
      const cy = ((rows - 1) * TILE_UM) / 2;
      const focal = (x: number, y: number) => z0 + (tiltX * (x - cx)) / 1000 + (tiltY * (y - cy)) / 1000 + bowl * (((x - cx) / cx) ** 2 + ((y - cy) / cy) ** 2);
      const err0 = gauss() * 0.2;
      const drift = (0.4 + 0.1 * gauss()) * (rnd() < 0.5 ? -1 : 1) * (changed ? factor : 1);
      nt.driftUmPerH += Math.abs(drift) / slides;
      let correction = 0;
      let ewma = 0;
      let seq = 0;
      let t = start;
      const act = (type: Action['type'], zOff: number, at: number, tile: { index: number; row: number; col: number; seq: number; attempt: number }, extra: Record<string, unknown>) => {
        const a: Action = {
          id: `sim-${o.scanner}-${++actionN}`,
          type,
          z_offset_um: Math.round(zOff * 1000) / 1000,
          scanner: o.scanner,
          slide,
          scan: `${slide}-scan1`,
          tile,
          reason: String(extra.rule),
          dry_run: false,
          created_at: new Date(at).toISOString(),
          expires_at: new Date(at + 30_000).toISOString(),
          ...extra,
        };
        sink.outboxPut(a);
        // about one in 80 commands reached the broker too late
        sink.outboxDone(a.id, rnd() < 1 / 80 ? 'expired' : 'sent');
      };
      for (let r = 0; r < rows; r++) {
        // serpentine scan: even rows left to right, odd rows back
        for (let k = 0; k < cols; k++) {
          const c = r % 2 ? cols - 1 - k : k;
          const index = r * cols + c;
          const x = c * TILE_UM;
          const y = r * TILE_UM;
          const tissue = ((c - (cols - 1) / 2) / (cols / 2)) ** 2 + ((r - (rows - 1) / 2) / (rows / 2)) ** 2 < 0.85;
          const hours = (t - start) / 3_600_000;
          // the scanner's z: its focus map (true plane + err0, good to ~0.15 µm) plus thermal drift, minus our corrections
          const stageZ = focal(x, y) + err0 + gauss() * 0.1 + drift * hours + correction;
          let attempt = 0;
          let z = stageZ;
          for (;;) {
            const d = tissue ? z - focal(x, y) + gauss() * 0.25 : null;
            const at = t;
            sink.recordTile(tileOutcome(o.scanner, slide, seq++, index, r, c, attempt, x, y, z, d, tol), at);
            nt.tiles++;
            t += TILE_S * 1000;
            if (d === null || Math.abs(d) <= tol) {
              if (d !== null && attempt === 0) {
                ewma = 0.9 * ewma + 0.1 * d;
                if (Math.abs(ewma) > 0.5) {
                  act('z_offset', -ewma, at, { index, row: r, col: c, seq: seq - 1, attempt }, { rule: 'drift' });
                  correction -= ewma;
                  nt.zOffsets++;
                  ewma = 0;
                }
              }
              break;
            }
            if (attempt >= 2) {
              sink.recordRefusal({ type: 'reacquire', limit: 'max_reacquire_per_tile', detail: `tile ${index} was re-acquired 2 times (limit 2)`, scanner: o.scanner, slide, tile: index, seq: seq - 1, suppressed: 0 }, at);
              break;
            }
            const probe = rnd() < 0.15;
            act('reacquire', -d, at, { index, row: r, col: c, seq: seq - 1, attempt }, { rule: probe ? 'probe' : 'isolated', probe });
            z = z - d + gauss() * 0.3;
            attempt++;
          }
        }
      }
    }
    summary.nights.push(nt);
  }
}

function tileOutcome(scanner: string, slide: string, seq: number, index: number, row: number, col: number, attempt: number, x: number, y: number, z: number, d: number | null, tol: number): TileOutcome {
  const r3 = (v: number) => Math.round(v * 1000) / 1000;
  return {
    header: {
      v: 1,
      scanner,
      slide,
      scan: `${slide}-scan1`,
      seq,
      tile: { index, row, col },
      stage_um: { x, y, z: r3(z) },
      pixel_size_um: 0.22,
      objective: '20x',
      acquired_at: new Date().toISOString(),
      attempt,
      format: 'png',
    },
    verdict: d === null ? 'no_tissue' : Math.abs(d) > tol ? 'out_of_focus' : 'in_focus',
    score: {
      defocus_um: d === null ? null : r3(d),
      uncertainty_um: d === null ? null : 0.25,
      sign_confidence: d === null ? null : 0.9,
      tissue_fraction: d === null ? 0.02 : 0.6,
      patches: d === null ? 0 : 8,
      focus_map: null,
      model: { ...MODEL },
    },
    latency_ms: 35,
  } as TileOutcome;
}
