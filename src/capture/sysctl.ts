// Kernel settings the node needs for upgrades that lose nothing. net.ipv4.tcp_migrate_req (Linux
// 5.14+) moves connections waiting in a closing listener's accept queue to another SO_REUSEPORT
// listener on the same port, instead of resetting them: the old agent's queue goes to the new one.
import { readFile, writeFile } from 'node:fs/promises';

export const MIGRATE_REQ = '/proc/sys/net/ipv4/tcp_migrate_req';

/** Sets tcp_migrate_req to 1 in this network namespace. Says what happened; never throws. */
export async function enableMigrateReq(path = MIGRATE_REQ): Promise<{ ok: boolean; detail: string }> {
  try {
    if ((await readFile(path, 'utf8')).trim() === '1') return { ok: true, detail: 'already on' };
    await writeFile(path, '1\n');
    return { ok: true, detail: 'turned on' };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'this kernel has no tcp_migrate_req (older than 5.14)'
      : code === 'EROFS' || code === 'EACCES' || code === 'EPERM' ? '/proc/sys is read-only here (set net.ipv4.tcp_migrate_req=1 in the node\'s sysctl configuration)'
        : (err as Error).message;
    return { ok: false, detail: why };
  }
}
