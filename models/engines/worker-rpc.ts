/**
 * Request/response over a worker_thread whose source is an eval'd CommonJS string (so the same code runs from the
 * TypeScript sources under tsx/vitest and from dist/). Engines keep their model in such a worker because both
 * onnxruntime-node's run() (a synchronous native call wrapped in setImmediate, measured: it blocks the loop for the
 * whole inference) and tfjs-wasm compute on the calling thread.
 *
 * Protocol: the worker answers every {id, ...} message with {id, ok, result | error}.
 */
import { Worker } from 'node:worker_threads';
import type { Logger } from '../../core/logger.js';

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

export class WorkerRpc {
  private worker: Worker | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;

  constructor(private readonly label: string, private readonly logger: Logger) {}

  start(source: string, workerData: unknown): void {
    const w = new Worker(source, { eval: true, workerData });
    this.worker = w;
    w.on('message', (msg: { id: number; ok: boolean; result?: unknown; error?: string }) => {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new Error(`${this.label}: ${msg.error}`));
    });
    w.on('error', (err) => {
      this.logger.error(`${this.label} crashed`, { error: err.stack ?? String(err) });
      this.failAll(err);
    });
    w.on('exit', (code) => {
      if (this.worker === w) {
        this.worker = null;
        this.failAll(new Error(`${this.label} exited with code ${code}`));
      }
    });
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  call<T>(msg: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<T> {
    const w = this.worker;
    if (!w) return Promise.reject(new Error(`${this.label}: not running`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      w.postMessage({ ...msg, id }, transfer);
    });
  }

  async stop(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
    this.failAll(new Error(`${this.label} stopped`));
  }
}
