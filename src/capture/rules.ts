// Pure rule generation for the node's capture. Nothing here runs a command: the init helper feeds
// the text to `iptables-restore --noflush`, and `--dry-run` prints exactly the same text.
import { PORTS } from '../ports.ts';

export interface CaptureSettings {
  /**
   * node: the agent's capture in the node's namespace (one agent for every captured pod of the
   * node: ipsets, PREROUTING, the probe gate). sidecar: one agent inside one pod's namespace, the
   * sidecar pattern, kept to measure what the pattern itself costs (bench/cost): nat OUTPUT for
   * the app's connections, nat PREROUTING for connections to it; no sets, no probe gate.
   */
  mode: 'node' | 'sidecar';
  /**
   * sidecar mode: the group id the agent runs with; its own connections (tunnels, deliveries to the
   * app) are recognised by it and never captured again.
   */
  proxyGid: number;
  /** sidecar mode: ports of the pod reached directly, never redirected (the tunnel, readiness and metrics ports). */
  passPorts: number[];
  /**
   * iptables (nat PREROUTING, filter OUTPUT, ipsets), or nftables (a table of meshlet's own, hooked
   * before kube-proxy's dstnat chain: for nodes whose kube-proxy runs in nftables mode).
   */
  backend: 'iptables' | 'nftables';
  /**
   * With the iptables backend: which iptables writes the rules, legacy or nft (iptables-mode.ts);
   * `auto` until read off the node, as kube-proxy's wrapper does.
   */
  iptablesMode: 'auto' | 'legacy' | 'nft';
  /** ipset (hash:ip) whose members are this node's captured pod IPs (an nftables set of that name with nftables). */
  ipset: string;
  /**
   * ipset (hash:ip) of this node's captured pods in STRICT namespaces, filled by the agent only
   * with `--non-tcp-to-strict drop` (empty otherwise): non-TCP traffic forwarded to them is dropped.
   */
  strictIpset: string;
  /** meshlet's chain in the filter table; FORWARD jumps to it (non-TCP to STRICT pods). */
  forwardChain: string;
  /**
   * ipset (hash:ip) of the destinations a captured pod's connection is carried to by the agent: every
   * captured pod of the mesh, on any node, and the cluster IPs of Services with endpoints in the mesh.
   * Only connections to these are redirected; everything else a captured pod sends leaves as it
   * would without meshlet, from the pod's own address, under the node's firewall and the cluster's
   * NetworkPolicy (the agent never dials outside the mesh as the node).
   */
  destinationsIpset: string;
  /**
   * ipset (hash:net) of the cluster's pod ranges, filled only when other nodes' pods come from the
   * address slices (the table a controller keeps, which may be away or behind): a captured pod's
   * connection to a pod address the table does not know goes to the agent too, which tunnels it to
   * whatever captures that address or, when nothing does, dials it as the pod (outbound.ts). Empty
   * otherwise: the table is the cluster's own (every Pod watched, or the workloads file).
   */
  podRangesIpset: string;
  /**
   * ipset (hash:ip, family inet6) of the same pods' IPv6 addresses, for the IPv6 guard (node mode).
   * The mesh carries IPv4: new IPv6 TCP connections to these addresses are refused, so a dual-stack
   * pod's traffic can never go around the mesh in plaintext over IPv6 (an nftables set of that name
   * in meshlet's ip6 table with nftables).
   */
  ipset6: string;
  /** meshlet's chain in ip6tables' filter table; FORWARD jumps to it (the IPv6 guard). */
  ipv6Chain: string;
  /** Name of meshlet's own chain in the nat table; PREROUTING jumps to it. */
  chain: string;
  /**
   * ipset (hash:ip with timeouts) of the captured pods the agent vouches for: it re-adds them every
   * second with a short timeout, so they drop out on their own when the agent dies or stalls.
   */
  gateIpset: string;
  /** meshlet's chain in the filter table; OUTPUT jumps to it (the probe gate). */
  gateChain: string;
  /**
   * meshlet's chain in the raw table; PREROUTING jumps to it. It drops packets that carry a captured
   * pod's address but did not arrive on that pod's interface (the identity is the source address).
   */
  antiSpoofChain: string;
  /**
   * meshlet's chain in the mangle table; PREROUTING jumps to it. It marks the replies to the
   * agent's source-preserving connections, which a policy route then delivers to the node itself.
   */
  sourceChain: string;
  outboundPort: number;
  inboundPlaintextPort: number;
  tunnelPort: number;
}

export const defaultCaptureSettings: CaptureSettings = {
  mode: 'node',
  // Istio's convention for the sidecar's own uid and gid.
  proxyGid: 1337,
  passPorts: [PORTS.tunnel, PORTS.metrics, PORTS.readiness],
  backend: 'iptables',
  iptablesMode: 'auto',
  ipset: 'meshlet-captured',
  destinationsIpset: 'meshlet-destinations',
  podRangesIpset: 'meshlet-pod-ranges',
  strictIpset: 'meshlet-strict',
  forwardChain: 'MESHLET_FORWARD',
  ipset6: 'meshlet-captured6',
  ipv6Chain: 'MESHLET_IPV6',
  chain: 'MESHLET_PREROUTING',
  gateIpset: 'meshlet-vouched',
  gateChain: 'MESHLET_OUTPUT',
  sourceChain: 'MESHLET_SOURCE',
  antiSpoofChain: 'MESHLET_ANTISPOOF',
  outboundPort: PORTS.outbound,
  inboundPlaintextPort: PORTS.inboundPlaintext,
  tunnelPort: PORTS.tunnel,
};

/** The body of meshlet's nat chain, in order. The first match wins (REDIRECT is terminal). */
export function chainRules(s: CaptureSettings): string[] {
  const set = `-m set --match-set ${s.ipset}`;
  return [
    // Rules are written exactly as iptables-save prints them (e.g. `-m tcp` before --dport), so
    // what was installed can be compared with what is in the kernel.
    // What a captured pod sends to a destination in the mesh goes to the outbound listener; what it
    // sends anywhere else never meets the agent, so it keeps the pod's address and reach (a
    // connection the agent dialled would leave as the node: cloud metadata, ports open to the node
    // only). The agent's own connections leave through OUTPUT, never PREROUTING: never captured again.
    `-A ${s.chain} -p tcp ${set} src -m set --match-set ${s.destinationsIpset} dst -m comment --comment "meshlet: captured pod to the mesh" -j REDIRECT --to-ports ${s.outboundPort}`,
    // An address in the pod ranges the table does not know (a pod started while the address
    // controller was away): the agent, never plaintext to a pod that may be captured.
    `-A ${s.chain} -p tcp ${set} src -m set --match-set ${s.podRangesIpset} dst -m comment --comment "meshlet: captured pod to an unknown pod" -j REDIRECT --to-ports ${s.outboundPort}`,
    // Tunnel traffic addressed to a captured pod's tunnel port lands on the agent's tunnel listener.
    `-A ${s.chain} -p tcp ${set} dst -m tcp --dport ${s.tunnelPort} -m comment --comment "meshlet: tunnel to captured pod" -j REDIRECT --to-ports ${s.tunnelPort}`,
    // Any other TCP to a captured pod is plaintext from outside the mesh: the inbound plaintext port
    // decides (permissive lets it through, strict refuses it).
    `-A ${s.chain} -p tcp ${set} dst -m comment --comment "meshlet: plaintext to captured pod" -j REDIRECT --to-ports ${s.inboundPlaintextPort}`,
  ];
}

/**
 * The body of the probe gate (filter OUTPUT). Connections the node itself opens to a captured pod
 * (kubelet's probes, and the agent's own deliveries) go straight to the pod while the agent vouches
 * for it, and are reset while it does not: a dead or stalled agent stops re-adding its pods, their
 * entries time out, kubelet's probes fail and the pods leave their Services' endpoints. Only new
 * connections are gated; established ones are left alone.
 */
export function gateRules(s: CaptureSettings): string[] {
  return [
    `-A ${s.gateChain} -p tcp -m set --match-set ${s.ipset} dst -m set ! --match-set ${s.gateIpset} dst -m conntrack --ctstate NEW ` +
      `-m comment --comment "meshlet: captured pod the agent does not vouch for" -j REJECT --reject-with tcp-reset`,
  ];
}

/**
 * Non-TCP to STRICT pods (filter FORWARD). The mesh carries TCP: UDP, SCTP and the rest reach a
 * captured pod in plaintext, around mTLS and policy. Members of the strict set (filled only with
 * `--non-tcp-to-strict drop`) get no forwarded non-TCP traffic but ICMP, which TCP itself needs
 * (path MTU discovery). Their node's own traffic (OUTPUT, not FORWARD) still reaches them.
 */
export function nonTcpRules(s: CaptureSettings): string[] {
  return [
    `-A ${s.forwardChain} -p tcp -j RETURN`,
    `-A ${s.forwardChain} -p icmp -j RETURN`,
    `-A ${s.forwardChain} -m set --match-set ${s.strictIpset} dst -m comment --comment "${NON_TCP_COMMENT}" -j DROP`,
  ];
}

/** The non-TCP rule's comment, the same in both backends. */
export const NON_TCP_COMMENT = 'meshlet: non-TCP to a STRICT pod';

/**
 * Anti-spoofing (raw PREROUTING, before conntrack and capture). The agent knows a workload by its
 * source address, so a packet with a captured pod's address must come from that pod: strict reverse
 * path (the route back to the source leaves by the interface the packet came in on), whatever the
 * node's rp_filter says. A pod with CAP_NET_RAW sending with a neighbour's address is dropped here,
 * so it never reaches the outbound port under the neighbour's identity. Where pods share one
 * interface (a bridge CNI) the route to each is that interface: not covered (README).
 */
export function antiSpoofRules(s: CaptureSettings): string[] {
  return [
    `-A ${s.antiSpoofChain} -m set --match-set ${s.ipset} src -m rpfilter --invert -m comment --comment "${ANTI_SPOOF_COMMENT}" -j DROP`,
  ];
}

/** The anti-spoofing rule's comment, the same in both backends. */
export const ANTI_SPOOF_COMMENT = 'meshlet: captured pod address from another interface';

/**
 * Source preservation. The agent connects to a local pod from the source pod's own address (a
 * transparent socket bound to it), so the application sees its real client. The pod answers that
 * address, which lives on another node or behind the agent: in mangle PREROUTING the replies of any
 * local transparent socket get this mark (Istio's, clear of kube-proxy's 0x4000 and 0x8000), and a
 * policy rule sends marked packets to a routing table whose one route delivers everything locally.
 */
export const SOURCE_MARK = { value: 0x539, mask: 0xfff } as const;
export const SOURCE_ROUTE_TABLE = 133;
/** Before the main table (32766), after anything a CNI put in front. */
export const SOURCE_RULE_PREF = 32000;
const hex = (n: number, width = 0) => `0x${n.toString(16).padStart(width, '0')}`;
const MARK_TEXT = `${hex(SOURCE_MARK.value)}/${hex(SOURCE_MARK.mask)}`;

export function sourceRules(s: CaptureSettings): string[] {
  return [
    `-A ${s.sourceChain} -p tcp -m socket --transparent -m comment --comment "meshlet: replies to source-preserving connections" -j MARK --set-xmark ${MARK_TEXT}`,
  ];
}

/** The nftables form of sourceRules, as `nft list` prints it (the mask folded into the and-value). */
export function nftSourceRule(): string {
  const and = ((~SOURCE_MARK.mask >>> 0) | SOURCE_MARK.value) >>> 0;
  return `meta l4proto tcp socket transparent 1 meta mark set meta mark & ${hex(and, 8)} | ${hex(SOURCE_MARK.value, 8)} comment "meshlet: replies to source-preserving connections"`;
}

/**
 * `ip` arguments for the policy rule and the local route of its table: add (the route with replace,
 * which is idempotent) and delete (one rule per call).
 */
export function sourceRouteCommands(): { ruleAdd: string[]; ruleDel: string[]; routeReplace: string[]; routeDel: string[] } {
  const rule = ['fwmark', MARK_TEXT, 'lookup', String(SOURCE_ROUTE_TABLE)];
  const route = ['local', '0.0.0.0/0', 'dev', 'lo', 'table', String(SOURCE_ROUTE_TABLE)];
  return {
    ruleAdd: ['-4', 'rule', 'add', ...rule, 'pref', String(SOURCE_RULE_PREF)],
    ruleDel: ['-4', 'rule', 'del', ...rule],
    routeReplace: ['-4', 'route', 'replace', ...route],
    routeDel: ['-4', 'route', 'del', ...route],
  };
}

/** How many times `ip -4 rule show` lists meshlet's rule. */
export function sourceRuleCount(ipRuleShow: string): number {
  const want = `fwmark ${MARK_TEXT} lookup ${SOURCE_ROUTE_TABLE}`;
  return ipRuleShow.split('\n').filter((l) => l.includes(want)).length;
}

/** Whether `ip -4 route show table 133` holds the local default route. */
export function sourceRouteShown(ipRouteShow: string): boolean {
  return ipRouteShow.split('\n').some((l) => /^local (default|0\.0\.0\.0\/0) dev lo\b/.test(l.trim()));
}

/**
 * The IPv6 guard (ip6tables filter FORWARD). The mesh is IPv4: capture, identities by source address
 * and the tunnel. A captured pod's IPv6 address would otherwise be a way around all of it (plaintext,
 * no policy, STRICT not enforced), so new TCP connections to it are refused with a reset, the way
 * Istio's sidecars refuse inbound IPv6 when the mesh runs without it. Clients that try IPv6 first
 * (happy eyeballs) fall back to the pod's IPv4 address, through the mesh. Connections the node itself
 * opens (kubelet's probes) do not pass FORWARD and are left alone, as over IPv4.
 */
export function ipv6GuardRules(s: CaptureSettings): string[] {
  return [
    `-A ${s.ipv6Chain} -p tcp -m set --match-set ${s.ipset6} dst -m conntrack --ctstate NEW ` +
      `-m comment --comment "${IPV6_GUARD_COMMENT}" -j REJECT --reject-with tcp-reset`,
  ];
}

/** The IPv6 guard rule's comment, the same in both backends. */
export const IPV6_GUARD_COMMENT = 'meshlet: IPv6 to captured pod (the mesh is IPv4)';

/** sidecar mode: meshlet's chains inside the pod's namespace. */
export const SIDECAR_CHAINS = { inbound: 'MESHLET_POD_INBOUND', outbound: 'MESHLET_POD_OUTBOUND' } as const;

/**
 * sidecar mode, nat PREROUTING: connections arriving at the pod. The tunnel port (and the agent's
 * readiness and metrics ports) are the agent's own listeners; anything else is plaintext to the app
 * and goes to the inbound plaintext port. Connections made inside the pod (the agent's deliveries
 * to the app over loopback) were NATed in OUTPUT already and never reach this chain.
 */
// Comments without apostrophes: iptables-save prints them escaped, and the installed rules must
// compare equal to these.
export function sidecarInboundRules(s: CaptureSettings): string[] {
  const c = SIDECAR_CHAINS.inbound;
  return [
    `-A ${c} -p tcp -m multiport --dports ${s.passPorts.join(',')} -m comment --comment "meshlet: sidecar ports" -j RETURN`,
    `-A ${c} -p tcp -m comment --comment "meshlet: plaintext to this pod" -j REDIRECT --to-ports ${s.inboundPlaintextPort}`,
  ];
}

/**
 * sidecar mode, nat OUTPUT: everything the app opens goes to the outbound port, except the agent's
 * own connections (its group id) and traffic that stays inside the pod (loopback, the pod's own IP).
 */
export function sidecarOutboundRules(s: CaptureSettings): string[] {
  const c = SIDECAR_CHAINS.outbound;
  return [
    `-A ${c} -m owner --gid-owner ${s.proxyGid} -m comment --comment "meshlet: sidecar connections" -j RETURN`,
    `-A ${c} -o lo -m comment --comment "meshlet: inside the pod" -j RETURN`,
    `-A ${c} -p tcp -m comment --comment "meshlet: app outbound" -j REDIRECT --to-ports ${s.outboundPort}`,
  ];
}

/** iptables (4) or ip6tables (6): each has its own tables, saved and restored by its own tools. */
export type IpFamily = 4 | 6;
