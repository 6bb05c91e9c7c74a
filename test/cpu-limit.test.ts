// The default worker count: the container's CPU limit, else a quarter of the cores (src/cpu-limit.ts).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cgroupCpuLimit, defaultWorkers, MAX_DEFAULT_WORKERS } from '../src/cpu-limit.ts';

const files = (f: Record<string, string>) => (p: string) => {
  const text = f[p];
  if (text === undefined) throw Object.assign(new Error(`ENOENT ${p}`), { code: 'ENOENT' });
  return text;
};

describe('CPU limit and default workers', () => {
  it('reads cgroup v2 cpu.max, then v1 quota and period; none when unlimited', () => {
    assert.equal(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu.max': '250000 100000\n' })), 2.5);
    assert.equal(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu.max': 'max 100000\n' })), undefined);
    assert.equal(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu/cpu.cfs_quota_us': '400000', '/sys/fs/cgroup/cpu/cpu.cfs_period_us': '100000' })), 4);
    assert.equal(cgroupCpuLimit(files({ '/sys/fs/cgroup/cpu/cpu.cfs_quota_us': '-1', '/sys/fs/cgroup/cpu/cpu.cfs_period_us': '100000' })), undefined);
    assert.equal(cgroupCpuLimit(files({})), undefined);
  });

  it('takes whole cores of the limit, else a quarter of the node\'s, at least 1 and at most the cap', () => {
    assert.equal(defaultWorkers(2.5, 64), 2, 'the limit wins over the node');
    assert.equal(defaultWorkers(0.5, 64), 1);
    assert.equal(defaultWorkers(undefined, 2), 1, 'this machine: one');
    assert.equal(defaultWorkers(undefined, 16), 4);
    assert.equal(defaultWorkers(undefined, 256), MAX_DEFAULT_WORKERS);
  });
});
