import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { accessLogger, adminLogger, createLogger, setLogLevel } from '../../src/telemetry/log.ts';

describe('log level at runtime', () => {
  it('reaches children and grandchildren created before and after the change', () => {
    const root = createLogger('info');
    const child = root.child({ component: 'a' });
    const grandchild = child.child({ pod: 'x' });
    assert.equal(grandchild.isLevelEnabled('debug'), false);
    setLogLevel(root, 'debug');
    for (const l of [root, child, grandchild, root.child({ later: true })]) assert.equal(l.level, 'debug');
    setLogLevel(root, 'warn');
    assert.equal(grandchild.isLevelEnabled('info'), false);
    assert.equal(root.child({}).level, 'warn');
  });

  it('never silences the access log or the admin record, from the start or at runtime', () => {
    // Started quiet (--log-level error): access lines (info) are still written.
    const root = createLogger('error');
    const access = accessLogger(root);
    const admin = adminLogger(root, { node: 'n1' });
    assert.equal(access.isLevelEnabled('info'), true);
    assert.equal(admin.isLevelEnabled('warn'), true);
    for (const level of ['silent', 'fatal', 'debug', 'info'] as const) {
      setLogLevel(root, level);
      assert.equal(root.level, level);
      assert.equal(access.level, 'info', `access log at ${level}`);
      assert.equal(admin.level, 'info', `admin record at ${level}`);
    }
    assert.deepEqual(admin.bindings(), { scope: 'admin', node: 'n1' });
    // Started at info, the level pino hands down from a parent to its children.
    const loud = createLogger('info');
    const access2 = accessLogger(loud);
    setLogLevel(loud, 'silent');
    assert.equal(access2.isLevelEnabled('info'), true);
  });
});
