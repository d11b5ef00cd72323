import { existsSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { STORE_FILE, Store } from '../../adapters/store.js';
import type { Action } from '../../core/types.js';
import { makeCtx, outcome, tempDir } from '../helpers/mqtt-side.js';

const stores: Store[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.stop();
});

async function open(dir: string, overrides: Record<string, unknown> = {}) {
  const ctx = makeCtx({ 'store.dir': dir, 'scanner.id': 'scanner-a', ...overrides });
  const store = new Store(ctx);
  stores.push(store);
  await store.start(new AbortController().signal);
  return { ctx, store };
}

const action = (id: string, slide = 'slide-1', type: Action['type'] = 'z_offset', z = -1.5, ttlMs = 60_000): Action => ({
  id,
  type,
  z_offset_um: z,
  scanner: 'scanner-a',
  slide,
  scan: 'scan-1',
  tile: { index: 1, row: 0, col: 1, seq: 1, attempt: 0 },
  reason: 'drift: test',
  dry_run: false,
  created_at: new Date().toISOString(),
  expires_at: new Date(Date.now() + ttlMs).toISOString(),
});

describe('SQLite store', () => {
  it('opens a WAL database in the state dir and records every scored tile from the events', async () => {
    const dir = tempDir();
    const { ctx, store } = await open(dir);
    expect(existsSync(join(dir, STORE_FILE))).toBe(true);
    ctx.events.emit('tile:scored', outcome({ seq: 0, d: 0.3 }));
    ctx.events.emit('tile:scored', outcome({ seq: 1, d: 2.4 }));
    ctx.events.emit('tile:scored', outcome({ seq: 2, d: null }));
    ctx.events.emit('tile:scored', outcome({ seq: 3, index: 1, attempt: 1, d: -0.2 }));
    ctx.events.emit('tile:scored', outcome({ seq: 0, slide: 'other', d: 5 }));
    const s = store.slideSummary('slide-1')!;
    expect(s).toMatchObject({
      tiles: 4,
      first_acquisitions: 3,
      reacquired: 1,
      verdicts: { in_focus: 2, out_of_focus: 1, no_tissue: 1 },
      out_of_focus_rate: 0.333,
      max_abs_defocus_um: 2.4,
    });
    expect(s.mean_defocus_um).toBeCloseTo((0.3 + 2.4 - 0.2) / 3, 3);
    expect(store.slideSummary('nope')).toBeNull();
    const db = new Database(join(dir, STORE_FILE), { readonly: true });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    const row = db.prepare('SELECT * FROM tiles WHERE seq = 1').get() as Record<string, unknown>;
    expect(row).toMatchObject({ verdict: 'out_of_focus', map_rows: 2, map_cols: 2, map_cells: 3, map_max_um: 2.4, model: 'test-model', engine: 'classical' });
    db.close();
  });

  it('keeps the outbox and history across a restart, deduplicates ids, records final status', async () => {
    const dir = tempDir();
    const first = await open(dir);
    expect(first.store.outboxPut(action('a1'))).toBe(true);
    expect(first.store.outboxPut(action('a2', 'slide-1', 'reacquire', 2))).toBe(true);
    expect(first.store.outboxPut(action('a1'))).toBe(false);
    first.store.outboxDone('a2', 'sent');
    await first.store.stop();
    const second = await open(dir);
    expect(second.store.outboxPending().map((a) => a.id)).toEqual(['a1']);
    expect(second.store.actionStatus('a1')).toBe('queued');
    expect(second.store.actionStatus('a2')).toBe('sent');
    second.store.outboxPut(action('a3'));
    second.store.outboxDone('a3', 'expired');
    expect(second.store.outboxPending().map((a) => a.id)).toEqual(['a1']);
    second.ctx.events.emit('tile:scored', outcome({ seq: 0, d: 0.1 }));
    expect(second.store.slideSummary('slide-1')!.actions).toMatchObject({ reacquire: 1, z_offset: 2, expired: 1, pending: 1, z_offset_total_um: -1.5 });
  });

  it('drift stats per time range: slope in µm/h, out-of-focus rate, corrections', async () => {
    const { store } = await open(tempDir());
    const t0 = Date.parse('2026-01-01T10:00:00Z');
    // 0.5 µm per 6 minutes = 5 µm/h
    for (let i = 0; i <= 10; i++) store.recordTile(outcome({ seq: i, d: 0.5 * i - 1 }), t0 + i * 6 * 60_000);
    store.recordTile(outcome({ seq: 0, slide: 'late', d: 0 }), t0 + 5 * 3_600_000);
    const stats = store.driftStats(t0, t0 + 3_600_000 + 1);
    expect(stats).toHaveLength(1);
    expect(stats[0]).toMatchObject({ slide: 'slide-1', tiles: 11, with_tissue: 11, out_of_focus: 6, drift_um_per_h: 5 });
    expect(stats[0]!.mean_defocus_um).toBeCloseTo(1.5, 6);
    expect(store.driftStats(t0, t0 + 10 * 3_600_000, 'scanner-a')).toHaveLength(2);
    expect(store.driftStats(t0, t0 + 10 * 3_600_000, 'other-scanner')).toHaveLength(0);
  });

  it('deletes history older than store.historyRetentionDays', async () => {
    const { store } = await open(tempDir(), { 'store.historyRetentionDays': 2 });
    const now = Date.now();
    store.recordTile(outcome({ seq: 0, d: 0 }), now - 3 * 86_400_000);
    store.recordTile(outcome({ seq: 1, d: 0 }), now - 1 * 86_400_000);
    expect(store.prune(now)).toBe(1);
    expect(store.slideSummary('slide-1')!.tiles).toBe(1);
  });
});
