// Secrets out of text: the userinfo of URLs. core/redact.ts (log lines, get_config, status, check-config --print)
// re-exports this; the configuration loader uses it for its own error messages.

export const REDACTED = '(redacted)';

/**
 * scheme://user:password@host… or scheme://user@host…: everything from the scheme to the LAST @ of the token, as a
 * URL parser splits userinfo from host at the last @ (an unencoded @, /, ? or # in a password must not leave its
 * tail in clear). A token ends at whitespace, a quote or an angle bracket (URLs inside JSON or HTML).
 */
const URL_USERINFO = /\b([a-z][a-z0-9+.-]*:\/\/)([^\s"'<>`]*)@/gi;

/**
 * A URL (or any text holding URLs) with the userinfo replaced: `mqtt://u:pw@host:1883` → `mqtt://(redacted)@host:1883`.
 * The user name goes too: it is half of the credential and often the same as the account.
 */
export function redactUrl(text: string): string {
  return text.replace(URL_USERINFO, (_m, scheme: string) => `${scheme}${REDACTED}@`);
}
