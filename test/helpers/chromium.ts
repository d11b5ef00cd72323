// Headless Chromium (Debian package `chromium`) driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
// NUL-terminated JSON on fds 3/4), so no WebSocket client or browser download is needed. Used by the HTML report
// tests to open a page as a reader would and record console errors, network requests and a screenshot.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';

/** The chromium binary, or an error that names the package to install. Never a silent skip. */
export function chromiumBinary(): string {
  const candidates = [process.env.CHROMIUM_BIN, 'chromium', 'chromium-browser'].filter((c): c is string => !!c);
  for (const c of candidates) {
    const r = spawnSync(c, ['--version'], { encoding: 'utf8' });
    if (r.status === 0 && /chromium/i.test(r.stdout)) return c;
  }
  throw new Error(
    'headless Chromium not found: the HTML report tests need Debian\'s "chromium" package (apt-get install -y chromium), or CHROMIUM_BIN pointing at a Chromium binary',
  );
}

export interface PageVisit {
  /** console errors, uncaught exceptions and browser log errors (CSP violations among them). */
  errors: string[];
  /** every URL requested other than the page itself. */
  requests: string[];
  evaluate<T>(expression: string): Promise<T>;
  /** PNG of the page from the top, up to maxHeight CSS pixels (default: the whole page). */
  screenshot(maxHeight?: number): Promise<Buffer>;
  close(): Promise<void>;
}

interface Message {
  id?: number;
  method?: string;
  params?: Record<string, unknown>;
  result?: Record<string, unknown>;
  error?: { message: string };
  sessionId?: string;
}

/** Opens `url` in a fresh headless Chromium profile and waits for the load event. */
export async function openPage(url: string, opts: { width?: number; height?: number; timeoutMs?: number } = {}): Promise<PageVisit> {
  const bin = chromiumBinary();
  const profile = mkdtempSync(join(tmpdir(), 'focusd-chromium-'));
  const proc: ChildProcess = spawn(
    bin,
    [
      '--headless',
      '--no-sandbox', // tests run as root in containers
      '--disable-gpu',
      '--no-first-run',
      '--disable-extensions',
      '--disable-background-networking',
      '--disable-sync',
      '--remote-debugging-pipe',
      `--user-data-dir=${profile}`,
      `--window-size=${opts.width ?? 1200},${opts.height ?? 900}`,
      'about:blank',
    ],
    { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const out = proc.stdio[3] as Writable;
  const inp = proc.stdio[4] as Readable;
  const pending = new Map<number, { res: (r: Record<string, unknown>) => void; rej: (e: Error) => void }>();
  const listeners: ((m: Message) => void)[] = [];
  let buf = '';
  inp.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    let i: number;
    while ((i = buf.indexOf('\0')) >= 0) {
      const m = JSON.parse(buf.slice(0, i)) as Message;
      buf = buf.slice(i + 1);
      if (m.id !== undefined) {
        const p = pending.get(m.id);
        pending.delete(m.id);
        if (m.error) p?.rej(new Error(m.error.message));
        else p?.res(m.result ?? {});
      } else for (const l of listeners) l(m);
    }
  });
  const exited = new Promise<void>((res) => proc.once('exit', () => res()));
  proc.once('exit', (code) => {
    for (const p of pending.values()) p.rej(new Error(`chromium exited (${code}): ${stderr}`));
    pending.clear();
  });
  let next = 0;
  const send = (method: string, params: Record<string, unknown> = {}, sessionId?: string) =>
    new Promise<Record<string, unknown>>((res, rej) => {
      const id = ++next;
      pending.set(id, { res, rej });
      out.write(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }) + '\0');
    });

  const errors: string[] = [];
  const requests: string[] = [];
  const { targetId } = (await send('Target.createTarget', { url: 'about:blank' })) as { targetId: string };
  const { sessionId } = (await send('Target.attachToTarget', { targetId, flatten: true })) as { sessionId: string };
  const s = (method: string, params: Record<string, unknown> = {}) => send(method, params, sessionId);
  let loaded: () => void = () => undefined;
  const load = new Promise<void>((res) => (loaded = res));
  listeners.push((m) => {
    if (m.sessionId !== sessionId || !m.params) return;
    const p = m.params as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
    if (m.method === 'Runtime.consoleAPICalled' && (p.type === 'error' || p.type === 'assert'))
      errors.push(`console.${p.type}: ${(p.args as { value?: unknown; description?: string }[]).map((a) => a.value ?? a.description).join(' ')}`);
    if (m.method === 'Runtime.exceptionThrown') errors.push(`exception: ${p.exceptionDetails?.exception?.description ?? p.exceptionDetails?.text}`);
    if (m.method === 'Log.entryAdded' && p.entry?.level === 'error') errors.push(`log: ${p.entry.text} ${p.entry.url ?? ''}`);
    if (m.method === 'Network.requestWillBeSent' && p.request?.url !== url) requests.push(p.request.url as string);
    if (m.method === 'Page.loadEventFired') loaded();
  });
  await Promise.all([s('Page.enable'), s('Runtime.enable'), s('Log.enable'), s('Network.enable')]);
  await s('Emulation.setDeviceMetricsOverride', { width: opts.width ?? 1200, height: opts.height ?? 900, deviceScaleFactor: 1, mobile: false });
  const nav = (await s('Page.navigate', { url })) as { errorText?: string };
  if (nav.errorText) throw new Error(`chromium could not open ${url}: ${nav.errorText}`);
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    load,
    new Promise((_, rej) => (timer = setTimeout(() => rej(new Error(`${url} did not load within ${opts.timeoutMs ?? 20_000} ms`)), opts.timeoutMs ?? 20_000))),
  ]).finally(() => clearTimeout(timer));

  return {
    errors,
    requests,
    async evaluate<T>(expression: string): Promise<T> {
      const r = (await s('Runtime.evaluate', { expression, returnByValue: true })) as { result: { value: T }; exceptionDetails?: { text: string } };
      if (r.exceptionDetails) throw new Error(`evaluate failed: ${r.exceptionDetails.text}`);
      return r.result.value;
    },
    async screenshot(maxHeight = Infinity): Promise<Buffer> {
      const m = (await s('Page.getLayoutMetrics')) as { cssContentSize: { width: number; height: number } };
      const clip = { x: 0, y: 0, width: m.cssContentSize.width, height: Math.min(m.cssContentSize.height, maxHeight), scale: 1 };
      const r = (await s('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true, clip })) as { data: string };
      return Buffer.from(r.data, 'base64');
    },
    async close(): Promise<void> {
      await send('Browser.close').catch(() => undefined);
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
