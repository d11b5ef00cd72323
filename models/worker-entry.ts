import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';

/**
 * Starts a worker from a module next to `from` (an import.meta.url): the .js file in dist/; the .ts file when running
 * from sources (tsx, vitest), through a small CommonJS bootstrap that registers tsx's ESM hooks in the worker first
 * (loader hooks do not carry over to workers).
 */
export function startModuleWorker(from: string, name: string, workerData: Record<string, unknown>): Worker {
  if (!from.endsWith('.ts')) return new Worker(fileURLToPath(new URL(`./${name}.js`, from)), { workerData });
  const tsxApi = createRequire(from).resolve('tsx/esm/api').replace(/\.cjs$/, '.mjs');
  const source = `const { workerData } = require('node:worker_threads');
    import(workerData.__tsxApi).then((api) => { api.register(); return import(workerData.__entry); })
      .catch((err) => { console.error(err); process.exit(1); });`;
  return new Worker(source, {
    eval: true,
    workerData: { ...workerData, __entry: new URL(`./${name}.ts`, from).href, __tsxApi: pathToFileURL(tsxApi).href },
  });
}
