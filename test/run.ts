// `npm test`: type check, then every test file. The namespace suites need root: without it they
// are skipped loudly and the run exits non-zero, so a partial run is never mistaken for a pass.
// `npm run test:unit` (`--unit`): the unit tests alone, no root needed, with node's line coverage
// of the data path (src/proxy), which they cover in process.
import { spawnSync } from 'node:child_process';
import { globSync } from 'node:fs';
import { hasNetAdmin } from '../src/capture/exec.ts';

function run(cmd: string, args: string[]): number {
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  return r.status ?? 1;
}

const unitOnly = process.argv.includes('--unit');
const typecheck = run('tsc', ['-p', '.']);
if (typecheck !== 0) {
  process.stderr.write('npm test: type check failed\n');
  process.exit(typecheck);
}
// test/image runs apart (`npm run test:image`): it builds the image, minutes of its own.
const all = globSync('test/**/*.test.ts').filter((f) => !f.startsWith('test/image/')).sort();
const unit = all.filter((f) => !f.startsWith('test/e2e/'));
if (unitOnly) {
  process.exit(run(process.execPath, ['--test', '--test-concurrency=2', '--experimental-test-coverage', '--test-coverage-include=src/proxy/**', ...unit]));
}
const root = hasNetAdmin();
const code = run(process.execPath, ['--test', '--test-concurrency=2', '--test-timeout=180000', ...(root ? all : unit)]);
if (!root) {
  process.stderr.write('\n' + '!'.repeat(78) + '\n' +
    'npm test: NOT ROOT - the network-namespace suites (test/e2e) were SKIPPED.\n' +
    'They build namespaces, veth links and iptables rules and need root (CAP_NET_ADMIN).\n' +
    'Run `sudo npm test` for the full suite; CI runs as root and always runs them.\n' +
    '!'.repeat(78) + '\n');
  process.exit(code === 0 ? 4 : code);
}
process.exit(code);
