import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const FOCUSD_BIN = fileURLToPath(new URL('../../bin/focusd.js', import.meta.url));

export interface FocusdProcess {
  child: ChildProcess;
  /** parsed JSON log lines so far (non-JSON lines kept as {raw}). */
  lines: Array<Record<string, unknown>>;
  stderr: string[];
  waitForLine(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts the real executable (bin/focusd.js → dist/) with JSON logs. */
export function spawnFocusd(args: string[], env: Record<string, string> = {}): FocusdProcess {
  const child = spawn(process.execPath, [FOCUSD_BIN, ...args], {
    cwd: ROOT,
    env: { ...process.env, FOCUSD_LOG_FORMAT: 'json', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Array<Record<string, unknown>> = [];
  const stderr: string[] = [];
  const waiters: Array<{ pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }> = [];
  let buf = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const raw = buf.slice(0, i);
      buf = buf.slice(i + 1);
      let l: Record<string, unknown>;
      try {
        l = JSON.parse(raw);
      } catch {
        l = { raw };
      }
      lines.push(l);
      for (const w of [...waiters]) if (w.pred(l)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(l);
      }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (c: string) => stderr.push(c));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.on('exit', (code, signal) => r({ code, signal })),
  );
  return {
    child,
    lines,
    stderr,
    exited,
    waitForLine(pred, timeoutMs = 30_000) {
      const found = lines.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const t = setTimeout(
          () => reject(new Error(`timeout waiting for log line; last lines:\n${lines.slice(-15).map((l) => JSON.stringify(l)).join('\n')}\nstderr: ${stderr.join('')}`)),
          timeoutMs,
        );
        const w = { pred, resolve: (l: Record<string, unknown>) => (clearTimeout(t), resolve(l)) };
        waiters.push(w);
        void exited.then(() => {
          if (waiters.includes(w)) {
            clearTimeout(t);
            reject(new Error(`focusd exited before the log line appeared; stderr: ${stderr.join('')}\n${lines.slice(-15).map((l) => JSON.stringify(l)).join('\n')}`));
          }
        });
      });
    },
  };
}

/** Runs the executable to completion. */
export function runFocusd(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [FOCUSD_BIN, ...args], { cwd: ROOT, env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}
