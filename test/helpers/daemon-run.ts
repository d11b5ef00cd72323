// The forked `focusd run` for tests that need the whole daemon (access control, health, fuzz): unique scanner id and
// base topic, a free ingest port, an HTTP status port, a temp state directory, and two generated scan tiles.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TileHeader } from '../../core/types.js';
import { encodePng, synthTile } from '../../sim/procedural.js';
import { freePort, uniqueId } from './net.js';
import { spawnFocusd, type FocusdProcess } from './proc.js';

export interface RunningDaemon {
  proc: FocusdProcess;
  id: string;
  base: string;
  endpoint: string;
  http: string;
  env: Record<string, string>;
}

/** Starts `focusd run` (router pattern) and waits for READY. `env` wins over the defaults here. */
export async function startDaemon(env: Record<string, string>, id = uniqueId('daemon')): Promise<RunningDaemon> {
  const port = await freePort();
  const httpPort = await freePort();
  const all = {
    FOCUSD_SCANNER_ID: id,
    FOCUSD_INGEST_ENDPOINT: `tcp://127.0.0.1:${port}`,
    FOCUSD_INGEST_PATTERN: 'router',
    FOCUSD_STATE_DIR: mkdtempSync(join(tmpdir(), 'focusd-daemon-')),
    FOCUSD_REPORT_SCHEDULE: '',
    FOCUSD_HTTP_PORT: String(httpPort),
    ...env,
  };
  const proc = spawnFocusd(['run'], all);
  await proc.waitForLine((l) => typeof l.message === 'string' && l.message.startsWith('focusd ready'), 60_000);
  return { proc, id, base: `focusd/${id}`, endpoint: all.FOCUSD_INGEST_ENDPOINT, http: `http://127.0.0.1:${httpPort}`, env: all };
}

/** SIGTERM and wait for the exit code. */
export async function stopDaemon(d: RunningDaemon): Promise<number | null> {
  if (d.proc.child.exitCode !== null) return d.proc.child.exitCode;
  d.proc.child.kill('SIGTERM');
  return (await d.proc.exited).code;
}

let tiles: Promise<{ inFocus: Buffer; blurred: Buffer }> | null = null;

/** A sharp and a 3.5 µm defocused 640×480 tissue tile (PNG), generated once per test file. */
export function scanTiles(): Promise<{ inFocus: Buffer; blurred: Buffer }> {
  tiles ??= (async () => ({
    inFocus: await encodePng(synthTile({ width: 640, height: 480, seed: 11, kind: 'tissue', defocusUm: 0 })),
    blurred: await encodePng(synthTile({ width: 640, height: 480, seed: 12, kind: 'tissue', defocusUm: 3.5 })),
  }))();
  return tiles;
}

export function tileHeader(seq: number, scanner: string, slide = 'slide-1'): TileHeader {
  return {
    v: 1, scanner, slide, scan: 'scan-1', seq,
    tile: { index: seq, row: Math.floor(seq / 10), col: seq % 10 },
    stage_um: { x: 1000 + (seq % 10) * 140, y: 2000 + Math.floor(seq / 10) * 105, z: 1500 },
    pixel_size_um: 0.22, objective: '20x/0.8', acquired_at: new Date().toISOString(), attempt: 0, format: 'png',
  };
}

/** GET a JSON endpoint of the daemon's HTTP status server. */
export async function getJson(url: string): Promise<{ code: number; body: Record<string, any> }> {
  const r = await fetch(url);
  return { code: r.status, body: (await r.json()) as Record<string, any> };
}
