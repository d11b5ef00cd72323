import { request } from 'node:http';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { HttpStatus } from '../../adapters/http.js';
import { freePort } from '../helpers/net.js';
import { makeCtx, tempDir } from '../helpers/mqtt-side.js';

const servers: HttpStatus[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});

/** GET with the path sent byte for byte (fetch() would normalise "/reports/../" before sending). */
function get(port: number, path: string): Promise<{ code: number; type: string; body: string; headers: Record<string, unknown> }> {
  return new Promise((res, rej) => {
    const req = request({ host: '127.0.0.1', port, path, method: 'GET' }, (r) => {
      let body = '';
      r.on('data', (d: Buffer) => (body += d.toString()));
      r.on('end', () => res({ code: r.statusCode!, type: String(r.headers['content-type']), body, headers: r.headers }));
    });
    req.on('error', rej);
    req.end();
  });
}

async function serve(overrides: Record<string, unknown> = {}) {
  const root = tempDir('focusd-http-reports-');
  const dir = join(root, 'reports');
  mkdirSync(dir);
  writeFileSync(join(dir, 'drift-2026-11-29.html'), '<!doctype html><title>29</title>');
  writeFileSync(join(dir, 'drift-2026-11-30.html'), '<!doctype html><title>30</title>');
  writeFileSync(join(dir, 'drift-2026-11-30.json'), '{"schema":1}');
  writeFileSync(join(dir, 'index.html'), '<!doctype html><title>index</title>');
  writeFileSync(join(dir, '.hidden.html'), 'hidden');
  writeFileSync(join(root, 'secret.json'), '{"secret":true}');
  symlinkSync(join(root, 'secret.json'), join(dir, 'leak.json'));
  symlinkSync(join(dir, 'drift-2026-11-30.json'), join(dir, 'latest.json'));
  const port = await freePort();
  const ctx = makeCtx({ 'http.port': port, 'http.host': '127.0.0.1', 'reports.dir': dir, ...overrides });
  const s = new HttpStatus(ctx, { status: () => ({}), ready: () => true, health: () => ({ ok: true, reasons: [] }) });
  await s.start();
  servers.push(s);
  return { port, dir, ctx };
}

describe('status server start', () => {
  it('a port in use or a host that does not resolve fails naming http.host and http.port', async () => {
    const { port } = await serve();
    for (const [host, p, re] of [['127.0.0.1', port, /EADDRINUSE/], ['no-such-host.invalid', await freePort(), /ENOTFOUND|EAI_AGAIN/]] as const) {
      const ctx = makeCtx({ 'http.port': p, 'http.host': host });
      const s = new HttpStatus(ctx, { status: () => ({}), ready: () => true, health: () => ({ ok: true, reasons: [] }) });
      const err = await s.start().then(() => null, (e: Error) => e);
      expect(err?.message).toMatch(new RegExp(`cannot listen on ${host}:${p} \\(http\\.host, http\\.port\\)`));
      expect(err?.message).toMatch(re);
    }
  });
});

describe('status server /reports/', () => {
  it('lists the reports (index first, then newest first) and serves them read-only with their content types', async () => {
    const { port } = await serve();
    const list = await get(port, '/reports/');
    expect(list.code).toBe(200);
    const links = [...list.body.matchAll(/href="([^"]+)"/g)].map((m) => m[1]);
    // leak.json (a link out of the directory) and .hidden.html are not listed
    expect(links).toEqual(['index.html', 'latest.json', 'drift-2026-11-30.json', 'drift-2026-11-30.html', 'drift-2026-11-29.html']);
    const page = await get(port, '/reports/drift-2026-11-30.html');
    expect(page.code).toBe(200);
    expect(page.type).toBe('text/html; charset=utf-8');
    expect(page.body).toContain('<title>30</title>');
    expect(page.headers['content-security-policy']).toMatch(/default-src 'none'/);
    const json = await get(port, '/reports/drift-2026-11-30.json');
    expect(json.type).toMatch(/^application\/json/);
    expect(JSON.parse(json.body)).toEqual({ schema: 1 });
    // a link that stays inside the directory is followed
    expect((await get(port, '/reports/latest.json')).code).toBe(200);
    expect((await get(port, '/reports')).code).toBe(301);
    expect((await get(port, '/reports/drift-2026-01-01.html')).code).toBe(404);
  });

  it('refuses path traversal, encoded or not, absolute paths, hidden files and links out of the directory', async () => {
    const { port } = await serve();
    for (const p of [
      '/reports/../',
      '/reports/../status',
      '/reports/..%2fsecret.json',
      '/reports/%2e%2e/secret.json',
      '/reports/%2e%2e%2fsecret.json',
      '/reports/%2E%2E',
      '/reports/..',
      '/reports//etc/passwd',
      '/reports/%2fetc%2fpasswd',
      '/reports/..\\secret.json',
      '/reports/.hidden.html',
      '/reports/%ZZ',
    ]) {
      const r = await get(port, p);
      expect(r.code, p).toBe(400);
      expect(r.body, p).not.toContain('secret');
    }
    const leak = await get(port, '/reports/leak.json');
    expect(leak.code).toBe(403);
    expect(leak.body).not.toContain('"secret":true');
    expect((await get(port, '/reports/secret.sh')).code).toBe(404);
    // and nothing but GET
    expect(await new Promise((res) => request({ host: '127.0.0.1', port, path: '/reports/index.html', method: 'PUT' }, (r) => res(r.statusCode)).end())).toBe(405);
  });

  it('is off with reports.serveHttp = false', async () => {
    const { port } = await serve({ 'reports.serveHttp': false });
    expect((await get(port, '/reports/index.html')).code).toBe(404);
  });
});
