// The capture flags (`meshlet init`, and the agent, which checks and repairs the same rules).
import { type CaptureSettings, defaultCaptureSettings as d, SIDECAR_CHAINS } from '../capture/rules.ts';
import { PORTS } from '../ports.ts';
import { type Flag, type FlagValues, type Problems, readFlags } from './flags.ts';

const SET = { type: 'text', arg: 'NAME', pattern: /^meshlet[A-Za-z0-9_.-]{0,24}$/, patternHelp: 'meshlet\'s own set: 7-31 of A-Z a-z 0-9 _ . -, starting with meshlet (its members are replaced, and --cleanup destroys it)' } as const;
const CHAIN = { type: 'text', arg: 'NAME', pattern: /^MESHLET[A-Z0-9_-]{0,21}$/, patternHelp: 'meshlet\'s own chain: 7-28 of A-Z 0-9 _ -, starting with MESHLET (it is rewritten, and --cleanup deletes it)' } as const;

export const CAPTURE_FLAGS = [
  { name: 'outbound-port', type: 'port', default: String(PORTS.outbound), help: 'the agent\'s port for captured pods\' outbound connections' },
  { name: 'inbound-port', type: 'port', default: String(PORTS.inboundPlaintext), help: 'the agent\'s port for plaintext to captured pods' },
  { name: 'tunnel-port', type: 'port', default: String(PORTS.tunnel), help: 'the agent\'s mTLS tunnel port' },
  { name: 'ipset', ...SET, default: d.ipset, help: 'this node\'s captured pods' },
  { name: 'destinations-ipset', ...SET, default: d.destinationsIpset, help: 'the mesh\'s pods and Service IPs: only these are captured' },
  { name: 'ipset6', ...SET, default: d.ipset6, help: 'the captured pods\' IPv6 addresses (the IPv6 guard)' },
  { name: 'gate-ipset', ...SET, default: d.gateIpset, help: 'the pods the agent vouches for (the probe gate)' },
  { name: 'chain', ...CHAIN, default: d.chain, help: 'meshlet\'s nat chain' },
  { name: 'gate-chain', ...CHAIN, default: d.gateChain, help: 'the probe gate\'s filter chain' },
  { name: 'capture-backend', type: 'one-of', values: ['iptables', 'nftables'], default: d.backend, help: 'nftables where kube-proxy runs in nftables mode' },
  { name: 'iptables-mode', type: 'one-of', values: ['auto', 'legacy', 'nft'], default: d.iptablesMode, help: 'which iptables writes the rules; auto: the one the kubelet\'s hint chain or most of the node\'s rules are in, as kube-proxy decides' },
  { name: 'proxy-gid', type: 'int', min: 1, max: 2 ** 31 - 1, default: String(d.proxyGid), help: 'sidecar mode: the agent\'s group id, whose connections are not captured (not 0: root\'s would escape)' },
] as const satisfies readonly Flag[];

/**
 * Capture settings from the capture flags; names and ports that would touch another's are problems.
 * `ownPorts`: the agent's other listeners, which no capture port may take (capture lets the metrics
 * and readiness ports through untouched).
 */
export function captureSettings(
  v: FlagValues<typeof CAPTURE_FLAGS>, p: Problems, mode: CaptureSettings['mode'],
  ownPorts: ReadonlyArray<readonly [string, number]> = [['the metrics port', PORTS.metrics], ['the readiness port', PORTS.readiness]],
): CaptureSettings {
  // Another of meshlet's chains or sets would be rewritten twice.
  const fixed = [d.sourceChain, d.antiSpoofChain, d.forwardChain, d.ipv6Chain, ...Object.values(SIDECAR_CHAINS)];
  for (const flag of ['chain', 'gate-chain'] as const) if (fixed.includes(v[flag])) p.add(`--${flag}: ${v[flag]} is one of meshlet's other chains`);
  if (v.chain === v['gate-chain']) p.add(`--chain and --gate-chain must differ (both ${v.chain})`);
  const sets = [['--ipset', v.ipset], ['--destinations-ipset', v['destinations-ipset']], ['--gate-ipset', v['gate-ipset']], ['--ipset6', v.ipset6]] as const;
  for (const [i, [flag, value]] of sets.entries()) {
    if (value === d.strictIpset) p.add(`${flag}: ${value} is meshlet's STRICT pods set`);
    if (value === d.podRangesIpset) p.add(`${flag}: ${value} is meshlet's pod ranges set`);
    for (const [other, otherValue] of sets.slice(i + 1)) if (value === otherValue) p.add(`${flag} and ${other} must differ (both ${value})`);
  }
  if (mode === 'sidecar' && v['capture-backend'] === 'nftables') p.add('--sidecar captures with iptables only (--capture-backend nftables is for the node agent)');
  distinctPorts(p, [['--outbound-port', v['outbound-port']], ['--inbound-port', v['inbound-port']], ['--tunnel-port', v['tunnel-port']], ...ownPorts]);
  return {
    ...d,
    mode,
    proxyGid: v['proxy-gid'],
    passPorts: [v['tunnel-port'], PORTS.metrics, PORTS.readiness],
    backend: v['capture-backend'],
    iptablesMode: v['iptables-mode'],
    ipset: v.ipset, destinationsIpset: v['destinations-ipset'], ipset6: v.ipset6, gateIpset: v['gate-ipset'],
    chain: v.chain, gateChain: v['gate-chain'],
    outboundPort: v['outbound-port'], inboundPlaintextPort: v['inbound-port'], tunnelPort: v['tunnel-port'],
  };
}

/** Each port once: two listeners, or a redirect onto another listener, cannot share one. */
function distinctPorts(p: Problems, ports: ReadonlyArray<readonly [string, number]>): void {
  for (const [i, [what, port]] of ports.entries()) {
    const clash = ports.slice(0, i).find(([, other]) => other === port);
    if (clash && port > 0) p.add(`${what} ${port} is already ${clash[0]}'s`);
  }
}

export interface InitConfig {
  capture: CaptureSettings;
  dryRun: boolean;
  cleanup: boolean;
}

export const INIT_FLAGS = [
  { name: 'dry-run', type: 'boolean', help: 'print what would be run, change nothing' },
  { name: 'cleanup', type: 'boolean', help: 'remove meshlet\'s rules, sets and routes' },
  { name: 'sidecar', type: 'boolean', help: 'one pod\'s capture, run inside the pod' },
  ...CAPTURE_FLAGS,
] as const satisfies readonly Flag[];

export function loadInitConfig(argv: string[]): InitConfig {
  const { values: v, problems: p } = readFlags(INIT_FLAGS, argv);
  const capture = captureSettings(v, p, v.sidecar ? 'sidecar' : 'node');
  p.throwIfAny();
  return { capture, dryRun: v['dry-run'], cleanup: v.cleanup };
}
