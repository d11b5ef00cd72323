// The layering of docs/architecture.md, read from the sources: an import that runs upwards fails here.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/proc.js';

/** top folder → the top folders it must never import from. */
const FORBIDDEN: Record<string, readonly string[]> = {
  config: ['core', 'daemon', 'cli', 'adapters', 'models', 'imaging', 'protocol', 'sim', 'bench', 'scripts'],
  core: ['daemon', 'cli', 'adapters', 'models', 'imaging', 'protocol', 'sim', 'bench', 'scripts'],
  adapters: ['daemon', 'cli', 'sim', 'bench', 'scripts'],
  models: ['daemon', 'cli', 'sim', 'bench', 'scripts'],
  imaging: ['daemon', 'cli', 'sim', 'bench', 'scripts'],
  protocol: ['daemon', 'cli', 'sim', 'bench', 'scripts'],
  sim: ['daemon', 'cli', 'bench', 'scripts'],
  daemon: ['cli', 'bench', 'scripts'],
};

const SPECIFIER = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"](\.{1,2}\/[^'"]*)['"]/g;

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return /\.(ts|mts|js|mjs)$/.test(e.name) ? [p] : [];
  });
}

/** Every relative import of `file` as [specifier, top folder it lands in]. */
export function importsOf(file: string, text: string): [string, string][] {
  const out: [string, string][] = [];
  for (const m of text.matchAll(SPECIFIER)) {
    const target = relative(ROOT, resolve(dirname(file), m[1]!));
    out.push([m[1]!, target.split(/[\\/]/)[0]!]);
  }
  return out;
}

export function violations(root: string): string[] {
  const found: string[] = [];
  for (const [top, banned] of Object.entries(FORBIDDEN)) {
    for (const file of sources(join(root, top))) {
      for (const [spec, lands] of importsOf(file, readFileSync(file, 'utf8'))) {
        if (banned.includes(lands)) found.push(`${relative(root, file)} imports ${spec} (${top}/ must not import ${lands}/)`);
      }
    }
  }
  return found;
}

describe('import direction (docs/architecture.md)', () => {
  it('no file imports upwards', () => {
    expect(violations(ROOT)).toEqual([]);
  });

  it('the checker sees a violation: an adapter importing the daemon, a static and a dynamic one', () => {
    const file = join(ROOT, 'adapters', 'x.ts');
    const text = `import { Daemon } from '../daemon/daemon.js';\nconst m = await import('../cli/main.js');\nimport type { Context } from '../core/context.js';`;
    expect(importsOf(file, text)).toEqual([
      ['../daemon/daemon.js', 'daemon'],
      ['../cli/main.js', 'cli'],
      ['../core/context.js', 'core'],
    ]);
    expect(FORBIDDEN.adapters).toContain('daemon');
    expect(FORBIDDEN.adapters).toContain('cli');
    expect(FORBIDDEN.adapters).not.toContain('core');
  });

  it('every top folder with sources is covered by a rule or is a top layer', () => {
    const tops = readdirSync(ROOT, { withFileTypes: true })
      .filter((e) => e.isDirectory() && !['node_modules', 'dist', 'test', 'docs', 'systemd', 'bin', '.git', '.ci', 'var', '.devdata', 'coverage'].includes(e.name))
      .filter((e) => sources(join(ROOT, e.name)).some((f) => !f.includes(`${join('models', 'training')}`)))
      .map((e) => e.name);
    const topLayers = ['cli', 'bench', 'scripts'];
    expect(tops.filter((t) => !(t in FORBIDDEN) && !topLayers.includes(t))).toEqual([]);
  });
});
