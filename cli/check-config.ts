import { parseArgs } from 'node:util';
import { ConfigError, describeSchema, loadConfig } from '../config/load.js';
import { redactConfig } from '../core/redact.js';
import { BundleError, loadBundle } from '../models/bundle.js';
import { splitConfigArgs } from './args.js';

const CHECK_CONFIG_USAGE = 'usage: focusd check-config [--config FILE] [--print] [--schema]\n';

/** Exit codes: 0 valid, 78 (EX_CONFIG) invalid, 64 usage. */
export async function checkConfigMain(argv: string[]): Promise<number> {
  let split;
  try {
    split = splitConfigArgs(argv);
  } catch (err) {
    process.stderr.write(`focusd check-config: ${(err as Error).message}\n`);
    return 64;
  }
  let values;
  try {
    ({ values } = parseArgs({
      args: split.rest,
      options: { print: { type: 'boolean', default: false }, schema: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h' } },
      strict: true,
    }));
  } catch (err) {
    const positional = split.rest.find((a) => !a.startsWith('-'));
    const hint = positional && /\.(ya?ml|json)$/i.test(positional) ? ` (to check ${positional}: focusd check-config --config ${positional})` : '';
    process.stderr.write(`focusd check-config: ${(err as Error).message}${hint}\n${CHECK_CONFIG_USAGE}`);
    return 64;
  }
  if (values.help) {
    process.stdout.write(CHECK_CONFIG_USAGE);
    return 0;
  }
  if (values.schema) {
    process.stdout.write(JSON.stringify(describeSchema(), null, 2) + '\n');
    return 0;
  }
  try {
    const config = loadConfig({ file: split.configFile, args: split.configArgs });
    // the run would refuse a bundle whose model file does not hash to the manifest's sha256: say so now
    if (config.scoring.scorer === 'cnn') {
      try {
        await loadBundle(config.resolved.modelDir);
      } catch (err) {
        if (err instanceof BundleError) throw new ConfigError([`scoring.model: ${err.message}`]);
        throw err;
      }
    }
    process.stdout.write(`configuration OK${config.source.file ? ` (${config.source.file})` : ' (defaults and environment)'}\n`);
    if (values.print) process.stdout.write(JSON.stringify(redact(config), null, 2) + '\n');
    return 0;
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`configuration invalid: ${err.problems.length} problem(s)\n`);
      for (const p of err.problems) process.stderr.write(`  ${p}\n`);
      return 78;
    }
    throw err;
  }
}

/** Config for printing: secrets and URL userinfo replaced (core/redact.ts, the same helper get_config uses). */
export function redact(config: object): object {
  return redactConfig(config);
}
