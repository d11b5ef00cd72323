import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';
import Database from 'better-sqlite3';
import type { Context } from '../core/context.js';
import type { Component } from '../core/lifecycle.js';
import { LogThrottle } from '../core/log-throttle.js';
import type { Action, ActionRefusal, SignBinCounts as BinCounts, SignEvidenceKey as LearnerKey, TileOutcome, Verdict } from '../core/types.js';

/**
 * The daemon's state in one SQLite file (WAL) under config.resolved.stateDir:
 *  - tiles:   every verdict with metadata and a focus-map summary (input of the nightly drift reports),
 *  - actions: every command the controller decided, with its delivery status,
 *  - outbox:  commands not yet acknowledged by the broker (daemon/outbox.ts); survives crashes.
 *  - sign_evidence: outcome learning of the model's sign per scanner/objective/model and confidence bin
 *  - gain_evidence: observed magnitude gains of the model (µm read per µm moved) per scanner/objective/model
 *    (daemon/sign-learner.ts); never pruned, it is what the instrument taught the daemon.
 *  - loop_events: wrong-way moves, loop_diverging and sign_inverted_detected, for the nightly report.
 */
export const STORE_FILE = 'focusd.sqlite';
const PRUNE_EVERY_MS = 60 * 60 * 1000;
const DAY_MS = 24 * 60 * 60 * 1000;

export type ActionStatus = 'queued' | 'sent' | 'expired';

export interface SlideSummary {
  scanner: string;
  slide: string;
  tiles: number;
  /** tiles at attempt 0 (first acquisitions). */
  first_acquisitions: number;
  reacquired: number;
  verdicts: Record<Verdict, number>;
  out_of_focus_rate: number | null;
  mean_defocus_um: number | null;
  mean_abs_defocus_um: number | null;
  max_abs_defocus_um: number | null;
  mean_latency_ms: number | null;
  first_at: string | null;
  last_at: string | null;
  actions: { reacquire: number; z_offset: number; dry_run: number; expired: number; pending: number; z_offset_total_um: number };
}

export interface DriftStats {
  scanner: string;
  slide: string;
  tiles: number;
  with_tissue: number;
  out_of_focus: number;
  out_of_focus_rate: number | null;
  mean_defocus_um: number | null;
  mean_abs_defocus_um: number | null;
  p95_abs_defocus_um: number | null;
  /** least-squares slope of signed defocus over time; drift in µm per hour. */
  drift_um_per_h: number | null;
  z_offsets: number;
  z_offset_total_um: number;
  from: string;
  to: string;
}

export interface StoreDeps {
  /** database file; default <stateDir>/focusd.sqlite. */
  file?: string;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS tiles (
  id INTEGER PRIMARY KEY,
  at INTEGER NOT NULL,
  scanner TEXT NOT NULL, slide TEXT NOT NULL, scan TEXT NOT NULL,
  seq INTEGER NOT NULL, tile_index INTEGER NOT NULL, tile_row INTEGER NOT NULL, tile_col INTEGER NOT NULL, attempt INTEGER NOT NULL,
  x_um REAL NOT NULL, y_um REAL NOT NULL, z_um REAL NOT NULL,
  verdict TEXT NOT NULL, defocus_um REAL, uncertainty_um REAL, sign_confidence REAL,
  tissue_fraction REAL NOT NULL, patches INTEGER NOT NULL, latency_ms REAL NOT NULL,
  model TEXT NOT NULL, model_version TEXT NOT NULL, engine TEXT NOT NULL,
  map_rows INTEGER, map_cols INTEGER, map_cells INTEGER, map_min_um REAL, map_max_um REAL, map_mean_um REAL
);
CREATE INDEX IF NOT EXISTS tiles_slide ON tiles (scanner, slide);
CREATE INDEX IF NOT EXISTS tiles_at ON tiles (at);
CREATE TABLE IF NOT EXISTS actions (
  id TEXT PRIMARY KEY,
  at INTEGER NOT NULL,
  scanner TEXT NOT NULL, slide TEXT NOT NULL, type TEXT NOT NULL, z_offset_um REAL NOT NULL, dry_run INTEGER NOT NULL,
  status TEXT NOT NULL, status_at INTEGER NOT NULL, payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_slide ON actions (scanner, slide);
CREATE INDEX IF NOT EXISTS actions_at ON actions (at);
CREATE TABLE IF NOT EXISTS refusals (
  id INTEGER PRIMARY KEY,
  at INTEGER NOT NULL,
  scanner TEXT NOT NULL, slide TEXT NOT NULL, type TEXT NOT NULL, limit_name TEXT NOT NULL, tile_index INTEGER NOT NULL,
  suppressed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS refusals_at ON refusals (at);
CREATE TABLE IF NOT EXISTS sign_evidence (
  scanner TEXT NOT NULL, objective TEXT NOT NULL, model_sha256 TEXT NOT NULL, calibration_sign TEXT NOT NULL,
  calibrated INTEGER NOT NULL, bin INTEGER NOT NULL,
  right INTEGER NOT NULL DEFAULT 0, wrong INTEGER NOT NULL DEFAULT 0, updated_at INTEGER NOT NULL,
  PRIMARY KEY (scanner, objective, model_sha256, calibration_sign, bin)
);
CREATE TABLE IF NOT EXISTS gain_evidence (
  id INTEGER PRIMARY KEY,
  scanner TEXT NOT NULL, objective TEXT NOT NULL, model_sha256 TEXT NOT NULL, calibration_sign TEXT NOT NULL,
  gain REAL NOT NULL, at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS gain_evidence_key ON gain_evidence (scanner, objective, model_sha256, calibration_sign, id);
CREATE TABLE IF NOT EXISTS loop_events (
  id INTEGER PRIMARY KEY,
  at INTEGER NOT NULL, scanner TEXT NOT NULL, slide TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS loop_events_at ON loop_events (at);
CREATE TABLE IF NOT EXISTS outbox (
  n INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  expires_at INTEGER NOT NULL,
  payload TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0
);
`;

export class Store implements Component {
  readonly name = 'store';
  private db: Database.Database | null = null;
  private off: (() => void) | null = null;
  private offRefused: (() => void) | null = null;
  private pruneTimer: NodeJS.Timeout | null = null;
  /** the per-tile insert, prepared once per open database. */
  private insertTile: Database.Statement | null = null;
  /** The write failure that still holds (the last write failed); null once a write succeeds. Health reads it. */
  writeFailure: { what: string; err: string; since: string } | null = null;
  private readonly failureLog = new LogThrottle(10_000);

  constructor(private readonly ctx: Context, private readonly deps: StoreDeps = {}) {}

  get file(): string {
    return this.deps.file ?? resolve(this.ctx.config.resolved.stateDir, STORE_FILE);
  }

  async start(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    mkdirSync(resolve(this.file, '..'), { recursive: true });
    const db = new Database(this.file);
    this.db = db;
    // WAL: readers (reports, control requests) never block the writer; NORMAL sync is durable across process crashes
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('busy_timeout = 5000');
    db.exec(SCHEMA);
    const pruned = this.prune();
    const pending = this.outboxCount();
    this.ctx.logger.info('store opened', { file: this.file, pruned_tiles: pruned, outbox_pending: pending });
    this.off = this.ctx.events.on('tile:scored', (o) => {
      try {
        this.recordTile(o);
      } catch (err) {
        // history is not worth crashing the daemon for, but it is never lost silently: counted (store_write_failures),
        // health degraded (store_write_failed), logged once per 10 s while it repeats
        const t = this.failureLog.take('tile');
        if (t) this.ctx.logger.error('store: cannot record tile', { err: (err as Error).message, slide: o.header.slide, seq: o.header.seq, suppressed: t.suppressed });
      }
    });
    this.offRefused = this.ctx.events.on('action:refused', (r) => {
      try {
        this.recordRefusal(r);
      } catch (err) {
        const t = this.failureLog.take('refusal');
        if (t) this.ctx.logger.error('store: cannot record refusal', { err: (err as Error).message, slide: r.slide, suppressed: t.suppressed });
      }
    });
    this.pruneTimer = setInterval(() => {
      try {
        this.prune();
      } catch (err) {
        this.ctx.logger.error('store: prune failed', { err: (err as Error).message });
      }
    }, PRUNE_EVERY_MS);
    this.pruneTimer.unref();
  }

  async stop(): Promise<void> {
    this.off?.();
    this.off = null;
    this.offRefused?.();
    this.offRefused = null;
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    this.pruneTimer = null;
    if (this.db?.open) this.db.close();
    this.db = null;
    this.insertTile = null;
  }

  private get conn(): Database.Database {
    if (!this.db?.open) throw new Error('store is not open');
    return this.db;
  }

  /** Runs one write; a failure is counted and remembered (writeFailure) until a later write succeeds, then rethrown. */
  private write<T>(what: string, fn: () => T): T {
    let r: T;
    try {
      r = fn();
    } catch (err) {
      this.ctx.metrics.storeWriteFailures++;
      this.writeFailure ??= { what, err: (err as Error).message, since: new Date().toISOString() };
      throw err;
    }
    if (this.writeFailure) {
      this.ctx.logger.info('store: writes succeed again', { failed_since: this.writeFailure.since, failures_total: this.ctx.metrics.storeWriteFailures });
      this.writeFailure = null;
    }
    return r;
  }

  /** Deletes tile and finished-action history older than store.historyRetentionDays; returns the tiles deleted. */
  prune(now = Date.now()): number {
    const cutoff = now - this.ctx.config.store.historyRetentionDays * DAY_MS;
    return this.write('prune', () => {
      const r = this.conn.prepare('DELETE FROM tiles WHERE at < ?').run(cutoff);
      this.conn.prepare("DELETE FROM actions WHERE at < ? AND status != 'queued'").run(cutoff);
      this.conn.prepare('DELETE FROM refusals WHERE at < ?').run(cutoff);
      this.conn.prepare('DELETE FROM loop_events WHERE at < ?').run(cutoff);
      return r.changes;
    });
  }

  recordTile(o: TileOutcome, at = Date.now()): void {
    this.write('tile history', () => this.insertTileRow(o, at));
  }

  private insertTileRow(o: TileOutcome, at: number): void {
    const h = o.header;
    const s = o.score;
    const cells = (s.focus_map?.defocus_um ?? []).filter((v): v is number => typeof v === 'number');
    (this.insertTile ??= this.conn.prepare(
        `INSERT INTO tiles (at, scanner, slide, scan, seq, tile_index, tile_row, tile_col, attempt, x_um, y_um, z_um, verdict,
          defocus_um, uncertainty_um, sign_confidence, tissue_fraction, patches, latency_ms, model, model_version, engine,
          map_rows, map_cols, map_cells, map_min_um, map_max_um, map_mean_um)
         VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
      )).run(
        at, h.scanner, h.slide, h.scan, h.seq, h.tile.index, h.tile.row, h.tile.col, h.attempt, h.stage_um.x, h.stage_um.y, h.stage_um.z,
        o.verdict, s.defocus_um, s.uncertainty_um, s.sign_confidence, s.tissue_fraction, s.patches, o.latency_ms,
        s.model.name, s.model.version, s.model.engine,
        s.focus_map?.rows ?? null, s.focus_map?.cols ?? null, s.focus_map ? cells.length : null,
        cells.length ? Math.min(...cells) : null, cells.length ? Math.max(...cells) : null,
        cells.length ? cells.reduce((a, b) => a + b, 0) / cells.length : null,
      );
  }

  // ---- outbox (daemon/outbox.ts) -------------------------------------------------------------------------

  /** Writes an action to the outbox and the action history in one transaction. False when the id is already known. */
  outboxPut(a: Action): boolean {
    const payload = JSON.stringify(a);
    const tx = this.conn.transaction(() => {
      const r = this.conn
        .prepare('INSERT OR IGNORE INTO actions (id, at, scanner, slide, type, z_offset_um, dry_run, status, status_at, payload) VALUES (?,?,?,?,?,?,?,?,?,?)')
        .run(a.id, Date.parse(a.created_at), a.scanner, a.slide, a.type, a.z_offset_um, a.dry_run ? 1 : 0, 'queued', Date.now(), payload);
      if (r.changes === 0) return false;
      this.conn.prepare('INSERT INTO outbox (id, expires_at, payload) VALUES (?,?,?)').run(a.id, Date.parse(a.expires_at), payload);
      return true;
    });
    return this.write('outbox', () => tx());
  }

  /** Pending actions in the order they were decided. */
  outboxPending(limit = 1000): Action[] {
    const rows = this.conn.prepare('SELECT payload FROM outbox ORDER BY n LIMIT ?').all(limit) as { payload: string }[];
    return rows.map((r) => JSON.parse(r.payload) as Action);
  }

  outboxCount(): number {
    return (this.conn.prepare('SELECT count(*) AS c FROM outbox').get() as { c: number }).c;
  }

  outboxAttempt(id: string): void {
    this.write('outbox', () => this.conn.prepare('UPDATE outbox SET attempts = attempts + 1 WHERE id = ?').run(id));
  }

  /** Removes an action from the outbox (acknowledged or expired) and records its final status. */
  outboxDone(id: string, status: Exclude<ActionStatus, 'queued'>): void {
    const tx = this.conn.transaction(() => {
      this.conn.prepare('DELETE FROM outbox WHERE id = ?').run(id);
      this.conn.prepare('UPDATE actions SET status = ?, status_at = ? WHERE id = ?').run(status, Date.now(), id);
    });
    this.write('outbox', () => tx());
  }

  actionStatus(id: string): ActionStatus | null {
    const r = this.conn.prepare('SELECT status FROM actions WHERE id = ?').get(id) as { status: ActionStatus } | undefined;
    return r?.status ?? null;
  }

  // ---- outcome learning (daemon/sign-learner.ts) -------------------------------------------------------------

  loadEvidence(k: LearnerKey): BinCounts[] {
    return this.conn
      .prepare(
        `SELECT bin, right, wrong, updated_at FROM sign_evidence
         WHERE scanner = ? AND objective = ? AND model_sha256 = ? AND calibration_sign = ? ORDER BY bin`,
      )
      .all(k.scanner, k.objective, k.model_sha256, k.calibration_sign) as BinCounts[];
  }

  /** One experiment's outcome, committed at once (WAL): a SIGKILL right after it loses nothing. */
  addEvidence(k: LearnerKey, bin: number, right: number, wrong: number, at: number): void {
    this.conn
      .prepare(
        `INSERT INTO sign_evidence (scanner, objective, model_sha256, calibration_sign, calibrated, bin, right, wrong, updated_at)
         VALUES (?,?,?,?,?,?,?,?,?)
         ON CONFLICT (scanner, objective, model_sha256, calibration_sign, bin)
         DO UPDATE SET right = right + excluded.right, wrong = wrong + excluded.wrong, updated_at = excluded.updated_at, calibrated = excluded.calibrated`,
      )
      .run(k.scanner, k.objective, k.model_sha256, k.calibration_sign, k.calibrated ? 1 : 0, bin, right, wrong, at);
  }

  /** The most recent magnitude-gain observations of a key, oldest first. */
  loadGain(k: LearnerKey, limit: number): { gain: number; at: number }[] {
    const rows = this.conn
      .prepare(
        `SELECT gain, at FROM gain_evidence WHERE scanner = ? AND objective = ? AND model_sha256 = ? AND calibration_sign = ?
         ORDER BY id DESC LIMIT ?`,
      )
      .all(k.scanner, k.objective, k.model_sha256, k.calibration_sign, limit) as { gain: number; at: number }[];
    return rows.reverse();
  }

  /** One magnitude-gain observation, committed at once like the sign evidence. */
  addGain(k: LearnerKey, gain: number, at: number): void {
    this.conn
      .prepare('INSERT INTO gain_evidence (scanner, objective, model_sha256, calibration_sign, gain, at) VALUES (?,?,?,?,?,?)')
      .run(k.scanner, k.objective, k.model_sha256, k.calibration_sign, gain, at);
    // the learner uses a rolling window; older observations are history nobody reads
    this.conn
      .prepare(
        `DELETE FROM gain_evidence WHERE scanner = ? AND objective = ? AND model_sha256 = ? AND calibration_sign = ? AND id NOT IN
         (SELECT id FROM gain_evidence WHERE scanner = ? AND objective = ? AND model_sha256 = ? AND calibration_sign = ? ORDER BY id DESC LIMIT 64)`,
      )
      .run(k.scanner, k.objective, k.model_sha256, k.calibration_sign, k.scanner, k.objective, k.model_sha256, k.calibration_sign);
  }

  /** Every scanner/objective/model with sign evidence (of one scanner when given). */
  evidenceKeys(scanner?: string): LearnerKey[] {
    const rows = this.conn
      .prepare(
        `SELECT scanner, objective, model_sha256, calibration_sign, max(calibrated) AS calibrated FROM sign_evidence
         WHERE (? IS NULL OR scanner = ?) GROUP BY scanner, objective, model_sha256, calibration_sign ORDER BY max(updated_at)`,
      )
      .all(scanner ?? null, scanner ?? null) as (Omit<LearnerKey, 'calibrated'> & { calibrated: number })[];
    return rows.map((r) => ({ ...r, calibrated: r.calibrated === 1 }));
  }

  recordLoopEvent(e: { at: number; scanner: string; slide: string; kind: string; detail: string }): void {
    this.conn.prepare('INSERT INTO loop_events (at, scanner, slide, kind, detail) VALUES (?,?,?,?,?)').run(e.at, e.scanner, e.slide, e.kind, e.detail);
  }

  /** Loop events per slide and kind in [fromMs, toMs). */
  loopEventCounts(fromMs: number, toMs: number, scanner?: string): { scanner: string; slide: string; kind: string; n: number }[] {
    return this.conn
      .prepare(
        `SELECT scanner, slide, kind, count(*) AS n FROM loop_events
         WHERE at >= ? AND at < ? AND (? IS NULL OR scanner = ?) GROUP BY scanner, slide, kind ORDER BY scanner, slide, kind`,
      )
      .all(fromMs, toMs, scanner ?? null, scanner ?? null) as { scanner: string; slide: string; kind: string; n: number }[];
  }

  // ---- queries ----------------------------------------------------------------------------------------------

  /** What the controller's safety limits already spent on a slide (live actions not expired), for a restarted daemon. */
  slideLimits(scanner: string, slide: string): { cumulativeUm: number; reacquires: Map<number, number> } {
    const z = this.conn
      .prepare(
        `SELECT coalesce(sum(z_offset_um), 0) AS total FROM actions
         WHERE scanner = ? AND slide = ? AND type = 'z_offset' AND dry_run = 0 AND status != 'expired'`,
      )
      .get(scanner, slide) as { total: number };
    const rows = this.conn
      .prepare(
        `SELECT json_extract(payload, '$.tile.index') AS idx, count(*) AS n FROM actions
         WHERE scanner = ? AND slide = ? AND type = 'reacquire' AND dry_run = 0 AND status != 'expired' GROUP BY idx`,
      )
      .all(scanner, slide) as { idx: number; n: number }[];
    return { cumulativeUm: z.total, reacquires: new Map(rows.map((r) => [r.idx, r.n])) };
  }

  /** Everything known about one slide; null when no tile of it was recorded. */
  slideSummary(slide: string, scanner = this.ctx.config.scanner.id): SlideSummary | null {
    const t = this.conn
      .prepare(
        `SELECT count(*) AS tiles, sum(attempt = 0) AS first, sum(attempt > 0) AS re,
           sum(verdict = 'in_focus') AS inf, sum(verdict = 'out_of_focus') AS oof, sum(verdict = 'no_tissue') AS nt,
           avg(defocus_um) AS mean, avg(abs(defocus_um)) AS mabs, max(abs(defocus_um)) AS maxabs, avg(latency_ms) AS lat,
           min(at) AS first_at, max(at) AS last_at
         FROM tiles WHERE scanner = ? AND slide = ?`,
      )
      .get(scanner, slide) as Record<string, number | null>;
    if (!t.tiles) return null;
    const a = this.conn
      .prepare(
        `SELECT sum(type = 'reacquire' AND dry_run = 0) AS re, sum(type = 'z_offset' AND dry_run = 0) AS z, sum(dry_run = 1) AS dry,
           sum(status = 'expired') AS exp, sum(status = 'queued') AS pend,
           coalesce(sum(CASE WHEN type = 'z_offset' AND dry_run = 0 AND status != 'expired' THEN z_offset_um END), 0) AS ztot
         FROM actions WHERE scanner = ? AND slide = ?`,
      )
      .get(scanner, slide) as Record<string, number | null>;
    const withTissue = (t.inf ?? 0) + (t.oof ?? 0);
    const r2 = (v: number | null) => (v === null ? null : Math.round(v * 1000) / 1000);
    return {
      scanner,
      slide,
      tiles: t.tiles ?? 0,
      first_acquisitions: t.first ?? 0,
      reacquired: t.re ?? 0,
      verdicts: { in_focus: t.inf ?? 0, out_of_focus: t.oof ?? 0, no_tissue: t.nt ?? 0 },
      out_of_focus_rate: withTissue ? r2((t.oof ?? 0) / withTissue) : null,
      mean_defocus_um: r2(t.mean ?? null),
      mean_abs_defocus_um: r2(t.mabs ?? null),
      max_abs_defocus_um: r2(t.maxabs ?? null),
      mean_latency_ms: r2(t.lat ?? null),
      first_at: t.first_at ? new Date(t.first_at).toISOString() : null,
      last_at: t.last_at ? new Date(t.last_at).toISOString() : null,
      actions: {
        reacquire: a.re ?? 0,
        z_offset: a.z ?? 0,
        dry_run: a.dry ?? 0,
        expired: a.exp ?? 0,
        pending: a.pend ?? 0,
        z_offset_total_um: r2(a.ztot ?? 0) ?? 0,
      },
    };
  }

  /** Per scanner and slide drift statistics of the tiles recorded in [fromMs, toMs): the nightly report's input. */
  driftStats(fromMs: number, toMs: number, scanner?: string): DriftStats[] {
    const rows = this.conn
      .prepare(
        `SELECT scanner, slide, at, verdict, defocus_um FROM tiles
         WHERE at >= ? AND at < ? AND (? IS NULL OR scanner = ?) ORDER BY scanner, slide, at`,
      )
      .all(fromMs, toMs, scanner ?? null, scanner ?? null) as { scanner: string; slide: string; at: number; verdict: Verdict; defocus_um: number | null }[];
    const zs = this.conn
      .prepare(
        `SELECT scanner, slide, count(*) AS n, coalesce(sum(z_offset_um), 0) AS total FROM actions
         WHERE type = 'z_offset' AND dry_run = 0 AND status != 'expired' AND at >= ? AND at < ? GROUP BY scanner, slide`,
      )
      .all(fromMs, toMs) as { scanner: string; slide: string; n: number; total: number }[];
    const groups = new Map<string, typeof rows>();
    for (const r of rows) {
      const k = `${r.scanner}\u0000${r.slide}`;
      let g = groups.get(k);
      if (!g) groups.set(k, (g = []));
      g.push(r);
    }
    const r3 = (v: number) => Math.round(v * 1000) / 1000;
    const out: DriftStats[] = [];
    for (const g of groups.values()) {
      const first = g[0]!;
      const d = g.filter((r) => r.defocus_um !== null);
      const abs = d.map((r) => Math.abs(r.defocus_um!)).sort((a, b) => a - b);
      let slope: number | null = null;
      if (d.length >= 2) {
        const t0 = d[0]!.at;
        const xs = d.map((r) => (r.at - t0) / 3_600_000);
        const ys = d.map((r) => r.defocus_um!);
        const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
        const my = ys.reduce((a, b) => a + b, 0) / ys.length;
        let sxy = 0;
        let sxx = 0;
        for (let i = 0; i < xs.length; i++) {
          sxy += (xs[i]! - mx) * (ys[i]! - my);
          sxx += (xs[i]! - mx) ** 2;
        }
        slope = sxx > 0 ? r3(sxy / sxx) : null;
      }
      const oof = g.filter((r) => r.verdict === 'out_of_focus').length;
      const withTissue = g.filter((r) => r.verdict !== 'no_tissue').length;
      const z = zs.find((r) => r.scanner === first.scanner && r.slide === first.slide);
      out.push({
        scanner: first.scanner,
        slide: first.slide,
        tiles: g.length,
        with_tissue: withTissue,
        out_of_focus: oof,
        out_of_focus_rate: withTissue ? r3(oof / withTissue) : null,
        mean_defocus_um: d.length ? r3(d.reduce((a, r) => a + r.defocus_um!, 0) / d.length) : null,
        mean_abs_defocus_um: abs.length ? r3(abs.reduce((a, b) => a + b, 0) / abs.length) : null,
        p95_abs_defocus_um: abs.length ? r3(abs[Math.min(abs.length - 1, Math.ceil(0.95 * abs.length) - 1)]!) : null,
        drift_um_per_h: slope,
        z_offsets: z?.n ?? 0,
        z_offset_total_um: r3(z?.total ?? 0),
        from: new Date(fromMs).toISOString(),
        to: new Date(toMs).toISOString(),
      });
    }
    return out;
  }

  // ---- report details (daemon/report-details.ts) -------------------------------------------------------------

  /** Runs fn in one transaction (bulk writers: the history simulator). */
  batch<T>(fn: () => T): T {
    return this.conn.transaction(fn)();
  }

  /** A refused action (controller safety limit); the suppressed count is kept so the report counts every one. */
  recordRefusal(r: ActionRefusal, at = Date.now()): void {
    this.write('refusal', () =>
      this.conn
        .prepare('INSERT INTO refusals (at, scanner, slide, type, limit_name, tile_index, suppressed) VALUES (?,?,?,?,?,?,?)')
        .run(at, r.scanner, r.slide, r.type, r.limit, r.tile, r.suppressed),
    );
  }

  /** Every tile of [fromMs, toMs) in acquisition order, for the per-slide maps and scan plots of the HTML report. */
  reportTiles(fromMs: number, toMs: number, scanner?: string): ReportTileRow[] {
    return this.conn
      .prepare(
        `SELECT slide, at, seq, tile_index, tile_row, tile_col, attempt, x_um, y_um, z_um, verdict, defocus_um, model, model_version
         FROM tiles WHERE at >= ? AND at < ? AND (? IS NULL OR scanner = ?) ORDER BY slide, at, seq`,
      )
      .all(fromMs, toMs, scanner ?? null, scanner ?? null) as ReportTileRow[];
  }

  /** Every action of [fromMs, toMs) with its rule and probe flag (from the payload). */
  reportActions(fromMs: number, toMs: number, scanner?: string): ReportActionRow[] {
    return this.conn
      .prepare(
        `SELECT slide, at, type, z_offset_um, dry_run, status, json_extract(payload, '$.rule') AS rule,
           coalesce(json_extract(payload, '$.probe'), 0) AS probe, json_extract(payload, '$.tile.seq') AS seq
         FROM actions WHERE at >= ? AND at < ? AND (? IS NULL OR scanner = ?) ORDER BY at`,
      )
      .all(fromMs, toMs, scanner ?? null, scanner ?? null) as ReportActionRow[];
  }

  /** Refused actions of [fromMs, toMs) per slide and limit, suppressed repeats included. */
  reportRefusals(fromMs: number, toMs: number, scanner?: string): { slide: string; limit: string; n: number }[] {
    return this.conn
      .prepare(
        `SELECT slide, limit_name AS "limit", sum(1 + suppressed) AS n FROM refusals
         WHERE at >= ? AND at < ? AND (? IS NULL OR scanner = ?) GROUP BY slide, limit_name ORDER BY slide, limit_name`,
      )
      .all(fromMs, toMs, scanner ?? null, scanner ?? null) as { slide: string; limit: string; n: number }[];
  }
}

export interface ReportTileRow {
  slide: string;
  at: number;
  seq: number;
  tile_index: number;
  tile_row: number;
  tile_col: number;
  attempt: number;
  x_um: number;
  y_um: number;
  z_um: number;
  verdict: Verdict;
  defocus_um: number | null;
  model: string;
  model_version: string;
}

export interface ReportActionRow {
  slide: string;
  at: number;
  type: string;
  z_offset_um: number;
  dry_run: 0 | 1;
  status: ActionStatus;
  rule: string | null;
  probe: 0 | 1;
  seq: number | null;
}
