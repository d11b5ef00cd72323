import { accessSync, constants, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { ConfigError, describeSchema, loadConfig, type FocusdConfig } from '../config/load.js';

export interface SplitArgs {
  configFile: string | null;
  /** options that belong to the config schema (convict `arg`s), passed through to loadConfig. */
  configArgs: string[];
  /** everything else, for the command's own parser. */
  rest: string[];
}

/** Separates --config and schema options (e.g. --scanner-id) from a command's own options. */
export function splitConfigArgs(argv: string[]): SplitArgs {
  const known = new Set(describeSchema().flatMap((k) => (k.arg ? [k.arg] : [])));
  const out: SplitArgs = { configFile: null, configArgs: [], rest: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const [name, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    if (name === '--config' || name === '-c') {
      out.configFile = inline ?? argv[++i] ?? null;
      if (!out.configFile) throw new Error('--config needs a file');
    } else if (known.has(name)) {
      const value = inline ?? argv[++i];
      if (value === undefined) throw new Error(`${name} needs a value`);
      out.configArgs.push(name, value);
    } else out.rest.push(a);
  }
  return out;
}

/** The configuration of an offline command; a ConfigError is printed (every problem, with its key) as exit code 78. */
export function loadCommandConfig(command: string, split: SplitArgs): FocusdConfig | number {
  try {
    return loadConfig({ file: split.configFile, args: split.configArgs });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`focusd ${command}: ${err.message}\n`);
      return 78;
    }
    throw err;
  }
}

/**
 * Why a file a command will write at its end cannot be written there, or null. Checked before the work starts: a
 * simulation of many minutes must not end in a stack trace and lose its results to a missing folder.
 */
export function outputFileProblem(path: string): string | null {
  if (!path.trim()) return 'needs a file name';
  const full = resolve(path);
  const existing = statOrNull(full);
  if (existing?.isDirectory()) return `"${path}" is a directory, not a file`;
  const dir = dirname(full);
  const parent = statOrNull(dir);
  if (!parent) return `folder "${dir}" does not exist`;
  if (!parent.isDirectory()) return `"${dir}" is not a folder`;
  try {
    accessSync(existing ? full : dir, constants.W_OK);
  } catch {
    return `"${existing ? full : dir}" is not writable`;
  }
  return null;
}

function statOrNull(path: string): ReturnType<typeof statSync> | null {
  try {
    return statSync(path);
  } catch {
    return null;
  }
}
