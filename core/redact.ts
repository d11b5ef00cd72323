// The one place secrets are taken out of what focusd logs or answers (log lines, get_config, status, check-config --print).

import { REDACTED } from '../config/secrets.js';
import { redactUrl } from '../config/secrets.js';

export { REDACTED };

/** Keys whose values are secrets (mqtt.password, resolved.mqttPassword, tokens); *File keys are paths, not secrets. */
const SECRET_KEY = /pass(word)?$|secret|token/i;

// URL userinfo redaction lives with the configuration (config/ may not import core/), which needs it for its own
// error messages; it is re-exported here so this file stays the one place to look.
export { redactUrl } from '../config/secrets.js';

/** Deep copy with every password-like value replaced and userinfo removed from every string that holds a URL. */
export function redactConfig<T>(v: T): T {
  const walk = (x: unknown, key: string): unknown => {
    if (SECRET_KEY.test(key) && !/file$/i.test(key)) return x === '' || x === null || x === undefined ? x : REDACTED;
    if (typeof x === 'string') return redactUrl(x);
    if (Array.isArray(x)) return x.map((e) => walk(e, ''));
    if (x && typeof x === 'object') return Object.fromEntries(Object.entries(x).map(([k, e]) => [k, walk(e, k)]));
    return x;
  };
  return walk(v, '') as T;
}
