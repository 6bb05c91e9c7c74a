// `npm test`: type check, then every test file. The namespace suites need root: without it they
// are skipped loudly and the run exits non-zero, so a partial run is never mistaken for a pass.
import { spawnSync } from 'node:child_process';
import { globSync } from 'node:fs';
import { hasNetAdmin } from '../src/capture/exec.ts';

function run(cmd: string, args: string[]): number {
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  return r.status ?? 1;
}

const typecheck = run('tsc', ['-p', '.']);
if (typecheck !== 0) {
  process.stderr.write('npm test: type check failed\n');
  process.exit(typecheck);
}
const root = hasNetAdmin();
const files = globSync('test/**/*.test.ts').filter((f) => root || !f.startsWith('test/e2e/')).sort();
const code = run(process.execPath, ['--test', '--test-concurrency=2', '--test-timeout=180000', ...files]);
if (!root) {
  process.stderr.write('\n' + '!'.repeat(78) + '\n' +
    'npm test: NOT ROOT - the network-namespace suites (test/e2e) were SKIPPED.\n' +
    'They build namespaces, veth links and iptables rules and need root (CAP_NET_ADMIN).\n' +
    'Run `sudo npm test` for the full suite; CI runs as root and always runs them.\n' +
    '!'.repeat(78) + '\n');
  process.exit(code === 0 ? 4 : code);
}
process.exit(code);
