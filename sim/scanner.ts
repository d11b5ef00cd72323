/**
 * The virtual scanner: scans virtual slides (sim/slide.ts) tile by tile, sends every acquisition to a focusd
 * daemon over ZeroMQ (wire protocol v1, raw RGB24; router with a REQ socket or pull with a PUSH socket), and
 * obeys the commands the daemon publishes on MQTT (docs/mqtt.md, docs/controller.md):
 *   - `reacquire`: take the tile again at `target_z_um` (a probe is a reacquire with `probe: true`), at once;
 *   - `z_offset`: shift the planned z of the slide's later tiles by `z_offset_um`;
 *   - `dry_run: true` commands are shadow decisions and are not executed.
 * Each acquisition is rendered at its TRUE defocus (stage z − true best focus there and then) through the
 * instrument's optics, so the score the daemon sees is whatever the model makes of that instrument.
 *
 * It judges every commanded move against the truth: a re-acquisition (not a probe: that is an experiment) that
 * left the tile further from best focus than the acquisition it was decided on, or a z_offset after which the next
 * tile is further from the smooth focus surface than it would have been without it, is a wrong-way move.
 * With `feedback: false` it receives the same commands and ignores them: the same scan without focusd.
 */
import type { TileHeader } from '../core/types.js';
import type { ReceivedAction, TileVerdict, AcquisitionKey, ZPlane } from './feed.js';
import type { TileRenderer } from './render.js';
import { TileSender } from './replay.js';
import { isTissueKind, type SimTile, type SurfaceParams, type VirtualSlide } from './slide.js';
import { ORACLE_TRUTH_FIELD } from './oracle.js';

/** Where verdicts and commands come from (MqttFeed; tests may script their own). */
export interface ActionFeed {
  settle(k: AcquisitionKey): Promise<TileVerdict | null>;
  take(): ReceivedAction[];
  drain(ms: number): Promise<ReceivedAction[]>;
  /** whether the command arrived after the scanner had moved on (counted as late). */
  isLate(id: string): boolean;
}

export interface ScannerOptions {
  endpoint: string;
  /** the daemon's ingest.pattern: router (the scanner uses REQ and waits for each reply) or pull (PUSH). */
  pattern: 'router' | 'pull';
  scanner: string;
  objective?: string;
  /** put each acquisition's true defocus in its header (`x_sim_defocus_um`) for the oracle scorer (sim/oracle.ts). */
  revealTruth?: boolean;
  /** false: commands are received and counted but not executed. */
  feedback: boolean;
  feed: ActionFeed;
  renderer: TileRenderer;
  /** yield counts a tissue tile whose final acquisition is within ± this (µm). */
  toleranceUm?: number;
  /** a move is wrong-way when it leaves the tile further from focus by more than this (µm). */
  wrongWayEpsUm?: number;
  /** the scanner's own limit on acquisitions of one tile (the daemon has its own). */
  maxAcquisitionsPerTile?: number;
  /** at the end of a slide, how long to wait for commands still on their way (ms). */
  endWaitMs?: number;
  replyTimeoutMs?: number;
  /** progress: every acquisition and every command as it happens. */
  onEvent?: (e: ScanEvent) => void;
}

export type ScanEvent =
  | { type: 'acquisition'; slide: string; acq: Acquisition; tile: SimTile }
  | { type: 'action'; slide: string; action: ReceivedAction; executed: boolean; note: string };

export interface Acquisition {
  seq: number;
  index: number;
  attempt: number;
  /** acquisitions of this slide before this one (the drift clock). */
  t: number;
  z_um: number;
  true_focus_um: number;
  /** true defocus: stage z − true best focus (positive: stage above focus). */
  defocus_um: number;
  /** the command that asked for it (null: the planned first acquisition). */
  action_id: string | null;
  probe: boolean;
  verdict: TileVerdict['verdict'] | 'rejected' | 'lost';
  scored_defocus_um: number | null;
  sign_confidence: number | null;
  tissue_fraction_truth: number;
}

export interface Move {
  action_id: string;
  type: 'reacquire' | 'z_offset';
  rule: string;
  tile: number;
  /** |defocus| before the move (reacquire: of the acquisition it was decided on; z_offset: of the next tile without it). */
  before_um: number;
  after_um: number;
  wrong_way: boolean;
}

export interface ScanCounts {
  tiles: number;
  tissue_tiles: number;
  acquisitions: number;
  acquisitions_per_tile: number;
  /** share of tissue tiles whose final acquisition is within ±tolerance. */
  yield: number;
  in_tolerance: number;
  mean_abs_defocus_um: number;
  max_abs_defocus_um: number;
  wrong_way_moves: number;
  wrong_way: { reacquire: number; z_offset: number };
  reacquires: number;
  probes: number;
  z_offsets: number;
  z_offset_sum_um: number;
  /** z_offsets that came after the slide's last tile: nothing to judge them by. */
  unjudged_z_offsets: number;
  actions: number;
  ignored_actions: number;
  late_actions: number;
  /** late commands for a slide already finished (not executed; counted on the slide being scanned). */
  stale_actions: number;
  dry_run_actions: number;
  refused_by_scanner: number;
  rejected: number;
  lost_verdicts: number;
  verdicts: { in_focus: number; out_of_focus: number; no_tissue: number };
  time_s: number;
}

export interface TileDetail {
  index: number;
  row: number;
  col: number;
  kind: string;
  tissue: boolean;
  bump_um: number;
  planned_z_um: number;
  first_defocus_um: number;
  final_defocus_um: number;
  acquisitions: number;
}

export interface SlideResult extends ScanCounts {
  slide: string;
  seed: number;
  surface: SurfaceParams;
  tiles_detail: TileDetail[];
  moves: Move[];
  /** every acquisition in order: truth beside the daemon's verdict and score. */
  acquisitions_detail: Acquisition[];
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;

/** The shift a z_offset puts on a tile's planned z: flat, or tilted about its origin (docs/mqtt.md). */
function planeShift(offset: number, plane: ZPlane | null, t: Pick<SimTile, 'x' | 'y'>): number {
  if (!plane) return offset;
  return offset + (plane.dz_dx_um_per_mm * (t.x - plane.origin_um.x) + plane.dz_dy_um_per_mm * (t.y - plane.origin_um.y)) / 1000;
}

export class VirtualScanner {
  private sender: TileSender | null = null;

  constructor(private readonly o: ScannerOptions) {}

  start(): void {
    this.sender = new TileSender({
      endpoint: this.o.endpoint,
      pattern: this.o.pattern === 'router' ? 'req' : 'push',
      timeoutMs: this.o.replyTimeoutMs ?? 60_000,
      lingerMs: this.o.pattern === 'pull' ? 5_000 : 0,
    });
    this.sender.connect();
  }

  async stop(): Promise<void> {
    if (!this.sender) return;
    // no pause before the daemon (often in this process) stops: the pipe.cpp:355 abort that one was added for came from
    // the ingest unbinding with a receive pending (adapters/zmq-ingest.ts, RECEIVE_POLL_MS), not from this close
    await this.sender.close();
    this.sender = null;
  }

  /** Scans one slide; `slideId` must be new to the daemon (its controller keeps state per slide). */
  async scanSlide(slide: VirtualSlide, slideId: string): Promise<SlideResult> {
    const sender = this.sender;
    if (!sender) throw new Error('VirtualScanner: start() first');
    const o = this.o;
    const eps = o.wrongWayEpsUm ?? 0.1;
    const maxAcq = o.maxAcquisitionsPerTile ?? 6;
    const scan = 'scan-1';
    const t0 = performance.now();
    const acqs: Acquisition[] = [];
    const byTile = new Map<number, Acquisition[]>();
    const moves: Move[] = [];
    const c = {
      actions: 0, ignored: 0, late: 0, stale: 0, dry: 0, refused: 0, rejected: 0, lost: 0, reacquires: 0, probes: 0, zOffsets: 0, zSum: 0,
    };
    let seq = 0;
    /** z_offsets obeyed so far: the shift of a tile's planned z is their sum at its position (a tilted one varies). */
    const corrections: Array<{ offset: number; plane: ZPlane | null }> = [];
    const shiftAt = (t: SimTile, cs = corrections) => cs.reduce((a, k) => a + planeShift(k.offset, k.plane, t), 0);
    /** z_offsets applied and not judged yet: the next first acquisition judges them. */
    let pendingZ: Array<{ a: ReceivedAction; offset: number; plane: ZPlane | null }> = [];

    const acquire = async (tile: SimTile, zWanted: number, action: ReceivedAction | null): Promise<Acquisition> => {
      const z = round3(zWanted);
      const prev = byTile.get(tile.index) ?? [];
      const attempt = prev.length === 0 ? 0 : prev[prev.length - 1]!.attempt + 1;
      const t = acqs.length;
      const trueFocus = slide.trueFocus(tile, t);
      const d = z - trueFocus;
      const img = o.renderer.render(slide, tile, d);
      const header: TileHeader = {
        v: 1,
        scanner: o.scanner,
        slide: slideId,
        scan,
        seq: seq++,
        tile: { index: tile.index, row: tile.row, col: tile.col },
        stage_um: { x: round3(tile.x), y: round3(tile.y), z },
        pixel_size_um: slide.pixelSizeUm,
        objective: o.objective ?? 'Plan-Apochromat 20x/0.8',
        acquired_at: new Date().toISOString(),
        attempt,
        format: 'raw',
        width: img.width,
        height: img.height,
        pixel_type: 'RGB24',
        ...(o.revealTruth ? { [ORACLE_TRUTH_FIELD]: round3(d) } : {}),
      };
      const acq: Acquisition = {
        seq: header.seq,
        index: tile.index,
        attempt,
        t,
        z_um: z,
        true_focus_um: round3(trueFocus),
        defocus_um: round3(d),
        action_id: action?.id ?? null,
        probe: action?.probe === true,
        verdict: 'lost',
        scored_defocus_um: null,
        sign_confidence: null,
        tissue_fraction_truth: round3(img.truthTissueFraction),
      };
      acqs.push(acq);
      byTile.set(tile.index, [...prev, acq]);
      const reply = await sender.send(header, img.rgb);
      if (reply && !reply.ok) {
        acq.verdict = 'rejected';
        c.rejected++;
      } else {
        const v = await o.feed.settle({ slide: slideId, scan, seq: header.seq, attempt });
        if (v) {
          acq.verdict = v.verdict;
          acq.scored_defocus_um = v.defocus_um;
          acq.sign_confidence = v.sign_confidence;
        } else c.lost++;
      }
      o.onEvent?.({ type: 'acquisition', slide: slideId, acq, tile });
      return acq;
    };

    const note = (a: ReceivedAction, executed: boolean, text: string) => o.onEvent?.({ type: 'action', slide: slideId, action: a, executed, note: text });

    const obey = async (a: ReceivedAction): Promise<void> => {
      if (a.slide !== slideId || a.scan !== scan) {
        // a command for a slide already finished (it came after the end-of-slide wait): too late to execute
        c.late++;
        c.stale++;
        note(a, false, 'for a slide already finished: not executed');
        return;
      }
      if (a.dry_run) {
        c.dry++;
        note(a, false, 'dry run: not executed');
        return;
      }
      c.actions++;
      if (o.feed.isLate(a.id)) c.late++;
      if (!o.feedback) {
        c.ignored++;
        note(a, false, 'feedback off: ignored');
        return;
      }
      const rule = String((a.why as { rule?: unknown } | undefined)?.rule ?? '');
      if (a.type === 'z_offset') {
        const plane = a.plane && [a.plane.origin_um?.x, a.plane.origin_um?.y, a.plane.dz_dx_um_per_mm, a.plane.dz_dy_um_per_mm].every(Number.isFinite) ? a.plane : null;
        corrections.push({ offset: a.z_offset_um, plane });
        c.zOffsets++;
        c.zSum += a.z_offset_um;
        pendingZ.push({ a, offset: a.z_offset_um, plane });
        const total = corrections.reduce((s, k) => s + k.offset, 0);
        note(a, true, `planned z of the next tiles ${total >= 0 ? '+' : ''}${total.toFixed(2)} µm${plane ? ` at (${plane.origin_um.x.toFixed(0)}, ${plane.origin_um.y.toFixed(0)}), tilted ${plane.dz_dx_um_per_mm}, ${plane.dz_dy_um_per_mm} µm/mm` : ''}`);
        return;
      }
      const tile = slide.tiles[a.tile.index];
      const history = tile ? byTile.get(tile.index) : undefined;
      if (!tile || !history?.length) {
        c.refused++;
        note(a, false, `no such tile ${a.tile.index}`);
        return;
      }
      if (history.length >= maxAcq) {
        c.refused++;
        note(a, false, `tile already taken ${history.length} times`);
        return;
      }
      const ref = history.find((h) => h.attempt === a.tile.attempt) ?? history[history.length - 1]!;
      const target = typeof a.target_z_um === 'number' ? a.target_z_um : ref.z_um + a.z_offset_um;
      note(a, true, `${a.probe ? 'probe' : 'retake'} at z ${target.toFixed(2)}`);
      const got = await acquire(tile, target, a);
      if (a.probe) {
        c.probes++;
        return;
      }
      c.reacquires++;
      const before = Math.abs(ref.defocus_um);
      const after = Math.abs(got.defocus_um);
      moves.push({ action_id: a.id, type: 'reacquire', rule, tile: tile.index, before_um: round3(before), after_um: round3(after), wrong_way: after > before + eps });
    };

    const obeyAll = async (first: ReceivedAction[]): Promise<void> => {
      let q = first;
      while (q.length) {
        for (const a of q) await obey(a);
        q = o.feed.take();
      }
    };

    for (const tile of slide.tiles) {
      const planned = slide.plannedZ(tile) + shiftAt(tile);
      if (pendingZ.length) {
        // judge each new z_offset on the first tile it moved: against the smooth surface (a bump is not its business)
        const focus = slide.smoothFocus(tile.x, tile.y, acqs.length);
        for (const p of pendingZ) {
          const withIt = Math.abs(round3(planned) - focus);
          const without = Math.abs(round3(planned - planeShift(p.offset, p.plane, tile)) - focus);
          const rule = String((p.a.why as { rule?: unknown } | undefined)?.rule ?? '');
          moves.push({ action_id: p.a.id, type: 'z_offset', rule, tile: tile.index, before_um: round3(without), after_um: round3(withIt), wrong_way: withIt > without + eps });
        }
        pendingZ = [];
      }
      await acquire(tile, planned, null);
      await obeyAll(o.feed.take());
    }
    await obeyAll(await o.feed.drain(o.endWaitMs ?? 300));

    const detail: TileDetail[] = slide.tiles.map((tile) => {
      const h = byTile.get(tile.index)!;
      const first = h[0]!;
      const final = h[h.length - 1]!;
      return {
        index: tile.index,
        row: tile.row,
        col: tile.col,
        kind: tile.kind,
        // the generator's truth: a tissue kind with enough tissue on it to be judged at all
        tissue: isTissueKind(tile.kind) && first.tissue_fraction_truth >= 0.1,
        bump_um: tile.bumpUm,
        planned_z_um: first.z_um,
        first_defocus_um: first.defocus_um,
        final_defocus_um: final.defocus_um,
        acquisitions: h.length,
      };
    });
    const counts = summarise(detail, acqs, moves, {
      ...c,
      unjudged: pendingZ.length,
      tol: o.toleranceUm ?? 1,
      time_s: (performance.now() - t0) / 1000,
    });
    return { slide: slideId, seed: slide.seed, surface: slide.surface, ...counts, tiles_detail: detail, moves, acquisitions_detail: acqs };
  }
}

function summarise(
  detail: TileDetail[],
  acqs: Acquisition[],
  moves: Move[],
  c: { actions: number; ignored: number; late: number; stale: number; dry: number; refused: number; rejected: number; lost: number; reacquires: number; probes: number; zOffsets: number; zSum: number; unjudged: number; tol: number; time_s: number },
): ScanCounts {
  const tissue = detail.filter((d) => d.tissue);
  const abs = tissue.map((d) => Math.abs(d.final_defocus_um));
  const inTol = abs.filter((a) => a <= c.tol + 1e-9).length;
  const verdicts = { in_focus: 0, out_of_focus: 0, no_tissue: 0 };
  for (const a of acqs) if (a.verdict in verdicts) verdicts[a.verdict as keyof typeof verdicts]++;
  const ww = { reacquire: moves.filter((m) => m.wrong_way && m.type === 'reacquire').length, z_offset: moves.filter((m) => m.wrong_way && m.type === 'z_offset').length };
  return {
    tiles: detail.length,
    tissue_tiles: tissue.length,
    acquisitions: acqs.length,
    acquisitions_per_tile: round3(acqs.length / Math.max(1, detail.length)),
    yield: round3(inTol / Math.max(1, tissue.length)),
    in_tolerance: inTol,
    mean_abs_defocus_um: round3(abs.reduce((s, v) => s + v, 0) / Math.max(1, abs.length)),
    max_abs_defocus_um: round3(Math.max(0, ...abs)),
    wrong_way_moves: ww.reacquire + ww.z_offset,
    wrong_way: ww,
    reacquires: c.reacquires,
    probes: c.probes,
    z_offsets: c.zOffsets,
    z_offset_sum_um: round3(c.zSum),
    unjudged_z_offsets: c.unjudged,
    actions: c.actions,
    ignored_actions: c.ignored,
    late_actions: c.late,
    stale_actions: c.stale,
    dry_run_actions: c.dry,
    refused_by_scanner: c.refused,
    rejected: c.rejected,
    lost_verdicts: c.lost,
    verdicts,
    time_s: Math.round(c.time_s * 100) / 100,
  };
}

/** Totals over slides: counts summed, shares and means recomputed over all tiles. */
export function totalOf(slides: SlideResult[]): ScanCounts {
  const detail = slides.flatMap((s) => s.tiles_detail);
  const tissue = detail.filter((d) => d.tissue);
  const abs = tissue.map((d) => Math.abs(d.final_defocus_um));
  const sum = (f: (s: SlideResult) => number) => slides.reduce((a, s) => a + f(s), 0);
  const inTol = sum((s) => s.in_tolerance);
  const acquisitions = sum((s) => s.acquisitions);
  return {
    tiles: detail.length,
    tissue_tiles: tissue.length,
    acquisitions,
    acquisitions_per_tile: round3(acquisitions / Math.max(1, detail.length)),
    yield: round3(inTol / Math.max(1, tissue.length)),
    in_tolerance: inTol,
    mean_abs_defocus_um: round3(abs.reduce((a, v) => a + v, 0) / Math.max(1, abs.length)),
    max_abs_defocus_um: round3(Math.max(0, ...abs)),
    wrong_way_moves: sum((s) => s.wrong_way_moves),
    wrong_way: { reacquire: sum((s) => s.wrong_way.reacquire), z_offset: sum((s) => s.wrong_way.z_offset) },
    reacquires: sum((s) => s.reacquires),
    probes: sum((s) => s.probes),
    z_offsets: sum((s) => s.z_offsets),
    z_offset_sum_um: round3(sum((s) => s.z_offset_sum_um)),
    unjudged_z_offsets: sum((s) => s.unjudged_z_offsets),
    actions: sum((s) => s.actions),
    ignored_actions: sum((s) => s.ignored_actions),
    late_actions: sum((s) => s.late_actions),
    stale_actions: sum((s) => s.stale_actions),
    dry_run_actions: sum((s) => s.dry_run_actions),
    refused_by_scanner: sum((s) => s.refused_by_scanner),
    rejected: sum((s) => s.rejected),
    lost_verdicts: sum((s) => s.lost_verdicts),
    verdicts: {
      in_focus: sum((s) => s.verdicts.in_focus),
      out_of_focus: sum((s) => s.verdicts.out_of_focus),
      no_tissue: sum((s) => s.verdicts.no_tissue),
    },
    time_s: Math.round(sum((s) => s.time_s) * 100) / 100,
  };
}
