/**
 * Worker thread of the classical scorer: tissue detection, patch extraction and the band-ratio features of a
 * 1600x1200 tile take tens of ms of pure JS, too long for the event loop that serves ZeroMQ and MQTT.
 * Protocol: {id, rgb: ArrayBuffer, width, height, pixelSizeUm} → {id, ok, result: ClassicalWorkResult | error}.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { ClassicalCalibration } from './classical.js';
import { classicalBuffers, classicalFeatures, classicalInput, estimateAbsUm } from './classical.js';
import type { TissueParams } from '../imaging/tissue.js';
import type { PatchOptions } from './patches.js';

export interface ClassicalWorkerData {
  cal: ClassicalCalibration;
  tissue: TissueParams;
  patches: PatchOptions;
}

export interface ClassicalWorkResult {
  tissueFraction: number;
  rows: number;
  cols: number;
  estimates: Array<{ row: number; col: number; abs_um: number }>;
}

const data = workerData as ClassicalWorkerData;
const input = classicalInput(data.cal.pixel_size_um, data.cal.patch_px);
const bufs = classicalBuffers(input);

parentPort!.on('message', (msg: { id: number; rgb: ArrayBuffer; width: number; height: number; pixelSizeUm: number }) => {
  try {
    const f = classicalFeatures(
      { rgb: Buffer.from(msg.rgb), width: msg.width, height: msg.height, pixelSizeUm: msg.pixelSizeUm },
      { tissue: data.tissue, patches: data.patches },
      input,
      bufs,
    );
    const result: ClassicalWorkResult = {
      tissueFraction: f.tissueFraction,
      rows: f.rows,
      cols: f.cols,
      estimates: f.patches.map((p) => ({ row: p.row, col: p.col, abs_um: estimateAbsUm(data.cal, p.r) })),
    };
    parentPort!.postMessage({ id: msg.id, ok: true, result });
  } catch (err) {
    // a coded error (TileTooSmallError) is the sender's to fix: its reason and plain message cross the thread
    const reason = (err as { reason?: string }).reason;
    parentPort!.postMessage({ id: msg.id, ok: false, error: reason ? (err as Error).message : (err as Error).stack ?? String(err), reason });
  }
});
