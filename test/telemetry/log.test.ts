import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createLogger, setLogLevel } from '../../src/telemetry/log.ts';

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
});
