// The one place secrets are taken out of what focusd logs or answers (log lines, get_config, status, check-config --print).

export const REDACTED = '(redacted)';

/** Keys whose values are secrets (mqtt.password, resolved.mqttPassword, tokens); *File keys are paths, not secrets. */
const SECRET_KEY = /pass(word)?$|secret|token/i;

/** scheme://user:password@host… or scheme://user@host…: the userinfo part of a URL. */
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)([^\s/?#@]*)@/gi;

/**
 * A URL (or any text holding URLs) with the userinfo replaced: `mqtt://u:pw@host:1883` → `mqtt://(redacted)@host:1883`.
 * The user name goes too: it is half of the credential and often the same as the account.
 */
export function redactUrl(text: string): string {
  return text.replace(URL_USERINFO, (_m, scheme: string) => `${scheme}${REDACTED}@`);
}

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
