import type { FocusdConfig } from '../../config/load.js';
import type { Context } from '../../core/context.js';
import type { Component } from '../../core/lifecycle.js';
import type { ModelManifest } from '../manifest.js';

export type EngineType = FocusdConfig['scoring']['engine']['type'];

/** A model bundle as an engine needs it: the validated manifest and the absolute path of its model file. */
export interface EngineModel {
  dir: string;
  manifest: ModelManifest;
  /** absolute path of manifest.file (model.onnx, or model.json for tfjs). */
  modelPath: string;
}

/** Raw network outputs for a batch of n patches, one value per patch, in batch order. */
export interface EngineOutputs {
  abs_um: Float32Array;
  sign_logit: Float32Array;
  log_var: Float32Array | null;
  /** with {transfer: true}: the input's ArrayBuffer, handed back for reuse. */
  returned?: ArrayBuffer;
}

export interface RunOptions {
  /**
   * Hand the input's ArrayBuffer to the engine's worker instead of copying it (input must start at offset 0 of its
   * buffer; it is detached until the outputs come back with it in `input`). Saves a 10 MB copy per batch.
   */
  transfer?: boolean;
}

export interface EngineInfo {
  /** what runs, e.g. "onnxruntime/cpu", "tfjs/wasm", "onnxruntime/cpu (fallback from cuda: ...)". */
  engine: string;
  /** device requested by config. */
  requested: string;
  /** device actually used. */
  device: string;
  /** why the requested device was not used; null when it was. */
  fallbackReason: string | null;
}

/**
 * Runs a model on batches of normalised patches. start() loads the model, picks the device (one log line says
 * which and why) and warms up; run() must keep the event loop free (native thread pool or worker thread).
 */
export interface InferenceEngine extends Component {
  /** valid after start(). */
  readonly info: EngineInfo;
  /** input: n patches in the manifest's layout, shape [n, 3, h, w] (NCHW) or [n, h, w, 3] (NHWC). */
  run(input: Float32Array, shape: number[], opts?: RunOptions): Promise<EngineOutputs>;
  /**
   * n patches of 8-bit RGB, NHWC [n, h, w, 3] (models/patches.ts PatchBytes); the engine applies the manifest's
   * normalisation and layout in its worker, so the event loop never touches floats.
   */
  runBytes(patches: Uint8Array, n: number, opts?: RunOptions): Promise<EngineOutputs>;
}

export type EngineFactory = (ctx: Context, model: EngineModel) => InferenceEngine;

/** Emits the loud fallback: warn log + 'engine:fallback' event. Shared by the engines. */
export function reportFallback(ctx: Context, requested: string, chosen: string, reason: string): void {
  ctx.logger.warn(`inference: requested device "${requested}" is not available, falling back to ${chosen}: ${reason}`, {
    requested,
    chosen,
    reason,
  });
  ctx.events.emit('engine:fallback', { requested, chosen, reason });
}

/** The ArrayBuffer to post and how many floats of it are the batch: the input's own buffer, or a copy. */
export function transferable(input: Float32Array | Uint8Array, shape: number[], opts?: RunOptions): { buf: ArrayBuffer; count: number } {
  const count = shape.reduce((a, b) => a * b, 1);
  if (count > input.length) throw new Error(`engine input: shape ${JSON.stringify(shape)} needs ${count} floats, got ${input.length}`);
  if (opts?.transfer && input.byteOffset === 0 && input.buffer instanceof ArrayBuffer) return { buf: input.buffer, count };
  return { buf: input.slice(0, count).buffer, count };
}

/** Finds the manifest's output among an engine's output names ("abs_um", "abs_um:0", "abs_um/BiasAdd", ...). */
export function matchOutput(names: readonly string[], wanted: string): string | undefined {
  return names.find((n) => n === wanted) ?? names.find((n) => n.split(/[:/]/)[0] === wanted);
}
