/**
 * Read-only access to the report directory for the status server (GET /reports/…): a listing and the report files
 * themselves. Only plain file names of the directory are served: anything that decodes to a path (`..`, `/`, `\`,
 * %2e%2e, %2f, an absolute path), a hidden name, another extension, or a symbolic link that leads out of the
 * directory is refused, so the status port never becomes a file server for the host.
 */
import { lstat, readdir, readFile, realpath, stat } from 'node:fs/promises';
import { join, sep } from 'node:path';

export interface FileReply {
  code: number;
  type: string;
  body: string | Buffer;
  headers?: Record<string, string>;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
};
const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const json = (code: number, error: string): FileReply => ({ code, type: 'application/json', body: JSON.stringify({ error }) });

/** `rest` is the raw (still percent-encoded) part of the URL path after "/reports/". */
export async function reportFile(dir: string, rest: string): Promise<FileReply> {
  if (rest === '') return listing(dir);
  let name: string;
  try {
    name = decodeURIComponent(rest);
  } catch {
    return json(400, 'bad percent-encoding in the report name');
  }
  const ext = name.slice(name.lastIndexOf('.'));
  if (!SAFE_NAME.test(name) || name.includes('..')) return json(400, 'a report is named by its plain file name, e.g. drift-2026-11-30.html');
  if (!TYPES[ext]) return json(404, 'only .html, .json and .md reports are served');
  const path = join(dir, name);
  try {
    if (!(await insideDir(dir, path))) return json(403, 'the report is a link out of the report directory');
    if (!(await stat(path)).isFile()) return json(404, 'not a report file');
    return { code: 200, type: TYPES[ext]!, body: await readFile(path), headers: securityHeaders(ext) };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return json(404, `no report ${name}`);
    throw err;
  }
}

/** False for a symbolic link that leads out of the directory; a link is followed only when it stays inside. */
async function insideDir(dir: string, path: string): Promise<boolean> {
  if (!(await lstat(path)).isSymbolicLink()) return true;
  const [target, root] = await Promise.all([realpath(path), realpath(dir)]);
  return target.startsWith(root + sep);
}

function securityHeaders(ext: string): Record<string, string> {
  const h: Record<string, string> = { 'x-content-type-options': 'nosniff' };
  // the HTML reports need nothing from the network: say so to the browser as well
  if (ext === '.html') h['content-security-policy'] = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";
  return h;
}

async function listing(dir: string): Promise<FileReply> {
  let names: string[] = [];
  try {
    for (const n of await readdir(dir)) {
      if (!SAFE_NAME.test(n) || !TYPES[n.slice(n.lastIndexOf('.'))]) continue;
      // links out of the directory (or broken ones) are not listed either
      if (await insideDir(dir, join(dir, n)).catch(() => false)) names.push(n);
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  names.sort((a, b) => (a === 'index.html' ? -1 : b === 'index.html' ? 1 : b.localeCompare(a)));
  const body = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>focusd reports</title></head><body>
<h1>focusd reports</h1>${names.length ? '' : '<p>No reports yet.</p>'}<ul>
${names.map((n) => `<li><a href="${esc(encodeURIComponent(n))}">${esc(n)}</a></li>`).join('\n')}
</ul></body></html>\n`;
  return { code: 200, type: 'text/html; charset=utf-8', body, headers: securityHeaders('.html') };
}
