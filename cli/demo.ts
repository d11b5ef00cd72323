import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';
import { loadConfig } from '../config/load.js';
import { Daemon } from '../daemon/daemon.js';
import { createLogger } from '../core/logger.js';
import type { TileHeader } from '../core/types.js';
import { encodePng, synthTile, type SynthKind } from '../sim/procedural.js';
import { DefocusOptics } from '../imaging/optics.js';
import { freePort } from '../core/net.js';
import { TileSender } from '../sim/replay.js';

interface DemoTile {
  row: number;
  col: number;
  kind: SynthKind;
  defocusUm: number;
  note: string;
}

/**
 * The sample scan: a 4x5 grid of one slide. Mostly in focus, two isolated blurred tiles (one above, one below
 * focus), glass and dust at the corners, a tissue rim, and a last row that drifts out of focus (z_offset).
 */
export function sampleScan(): DemoTile[] {
  const tiles: DemoTile[] = [];
  const special: Record<string, Omit<DemoTile, 'row' | 'col'>> = {
    '0,0': { kind: 'glass', defocusUm: 0, note: 'empty glass' },
    '0,4': { kind: 'dust', defocusUm: 0, note: 'glass with dust' },
    '1,2': { kind: 'tissue', defocusUm: 3, note: 'isolated blur, +3 µm' },
    '2,0': { kind: 'rim', defocusUm: 2.5, note: 'tissue rim only (blurred, but no tissue to judge)' },
    '2,3': { kind: 'pale', defocusUm: -2.5, note: 'pale (PAS-like) stain, −2.5 µm' },
    '3,1': { kind: 'tissue', defocusUm: 1.8, note: 'drift begins' },
    '3,2': { kind: 'tissue', defocusUm: 2.1, note: 'drift' },
    '3,3': { kind: 'tissue', defocusUm: 2.4, note: 'drift' },
    '3,4': { kind: 'tissue', defocusUm: 2.6, note: 'drift' },
  };
  for (let row = 0; row < 4; row++)
    for (let col = 0; col < 5; col++) {
      const s = special[`${row},${col}`];
      // in-focus tiles still scatter a little around the focal plane, as on a real scanner
      tiles.push({ row, col, ...(s ?? { kind: 'tissue', defocusUm: ((row * 5 + col) % 5) * 0.15 - 0.3, note: 'in focus' }) });
    }
  return tiles;
}

const fmtUm = (v: number | null | undefined) => (v === null || v === undefined ? '    –   ' : `${v >= 0 ? '+' : ''}${v.toFixed(2)} µm`);

/** `focusd demo`: daemon on the embedded broker, a generated sample scan sent over ZeroMQ, verdicts as they arrive. */
export async function demoMain(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      scorer: { type: 'string', default: 'cnn' },
      // smaller than a real 1600x1200 tile so the demo's image generation takes seconds, not a minute
      width: { type: 'string', default: '800' },
      height: { type: 'string', default: '600' },
      'keep-state': { type: 'boolean', default: false },
    },
  });
  const out = (s: string) => process.stdout.write(s + '\n');
  const width = Number(values.width);
  const height = Number(values.height);
  const stateDir = mkdtempSync(join(tmpdir(), 'focusd-demo-'));
  const [mqttPort, zmqPort] = [await freePort(), await freePort()];
  const config = loadConfig({
    env: {},
    overrides: {
      'scanner.id': 'demo-scanner',
      'log.level': 'warn',
      'log.format': 'pretty',
      'mqtt.url': 'embedded',
      'mqtt.embedded.port': mqttPort,
      'mqtt.statsIntervalS': 0,
      'ingest.endpoint': `tcp://127.0.0.1:${zmqPort}`,
      'ingest.pattern': 'router',
      'scoring.scorer': values.scorer,
      'store.dir': stateDir,
      'reports.schedule': '',
    },
  });
  const logger = createLogger({ level: 'warn', format: 'pretty', stream: process.stderr });
  const daemon = new Daemon(config, { logger, env: {} });
  const base = config.resolved.baseTopic;

  out(`focusd demo — generating a ${width}x${height} sample scan (4x5 tiles, procedural tissue, focusd's optics model)`);
  const optics = new DefocusOptics();
  const scan = sampleScan();
  const t0 = performance.now();
  const payloads = await Promise.all(
    scan.map((t, i) => encodePng(synthTile({ width, height, seed: 1000 + i, kind: t.kind, defocusUm: t.defocusUm, pixelSizeUm: 0.22 }, optics))),
  );
  out(`generated ${scan.length} PNG tiles in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  await daemon.start();
  out(`daemon ready: ZeroMQ router ${daemon.ingestEndpoint}, embedded MQTT broker mqtt://127.0.0.1:${mqttPort}, topics ${base}/#`);
  out(`scorer: ${String(daemon.status().engine)} — model ${JSON.stringify(daemon.status().model)}`);

  const sub = await mqtt.connectAsync(`mqtt://127.0.0.1:${mqttPort}`, { clientId: 'focusd-demo-viewer', protocolVersion: 4 });
  const actions: Array<Record<string, unknown>> = [];
  const tilesSeen: Array<Record<string, unknown>> = [];
  sub.on('message', (topic, payload) => {
    const m = JSON.parse(payload.toString()) as Record<string, any>;
    const kind = topic.slice(base.length + 1);
    if (kind === 'tile') {
      tilesSeen.push(m);
      const t = scan.find((s) => s.row === m.tile.row && s.col === m.tile.col)!;
      out(
        `  tile r${m.tile.row}c${m.tile.col} seq ${String(m.seq).padStart(2)}  ${String(m.verdict).padEnd(12)} ${fmtUm(m.defocus_um).padStart(9)}` +
          `  tissue ${(m.tissue_fraction * 100).toFixed(0).padStart(3)} %  ${String(m.latency_ms.toFixed(0)).padStart(4)} ms   truth: ${t.note}${t.kind === 'tissue' || t.kind === 'pale' ? ` (${fmtUm(t.defocusUm).trim()})` : ''}`,
      );
    } else if (kind === 'action') {
      actions.push(m);
      out(`  ▶ ACTION ${m.type} for tile r${m.tile.row}c${m.tile.col}: z_offset ${fmtUm(m.z_offset_um).trim()}${m.dry_run ? ' [dry run]' : ''} — ${m.reason}`);
    } else if (kind === 'error') {
      out(`  ✖ error ${m.reason}: ${m.detail}`);
    }
  });
  await sub.subscribeAsync([`${base}/tile`, `${base}/action`, `${base}/error`], { qos: 1 });

  const sender = new TileSender({ endpoint: daemon.ingestEndpoint, pattern: 'req', timeoutMs: 30_000 });
  sender.connect();
  const sendStart = performance.now();
  let code = 0;
  try {
    for (const [i, t] of scan.entries()) {
      const header: TileHeader = {
        v: 1,
        scanner: 'demo-scanner',
        slide: 'demo-slide-001',
        scan: 'demo-scan-1',
        seq: i,
        tile: { index: i, row: t.row, col: t.col },
        stage_um: { x: 10_000 + t.col * width * 0.22, y: 20_000 + t.row * height * 0.22, z: 1500 },
        pixel_size_um: 0.22,
        objective: 'Plan-Apochromat 20x/0.8',
        acquired_at: new Date().toISOString(),
        attempt: 0,
        format: 'png',
      };
      const reply = await sender.send(header, payloads[i]!);
      if (!reply?.ok) {
        out(`  tile ${i} not scored: ${reply ? `${reply.reason}: ${reply.detail}` : 'no reply'}`);
        code = 1;
      }
    }
    const elapsed = (performance.now() - sendStart) / 1000;
    // the last MQTT messages may trail the last reply by a few milliseconds
    for (let i = 0; i < 50 && tilesSeen.length < scan.length; i++) await new Promise((r) => setTimeout(r, 20));
    // actions follow their tile message through the controller and the outbox (written, then published)
    await new Promise((r) => setTimeout(r, 300));
    const by = (v: string) => tilesSeen.filter((m) => m.verdict === v).length;
    out('');
    out(`summary: ${tilesSeen.length} tiles — ${by('in_focus')} in focus, ${by('out_of_focus')} out of focus, ${by('no_tissue')} no tissue; ${actions.length} actions`);
    out(`pipeline: ${(scan.length / elapsed).toFixed(1)} tiles/s over ZeroMQ (PNG ${width}x${height}, one REQ at a time, decode + score + publish)`);
  } catch (err) {
    out(`demo failed: ${(err as Error).message}`);
    code = 1;
  } finally {
    await sender.close();
    await sub.endAsync();
    await daemon.stop('demo finished');
    if (!values['keep-state']) rmSync(stateDir, { recursive: true, force: true });
    else out(`state (history SQLite) kept in ${stateDir}`);
  }
  return code;
}
