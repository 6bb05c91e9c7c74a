// Which iptables the node runs: legacy (the kernel's x_tables) or nft (iptables rules in nf_tables).
// Rules of the two live in different tables whose order nobody controls, so meshlet must write into
// the one kube-proxy and the CNI use, or its jump ahead of kube-proxy's means nothing. Decided as
// kube-proxy's iptables wrapper decides (kubernetes-sigs/iptables-wrappers): the kubelet's hint
// chains first, then the backend holding more of the host's rules.
import type { CaptureSettings, IpFamily } from './rules.ts';
import type { CaptureTools } from './tools.ts';

export type IptablesMode = 'legacy' | 'nft';

/** What each backend holds: whether its save tool ran, its rules (meshlet's own not counted), the kubelet's hint, kube-proxy's chain. */
export interface BackendReport {
  available: boolean;
  rules: number;
  hint: boolean;
  /** kube-proxy's KUBE-SERVICES chain (kube-proxy in iptables mode, in this backend). */
  kubeProxy: boolean;
}

/** The mode to write in, or `auto` (the system's default iptables) when neither backend could be read. */
export function chooseIptablesMode(r: Record<IptablesMode, BackendReport>): { mode: IptablesMode | 'auto'; reason: string } {
  // Without CAP_NET_ADMIN or the tools: whatever then runs fails with its own, clearer error.
  if (!r.legacy.available && !r.nft.available) return { mode: 'auto', reason: 'neither iptables-legacy-save nor iptables-nft-save could read the tables' };
  if (!r.legacy.available) return { mode: 'nft', reason: 'only iptables-nft is installed' };
  if (!r.nft.available) return { mode: 'legacy', reason: 'only iptables-legacy is installed' };
  if (r.nft.hint !== r.legacy.hint) {
    const mode = r.nft.hint ? 'nft' : 'legacy';
    return { mode, reason: `the kubelet's hint chain is in iptables-${mode}` };
  }
  const counts = `${r.legacy.rules} rules in legacy, ${r.nft.rules} in nft`;
  if (r.legacy.rules > r.nft.rules) return { mode: 'legacy', reason: `the host's rules are there (${counts})` };
  if (r.nft.rules > r.legacy.rules) return { mode: 'nft', reason: `the host's rules are there (${counts})` };
  // Nothing to follow: the default of today's distributions (Debian's, the image's, alternatives).
  return { mode: 'nft', reason: `nothing to follow (${counts}): the distributions' default` };
}

/**
 * One line per backend from the node: `legacy|nft <saved 0|1> <rules> <hint lines> <KUBE-SERVICES lines>`, counted in the
 * shell (a large node's kube-proxy rules never reach the agent). The kubelet makes its hint chain
 * (KUBE-IPTABLES-HINT, the canary before 1.24) in the backend it uses.
 */
export const REPORT_SCRIPT = (['legacy', 'nft'] as const).map((m) => [
  `if command -v iptables-${m}-save >/dev/null && out=$( { iptables-${m}-save; ip6tables-${m}-save; } 2>/dev/null ); then`,
  `  echo "${m} 1 $(printf '%s\\n' "$out" | grep '^-' | grep -vc MESHLET) $(printf '%s\\n' "$out" | grep -cE '^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) ') $(printf '%s\\n' "$out" | grep -c '^:KUBE-SERVICES ')"`,
  `else echo "${m} 0 0 0 0"; fi`,
].join('\n')).join('\n');

export function parseReport(text: string): Record<IptablesMode, BackendReport> {
  const none = { available: false, rules: 0, hint: false, kubeProxy: false };
  const out: Record<IptablesMode, BackendReport> = { legacy: none, nft: none };
  for (const line of text.split('\n')) {
    const [m, saved, rules, hints, services] = line.trim().split(/\s+/);
    if (m === 'legacy' || m === 'nft') out[m] = { available: saved === '1', rules: Number(rules) || 0, hint: Number(hints) > 0, kubeProxy: Number(services) > 0 };
  }
  return out;
}

/**
 * The settings with the iptables mode decided: as given (`--iptables-mode legacy|nft`), or read off
 * the node for `auto`. The nftables backend writes no iptables rules: nothing to decide.
 */
export async function resolveIptablesMode(tools: CaptureTools, s: CaptureSettings): Promise<{ settings: CaptureSettings; reason: string }> {
  if (s.backend === 'nftables') return { settings: s, reason: 'the nftables backend writes no iptables rules' };
  if (s.iptablesMode !== 'auto') return { settings: s, reason: 'as --iptables-mode says' };
  const { mode, reason } = chooseIptablesMode(parseReport((await tools.run('sh', ['-c', REPORT_SCRIPT])).stdout));
  return { settings: { ...s, iptablesMode: mode }, reason };
}

/** The save or restore tool of a family in the settings' mode (`auto`, not yet decided: the system's default). */
export function iptablesTool(s: Pick<CaptureSettings, 'iptablesMode'>, family: IpFamily, tool: 'save' | 'restore'): string {
  const base = family === 6 ? 'ip6tables' : 'iptables';
  return s.iptablesMode === 'auto' ? `${base}-${tool}` : `${base}-${s.iptablesMode}-${tool}`;
}

