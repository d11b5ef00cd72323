// core/redact.ts: the one helper that takes secrets out of what focusd logs or returns (issue 10, defect 4).
import { describe, expect, it } from 'vitest';
import { redactConfig, redactUrl } from '../../core/redact.js';
import { runFocusd } from '../helpers/proc.js';

describe('redaction', () => {
  it('removes the userinfo of URLs, wherever they sit in a string', () => {
    expect(redactUrl('mqtt://user:pw@broker:1883')).toBe('mqtt://(redacted)@broker:1883');
    expect(redactUrl('mqtts://only-user@[::1]:8883/x')).toBe('mqtts://(redacted)@[::1]:8883/x');
    expect(redactUrl('wss://u:p%40ss@host/mqtt')).toBe('wss://(redacted)@host/mqtt');
    expect(redactUrl('connect to mqtt://a:b@h:1 failed, then ws://c:d@e')).toBe('connect to mqtt://(redacted)@h:1 failed, then ws://(redacted)@e');
    // nothing to hide: unchanged
    for (const s of ['mqtt://broker:1883', 'embedded', 'tcp://127.0.0.1:5555', 'user@example.org', '"mqtt://h:1","by":"a@b"']) expect(redactUrl(s)).toBe(s);
    // a password with an unencoded @, / ? or #: up to the last @ of the token goes (found by attack: the tail after
    // the first @ was printed in clear). The price: an @ in a path is taken for userinfo too (safe side)
    expect(redactUrl('mqtt://atuser:p@ssXw0rd@127.0.0.1:18885')).toBe('mqtt://(redacted)@127.0.0.1:18885');
    expect(redactUrl('url mqtt://slashuser:pa/ss#wo?rd@h:1 failed')).toBe('url mqtt://(redacted)@h:1 failed');
    expect(redactUrl('mqtt://h/a@b')).toBe('mqtt://(redacted)@b');
  });

  it('redacts password-like keys and URLs in a whole configuration, keeping file paths', () => {
    const out = redactConfig({ mqtt: { url: 'mqtt://u:hunter2@h', password: 'hunter2', passwordFile: '/run/cred', username: 'u' }, resolved: { mqttPassword: 'hunter2' }, list: ['ws://x:hunter2@y'] });
    expect(JSON.stringify(out)).not.toContain('hunter2');
    expect(out).toMatchObject({ mqtt: { url: 'mqtt://(redacted)@h', passwordFile: '/run/cred', username: 'u' } });
  });

  it('check-config --print uses it too', async () => {
    const r = await runFocusd(['check-config', '--print'], { FOCUSD_MQTT_URL: 'mqtt://focusd:pr1nt-secret@broker.lab:1883' });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('mqtt://(redacted)@broker.lab:1883');
    expect(r.stdout + r.stderr).not.toContain('pr1nt-secret');
  });
});
