// The `focusd` executable's offline commands, run as a user would.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { encodePng, synthTile } from '../../sim/procedural.js';
import { runFocusd } from '../helpers/proc.js';

const dir = mkdtempSync(join(tmpdir(), 'focusd-cli-'));
const files = { sharp: join(dir, 'sharp.png'), blurred: join(dir, 'blurred.png'), glass: join(dir, 'glass.png'), missing: join(dir, 'missing.png'), notImage: join(dir, 'notes.png') };

beforeAll(async () => {
  writeFileSync(files.sharp, await encodePng(synthTile({ width: 960, height: 720, seed: 31, kind: 'tissue', defocusUm: 0 })));
  writeFileSync(files.blurred, await encodePng(synthTile({ width: 960, height: 720, seed: 32, kind: 'tissue', defocusUm: 4 })));
  writeFileSync(files.glass, await encodePng(synthTile({ width: 960, height: 720, seed: 33, kind: 'glass', defocusUm: 0 })));
  writeFileSync(files.notImage, 'this is not a PNG');
});

describe('focusd score', () => {
  it('prints one JSON line per file, in order, with the shipped model; a bad file gets an error line and exit 1', async () => {
    const r = await runFocusd(['score', files.sharp, files.blurred, files.glass, files.missing, files.notImage]);
    expect(r.code, r.stderr).toBe(1);
    const rows = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, any>);
    expect(rows.map((x) => x.file)).toEqual([files.sharp, files.blurred, files.glass, files.missing, files.notImage]);
    expect(rows[0]).toMatchObject({ verdict: 'in_focus', model: expect.stringMatching(/^focusd-defocus@/) });
    expect(Math.abs(rows[0]!.defocus_um)).toBeLessThanOrEqual(1);
    expect(rows[1]!.verdict).toBe('out_of_focus');
    expect(Math.abs(rows[1]!.defocus_um)).toBeGreaterThan(2);
    expect(rows[2]).toMatchObject({ verdict: 'no_tissue', defocus_um: null });
    expect(rows[2]!.tissue_fraction).toBeLessThan(0.05);
    expect(rows[3]!.error).toMatch(/ENOENT|no such file/);
    expect(rows[4]!.error).toBeTruthy();
    for (const row of rows.slice(0, 3)) expect(row.tissue_fraction).toBeTypeOf('number');
  });

  it('writes CSV with a header row; the classical scorer needs no model', async () => {
    const r = await runFocusd(['score', '--format', 'csv', '--scorer', 'classical', files.blurred, files.glass]);
    expect(r.code, r.stderr).toBe(0);
    const [head, blurred, glass] = r.stdout.trim().split('\n');
    expect(head).toBe('file,defocus_um,verdict,tissue_fraction,uncertainty_um,sign_confidence,patches,model,error');
    expect(blurred!.split(',')[2]).toBe('out_of_focus');
    expect(glass!.split(',').slice(1, 3)).toEqual(['', 'no_tissue']);
  });

  it('--format jsonl (the documented name) and json give the same JSON lines', async () => {
    const a = await runFocusd(['score', '--format', 'jsonl', '--scorer', 'classical', files.blurred]);
    const b = await runFocusd(['score', '--format', 'json', '--scorer', 'classical', files.blurred]);
    expect(a.code, a.stderr).toBe(0);
    expect(JSON.parse(a.stdout.trim())).toMatchObject({ file: files.blurred, verdict: 'out_of_focus' });
    expect(a.stdout).toBe(b.stdout);
  });

  it('rejects bad usage with exit 64', async () => {
    expect((await runFocusd(['score'])).code).toBe(64);
    expect((await runFocusd(['score', '--format', 'xml', files.sharp])).code).toBe(64);
    expect((await runFocusd(['nonsense'])).code).toBe(64);
    // checked before the scorer starts: this used to print the message and then hang on the scorer's worker
    for (const px of ['abc', '0', '-1', 'Infinity']) {
      const r = await runFocusd(['score', '--pixel-size', px, files.sharp]);
      expect(r.code, px).toBe(64);
      expect(r.stderr).toContain('--pixel-size');
    }
  });

  it('a directory gets an error line that says so', async () => {
    const r = await runFocusd(['score', '--scorer', 'classical', join(files.sharp, '..')]);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout.trim()).error).toMatch(/is a directory/);
  });
});

describe('usage of every command', () => {
  it('--help prints usage and exits 0; an unknown option or a stray argument is a short message and exit 64, never a stack trace', async () => {
    for (const cmd of [['run'], ['demo'], ['check-config'], ['score'], ['replay'], ['simulate'], ['calibrate'], ['report']]) {
      const help = await runFocusd([...cmd, '--help']);
      expect(help.code, cmd.join(' ')).toBe(0);
      expect(help.stdout, cmd.join(' ')).toMatch(/^usage: focusd /);
    }
    for (const args of [['check-config', '--bogus'], ['check-config', 'config/development.yaml'], ['demo', '--bogus']]) {
      const r = await runFocusd(args);
      expect(r.code, args.join(' ')).toBe(64);
      expect(r.stderr, args.join(' ')).not.toMatch(/\n\s+at /);
    }
    expect((await runFocusd(['check-config', 'config/development.yaml'])).stderr).toContain('focusd check-config --config config/development.yaml');
  });
});

describe('focusd simulate', () => {
  it('prints its usage and rejects bad options with exit 64, naming the option', async () => {
    const help = await runFocusd(['simulate', '--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--instrument NAME\s+matching\|mirrored\|sa-reversed\|colour-reversed\|none\|all/);
    const bogus = await runFocusd(['simulate', '--instrument', 'bogus']);
    expect(bogus.code).toBe(64);
    expect(bogus.stderr).toMatch(/--instrument: "bogus" is not one of matching, mirrored/);
    const slides = await runFocusd(['simulate', '--slides', '0']);
    expect(slides.code).toBe(64);
    expect(slides.stderr).toMatch(/--slides: "0" is not a positive integer/);
    expect((await runFocusd(['simulate', '--pattern', 'pub'])).code).toBe(64);
  });

  it('refuses a --json file it could not write before it simulates anything', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'focusd-sim-json-'));
    try {
      const missing = await runFocusd(['simulate', '--json', join(dir, 'no', 'such', 'run.json')]);
      expect(missing.code).toBe(64);
      expect(missing.stderr).toMatch(/--json: folder ".*no\/such" does not exist/);
      expect(missing.stdout).not.toMatch(/instrument matching/); // nothing was run
      const isDir = await runFocusd(['simulate', '--json', dir]);
      expect(isDir.code).toBe(64);
      expect(isDir.stderr).toMatch(/--json: ".*" is a directory, not a file/);
      expect((await runFocusd(['simulate', '--json', ' '])).stderr).toMatch(/--json: needs a file name/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('focusd demo', () => {
  it('runs the closed loop on the embedded broker: obeys focusd\'s commands and prints the yield with and without focusd', async () => {
    // a small slide of one-patch tiles: every acquisition is rendered and scored for real
    const r = await runFocusd(['demo', '--cols', '3', '--rows', '2', '--width', '320', '--height', '320']);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    // the first tile at the planned z, its truth beside the daemon's verdict
    expect(r.stdout).toMatch(/r0c0 #0 z 1500\.00: true defocus [+-]\d+\.\d\d µm → (in_focus|out_of_focus|no_tissue)/);
    expect(r.stdout).toMatch(/▶ (reacquire|z_offset)/);
    expect(r.stdout).toMatch(/actions ignored \(no feedback\)\s+1–1\s+\d+ % \(\d+\/\d+\)/);
    const m = /without focusd (\d+) %, with focusd (\d+) % \((\d\.\d\d) acquisitions per tile/.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    // commands were obeyed: tiles were taken again
    expect(Number(m![3])).toBeGreaterThan(1);
  });
});
