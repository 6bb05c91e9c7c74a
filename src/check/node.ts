// `meshlet check --pre`: what a node needs before meshlet is installed on it, one line per check,
// each with what to do when it fails. The facts come from one shell script on the node; judging
// them is a pure function (the unit tests feed it facts).
import { hasNetAdmin } from '../capture/exec.ts';
import { type BackendReport, chooseIptablesMode, type IptablesMode, parseReport, REPORT_SCRIPT } from '../capture/iptables-mode.ts';
import type { CaptureTools } from '../capture/tools.ts';

export type CheckLevel = 'ok' | 'warn' | 'fail';

export interface CheckResult {
  name: string;
  level: CheckLevel;
  detail: string;
  /** What to do about a warn or a fail. */
  hint?: string;
}

export interface NodeFacts {
  netAdmin: boolean;
  tools: Record<'iptables' | 'ipset' | 'nft' | 'ip', boolean>;
  iptables: Record<IptablesMode, BackendReport>;
  /** net.ipv4.tcp_migrate_req: its value and whether it can be written here, or absent (kernel < 5.14). */
  migrateReq: { value: string; writable: boolean } | 'absent';
  ipv6: boolean;
  kubeProxy: 'iptables' | 'nftables' | 'none';
  /** Bridge interfaces (a bridge CNI such as cni0). */
  bridges: string[];
  /**
   * What capture needs of the kernel, tried in the chosen iptables (a scratch chain and set, removed
   * at once): the socket and rpfilter matches, REDIRECT, ipset's hash:ip and hash:net. Absent when not tried.
   */
  kernel?: Record<KernelFeature, boolean>;
}

export type KernelFeature = 'socket match' | 'rpfilter match' | 'REDIRECT' | 'ipset hash:ip' | 'ipset hash:net';
/** The module each feature lives in, for the hint. */
const MODULES: Record<KernelFeature, string> = { 'socket match': 'xt_socket', 'rpfilter match': 'xt_rpfilter', REDIRECT: 'xt_REDIRECT', 'ipset hash:ip': 'ip_set_hash_ip', 'ipset hash:net': 'ip_set_hash_net' };

/** Tries each feature in a scratch chain of its table with the iptables of `mode`; prints "feature NAME 0|1". */
function kernelScript(mode: 'legacy' | 'nft'): string {
  const ipt = `iptables-${mode} -w`;
  const probe = (table: string, rule: string, name: KernelFeature) =>
    `if ${ipt} -t ${table} -N $c 2>/dev/null; then if ${ipt} -t ${table} -A $c ${rule} 2>/dev/null; then echo "feature ${name} 1"; else echo "feature ${name} 0"; fi; ` +
    `${ipt} -t ${table} -F $c; ${ipt} -t ${table} -X $c; else echo "feature ${name} 0"; fi`;
  return [
    'c=MESHLET_CHECK_$$',
    probe('mangle', '-p tcp -m socket --transparent -j RETURN', 'socket match'),
    probe('raw', '-m rpfilter --invert -j RETURN', 'rpfilter match'),
    probe('nat', '-p tcp -j REDIRECT --to-ports 15001', 'REDIRECT'),
    ...['hash:ip', 'hash:net'].map((t) => `if ipset create meshlet-check-$$ ${t} 2>/dev/null; then ipset destroy meshlet-check-$$; echo "feature ipset ${t} 1"; else echo "feature ipset ${t} 0"; fi`),
    'exit 0',
  ].join('\n');
}

const FACTS_SCRIPT = [
  'for t in iptables ipset nft ip; do if command -v $t >/dev/null; then echo "tool $t 1"; else echo "tool $t 0"; fi; done',
  REPORT_SCRIPT,
  'f=/proc/sys/net/ipv4/tcp_migrate_req',
  'if [ -e $f ]; then if [ -w $f ]; then echo "migrate $(cat $f) w"; else echo "migrate $(cat $f) ro"; fi; else echo "migrate absent"; fi',
  'if [ -e /proc/sys/net/ipv6 ]; then echo "ipv6 1"; else echo "ipv6 0"; fi',
  "if nft list table ip kube-proxy >/dev/null 2>&1; then echo 'kubeproxy nftables'; fi",
  'for d in /sys/class/net/*/bridge; do [ -d "$d" ] && echo "bridge $(basename "$(dirname "$d")")"; done',
  'exit 0',
].join('\n');

/** Reads the node (this network namespace). */
export async function gatherNodeFacts(tools: CaptureTools): Promise<NodeFacts> {
  const out = (await tools.run('sh', ['-c', FACTS_SCRIPT])).stdout;
  const lines = out.split('\n').map((l) => l.trim().split(/\s+/));
  const tool = (name: string) => lines.some(([k, n, v]) => k === 'tool' && n === name && v === '1');
  const migrate = lines.find(([k]) => k === 'migrate');
  const iptables = parseReport(out);
  const nftProxy = lines.some(([k]) => k === 'kubeproxy');
  const mode = chooseIptablesMode(iptables).mode;
  let kernel: NodeFacts['kernel'];
  if (hasNetAdmin() && mode !== 'auto') {
    const probed = (await tools.run('sh', ['-c', kernelScript(mode)])).stdout;
    kernel = Object.fromEntries(Object.keys(MODULES).map((f) => [f, probed.includes(`feature ${f} 1`)])) as Record<KernelFeature, boolean>;
  }
  return {
    ...(kernel ? { kernel } : {}),
    netAdmin: hasNetAdmin(),
    tools: { iptables: tool('iptables'), ipset: tool('ipset'), nft: tool('nft'), ip: tool('ip') },
    iptables,
    migrateReq: !migrate || migrate[1] === 'absent' ? 'absent' : { value: migrate[1] ?? '', writable: migrate[2] === 'w' },
    ipv6: lines.some(([k, v]) => k === 'ipv6' && v === '1'),
    kubeProxy: nftProxy ? 'nftables' : iptables.legacy.kubeProxy || iptables.nft.kubeProxy ? 'iptables' : 'none',
    bridges: lines.filter(([k]) => k === 'bridge').map(([, name]) => name ?? ''),
  };
}

export function evaluateNode(f: NodeFacts): CheckResult[] {
  const r: CheckResult[] = [];
  r.push(f.netAdmin
    ? { name: 'privilege', level: 'ok', detail: 'CAP_NET_ADMIN' }
    : { name: 'privilege', level: 'fail', detail: 'no CAP_NET_ADMIN: nothing below could be read fully', hint: 'run as root, or with the NET_ADMIN capability (the DaemonSet grants it)' });
  const missing = (['iptables', 'ipset', 'ip'] as const).filter((t) => !f.tools[t]);
  r.push(missing.length === 0
    ? { name: 'tools', level: 'ok', detail: `iptables, ipset, ip${f.tools.nft ? ', nft' : ''}` }
    : { name: 'tools', level: 'fail', detail: `missing: ${missing.join(', ')}`, hint: 'apt-get install iptables ipset iproute2 (the image has them)' });
  const mode = chooseIptablesMode(f.iptables);
  r.push(mode.mode === 'auto'
    ? { name: 'iptables mode', level: 'fail', detail: mode.reason, hint: 'install iptables (legacy and nft), and run with CAP_NET_ADMIN' }
    : { name: 'iptables mode', level: 'ok', detail: `${mode.mode}: ${mode.reason}` });
  if (f.kernel) {
    const lacking = (Object.keys(MODULES) as KernelFeature[]).filter((k) => !f.kernel![k]);
    r.push(lacking.length === 0
      ? { name: 'kernel', level: 'ok', detail: `${Object.keys(MODULES).join(', ')}: each tried in a scratch chain` }
      : { name: 'kernel', level: 'fail', detail: `cannot use: ${lacking.join(', ')}`, hint: `load ${lacking.map((k) => MODULES[k]).join(', ')} (modprobe), or use a kernel that has them` });
  }
  if (f.kubeProxy === 'nftables') {
    r.push(f.tools.nft
      ? { name: 'kube-proxy', level: 'warn', detail: 'nftables mode', hint: 'run `meshlet init` and the agents with --capture-backend nftables' }
      : { name: 'kube-proxy', level: 'fail', detail: 'nftables mode, and no nft here', hint: 'apt-get install nftables, and use --capture-backend nftables' });
  } else {
    r.push({ name: 'kube-proxy', level: 'ok', detail: f.kubeProxy === 'iptables' ? 'iptables mode: meshlet\'s jump goes first' : 'none found (no KUBE-SERVICES, no kube-proxy table)' });
  }
  const m = f.migrateReq;
  r.push(m === 'absent'
    ? { name: 'tcp_migrate_req', level: 'warn', detail: 'this kernel has none (older than 5.14)', hint: 'upgrades may reset connections queued at the moment of the switch' }
    : m.value === '1' ? { name: 'tcp_migrate_req', level: 'ok', detail: 'on' }
      : m.writable ? { name: 'tcp_migrate_req', level: 'ok', detail: 'off; `meshlet init` turns it on' }
        : { name: 'tcp_migrate_req', level: 'warn', detail: 'off, and /proc/sys is read-only here', hint: 'set net.ipv4.tcp_migrate_req=1 in the node\'s sysctl configuration, or upgrades are not lossless' });
  if (f.bridges.length > 0) {
    r.push(f.tools.nft
      ? { name: 'CNI', level: 'ok', detail: `bridge (${f.bridges.join(', ')}): the agent binds captured addresses to their bridge ports` }
      : { name: 'CNI', level: 'fail', detail: `bridge (${f.bridges.join(', ')}) and no nft`, hint: 'apt-get install nftables: anti-spoofing behind a bridge needs it' });
  } else {
    r.push({ name: 'CNI', level: 'ok', detail: 'routed (no bridge): the reverse-path check proves each pod\'s interface' });
  }
  r.push({ name: 'IPv6', level: 'ok', detail: f.ipv6 ? 'present: the IPv6 guard keeps captured pods\' IPv6 addresses out of reach' : 'absent' });
  return r;
}

export function formatChecks(results: readonly CheckResult[]): string {
  const width = Math.max(...results.map((c) => c.name.length));
  return `${results.map((c) => `${c.level.padEnd(4)}  ${c.name.padEnd(width)}  ${c.detail}${c.hint ? `\n      ${' '.repeat(width)}  -> ${c.hint}` : ''}`).join('\n')}\n`;
}
