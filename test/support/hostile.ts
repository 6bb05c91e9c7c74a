// A hostile tunnel peer, for the end-to-end tests: run inside a network namespace, it attacks one
// pod's tunnel port (its node's agent answers) in one way and prints what happened as JSON.
//
//   node test/support/hostile.ts --attack NAME --target IP [--port 15008] --ca-dir DIR [--count N]
//
// Attacks: not-tls, wrong-alpn, no-client-cert, foreign-trust-domain, expired-cert, slow-handshake,
// malformed-h2, connect-elsewhere, connect-agent-port, oversized-headers, stream-flood, stream-flood-raw,
// connection-flood, hold-sockets, stop-reading (--count MiB echoed, then the TCP socket never read), expiring-session (a certificate valid for --count ms), connect-reset (--count CONNECTs, each cancelled with RST_STREAM as soon as it is
// sent, or one turn of the event loop later: the agent is still connecting to the pod).
// The valid-looking client certificates are made here from the mesh's root (the test's CA dir):
// an attacker holding a stolen but real identity is the strongest case.
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import { parseArgs } from 'node:util';
import { CaSigner, createCsr, createRootCa, generateRsaKey, parseWorkloadCsr } from '../../src/identity/ca.ts';
import { DirRootStore, loadRootSet } from '../../src/identity/roots.ts';

const { values: v } = parseArgs({ options: {
  attack: { type: 'string' }, target: { type: 'string' }, port: { type: 'string', default: '15008' },
  'ca-dir': { type: 'string' }, count: { type: 'string', default: '200' }, expect: { type: 'string' },
  hold: { type: 'string', default: '20000' },
} });
const target = String(v.target);
const port = Number(v.port);
const started = Date.now();
let reported = false;
/** Prints the one result line and exits once it is written (stdout to a pipe is asynchronous). */
const done = (outcome: string, detail: Record<string, unknown> = {}) => {
  if (reported) return;
  reported = true;
  process.stdout.write(`${JSON.stringify({ attack: v.attack, outcome, ms: Date.now() - started, ...detail })}\n`, () => process.exit(0));
};
setTimeout(() => done('no answer within 20 s'), Math.max(20_000, Number(v.hold) + 5_000));

/** A client certificate for `id`, signed by the mesh root, or by a root of its own. */
async function identity(id: string, opts: { foreignRoot?: boolean; expired?: boolean; ttlMs?: number } = {}): Promise<{ key: string; cert: string }> {
  const roots = await loadRootSet(new DirRootStore(String(v['ca-dir'])));
  const root = opts.foreignRoot ? await createRootCa({ trustDomain: 'evil.example' }) : roots.signing;
  const { privateKeyPem } = await generateRsaKey();
  const trustDomain = opts.foreignRoot ? 'evil.example' : roots.trustDomain;
  const csr = createCsr(privateKeyPem, id.replace('TD', trustDomain));
  const signer = new CaSigner(root);
  const cert = signer.signWorkload(parseWorkloadCsr(csr, trustDomain), opts.expired
    ? { ttlMs: 60_000, now: new Date(Date.now() - 3_600_000) } : { ttlMs: opts.ttlMs ?? 3_600_000 });
  return { key: privateKeyPem, cert };
}

function tlsOutcome(opts: tls.ConnectionOptions, after?: (s: tls.TLSSocket) => void): void {
  const s = tls.connect({ host: target, port, rejectUnauthorized: false, ...opts });
  s.once('secureConnect', () => { after?.(s); });
  // Read (and drop) whatever comes back: a paused socket would never see the agent's FIN.
  s.resume();
  s.on('error', (err: NodeJS.ErrnoException) => done('refused', { error: err.code ?? err.message }));
  s.once('close', () => done('closed'));
}

async function h2Session(): Promise<http2.ClientHttp2Session> {
  const id = await identity('spiffe://TD/ns/intruder/sa/stolen');
  const session = http2.connect(`https://${target}:${port}`, { ...id, ALPNProtocols: ['h2'], rejectUnauthorized: false, minVersion: 'TLSv1.3' } as http2.SecureClientSessionOptions);
  session.on('error', (err: NodeJS.ErrnoException) => done('session refused', { error: err.code ?? err.message }));
  await new Promise((r) => session.once('connect', r));
  return session;
}

function connectStatus(session: http2.ClientHttp2Session, authority: string, headers: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve) => {
    const stream = session.request({ ':method': 'CONNECT', ':authority': authority, ...headers }, { endStream: false });
    stream.on('response', (h) => resolve(`${h[':status']} ${h['x-meshlet-error'] ?? ''}`.trim()));
    stream.on('error', (err: NodeJS.ErrnoException) => resolve(`stream error ${err.code ?? err.message}`));
    stream.on('close', () => resolve(`stream closed ${stream.rstCode}`));
  });
}

switch (v.attack) {
  case 'not-tls': {
    const s = net.connect({ host: target, port }, () => s.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    let got = '';
    s.on('data', (d) => { got += d.toString('latin1'); });
    s.on('error', (err: NodeJS.ErrnoException) => done('refused', { error: err.code }));
    s.on('close', () => done('closed', { answeredInPlaintext: /HTTP\//.test(got) }));
    break;
  }
  case 'wrong-alpn':
    tlsOutcome({ ...(await identity('spiffe://TD/ns/intruder/sa/stolen')), ALPNProtocols: ['http/1.1'] });
    break;
  case 'no-client-cert':
    tlsOutcome({ ALPNProtocols: ['h2'] }, (s) => s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
    break;
  case 'foreign-trust-domain':
    tlsOutcome({ ...(await identity('spiffe://TD/ns/shop/sa/web', { foreignRoot: true })), ALPNProtocols: ['h2'] }, (s) => s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
    break;
  case 'expired-cert':
    tlsOutcome({ ...(await identity('spiffe://TD/ns/shop/sa/web', { expired: true })), ALPNProtocols: ['h2'] }, (s) => s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
    break;
  case 'slow-handshake': {
    // TCP only, then silence: the agent must give up on its own.
    const s = net.connect({ host: target, port });
    s.on('error', (err: NodeJS.ErrnoException) => done('refused', { error: err.code }));
    s.on('close', () => done('closed by the agent'));
    break;
  }
  case 'malformed-h2': {
    const id = await identity('spiffe://TD/ns/intruder/sa/stolen');
    tlsOutcome({ ...id, ALPNProtocols: ['h2'] }, (s) => {
      // The preface, then a frame with a type and length that make no sense.
      s.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
      s.write(Buffer.from([0xff, 0xff, 0xff, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]));
    });
    break;
  }
  case 'connect-elsewhere': {
    const session = await h2Session();
    done('answered', { status: await connectStatus(session, String(v.expect ?? '10.0.0.1:22')) });
    break;
  }
  case 'connect-agent-port': {
    const session = await h2Session();
    done('answered', { status: await connectStatus(session, `${target}:15008`) });
    break;
  }
  case 'oversized-headers': {
    const session = await h2Session();
    done('answered', { status: await connectStatus(session, `${target}:8080`, { 'x-junk': 'x'.repeat(200_000) }) });
    break;
  }
  case 'stream-flood': {
    const session = await h2Session();
    const n = Number(v.count);
    const statuses = await Promise.all(Array.from({ length: n }, () => connectStatus(session, `${target}:8080`)));
    const byStatus: Record<string, number> = {};
    for (const s of statuses) byStatus[s] = (byStatus[s] ?? 0) + 1;
    done('answered', { streams: n, byStatus, remoteMaxStreams: session.remoteSettings.maxConcurrentStreams });
    break;
  }
  case 'stream-flood-raw': {
    // Ignores the agent's SETTINGS (never acknowledges them, never respects the stream limit): opens
    // --count CONNECT streams at once with hand-made frames, then tallies what comes back.
    const id = await identity('spiffe://TD/ns/intruder/sa/stolen');
    const n = Number(v.count);
    // Each stream's first answer: a response (HEADERS) or a reset (RST_STREAM with its code).
    const answers = new Map<number, string>();
    let goaway: undefined | { lastStreamId: number; code: number };
    const tally = () => {
      const counts: Record<string, number> = {};
      for (const a of answers.values()) counts[a] = (counts[a] ?? 0) + 1;
      return { streams: n, answered: answers.size, responses200: counts['200'] ?? 0,
        otherResponses: counts.other ?? 0, resets: Object.fromEntries(Object.entries(counts).filter(([k]) => k.startsWith('rst ')).map(([k, c]) => [k.slice(4), c])), goaway };
    };
    let inbox = Buffer.alloc(0);
    tlsOutcome({ ...id, ALPNProtocols: ['h2'] }, (s) => {
      s.removeAllListeners('close');
      s.once('close', () => done('answered', { ...tally(), closed: true }));
      s.on('data', (chunk: Buffer) => {
        inbox = Buffer.concat([inbox, chunk]);
        while (inbox.length >= 9) {
          const length = inbox.readUIntBE(0, 3);
          if (inbox.length < 9 + length) break;
          const type = inbox[3];
          const stream = inbox.readUInt32BE(5) & 0x7fffffff;
          const payload = inbox.subarray(9, 9 + length);
          // `:status: 200` is HPACK static entry 8, sent as the one byte 0x88.
          if (type === 0x01 && !answers.has(stream)) answers.set(stream, payload[0] === 0x88 ? '200' : 'other');
          else if (type === 0x03 && !answers.has(stream)) answers.set(stream, `rst ${payload.readUInt32BE(0)}`);
          else if (type === 0x07) goaway = { lastStreamId: payload.readUInt32BE(0) & 0x7fffffff, code: payload.readUInt32BE(4) };
          inbox = inbox.subarray(9 + length);
        }
        if (answers.size >= n) done('answered', tally());
      });
      const frame = (type: number, flags: number, stream: number, payload: Buffer) => {
        const head = Buffer.alloc(9);
        head.writeUIntBE(payload.length, 0, 3);
        head[3] = type;
        head[4] = flags;
        head.writeUInt32BE(stream, 5);
        return Buffer.concat([head, payload]);
      };
      // Literal header fields with indexed names: :method (static 2) CONNECT, :authority (static 1).
      const authority = Buffer.from(`${target}:8080`);
      const block = Buffer.concat([Buffer.from([0x02, 7]), Buffer.from('CONNECT'), Buffer.from([0x01, authority.length]), authority]);
      const frames = [Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), frame(0x04, 0, 0, Buffer.alloc(0))];
      for (let i = 0; i < n; i++) frames.push(frame(0x01, 0x04, 2 * i + 1, block));
      s.write(Buffer.concat(frames));
      setTimeout(() => done('partly answered', tally()), 15_000);
    });
    break;
  }
  case 'connect-reset': {
    const session = await h2Session();
    const n = Number(v.count);
    let sent = 0;
    let answered = 0;
    const one = (i: number) => new Promise<void>((resolve) => {
      const stream = session.request({ ':method': 'CONNECT', ':authority': `${target}:8080` }, { endStream: false });
      sent++;
      stream.on('response', () => { answered++; });
      stream.on('error', () => undefined);
      stream.once('close', () => resolve());
      const cancel = () => stream.close(http2.constants.NGHTTP2_CANCEL);
      if (i % 2 === 0) cancel(); else setImmediate(cancel);
    });
    // 50 at a time: under the agent's stream limit, so every CONNECT reaches it.
    for (let i = 0; i < n; i += 50) await Promise.all(Array.from({ length: Math.min(50, n - i) }, (_, k) => one(i + k)));
    done('cancelled', { sent, answered });
    break;
  }
  case 'expiring-session': {
    // A real identity whose certificate expires in --count ms: one CONNECT before expiry, kept open;
    // another on the same session after it. A session must not outlive its certificate.
    const id = await identity('spiffe://TD/ns/intruder/sa/stolen', { ttlMs: Number(v.count) });
    const session = http2.connect(`https://${target}:${port}`, { ...id, ALPNProtocols: ['h2'], rejectUnauthorized: false, minVersion: 'TLSv1.3' } as http2.SecureClientSessionOptions);
    session.on('error', () => undefined);
    await new Promise((r) => session.once('connect', r));
    const expiresAt = Date.parse((session.socket as tls.TLSSocket).getX509Certificate()!.validTo);
    let goawayAt: number | undefined;
    session.once('goaway', () => { goawayAt = Date.now(); });
    const first = session.request({ ':method': 'CONNECT', ':authority': `${target}:8080` }, { endStream: false });
    first.on('error', () => undefined);
    first.resume();
    const firstClosed = new Promise<number>((r) => first.once('close', () => r(Date.now())));
    const firstStatus = await new Promise<string>((r) => { first.once('response', (h) => r(String(h[':status']))); first.once('close', () => r('closed')); });
    await new Promise((r) => setTimeout(r, Math.max(0, expiresAt - Date.now() + 1_000)));
    let second: string;
    try {
      second = await connectStatus(session, `${target}:8080`);
    } catch (err) {
      second = `refused ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
    }
    const closedAt = await Promise.race([firstClosed, new Promise<undefined>((r) => setTimeout(() => r(undefined), 8_000))]);
    done('observed', {
      first: firstStatus, second, goawayAfterExpiryMs: goawayAt === undefined ? null : goawayAt - expiresAt,
      openStreamClosedAfterExpiryMs: closedAt === undefined ? null : closedAt - expiresAt,
    });
    break;
  }
  case 'stop-reading': {
    // A real identity whose TCP stops reading: through a relay of its own, it sends --count MiB on
    // a CONNECT to the pod's echo server with windows wide open, reads the first 8 MiB coming back
    // (the echo is flowing), then never reads the agent's socket again: the echo of what it sent
    // meanwhile (up to the agent's window) piles up in the agent's kernel send queue. Prints a
    // line once it stopped reading; holds the socket --hold ms.
    const id = await identity('spiffe://TD/ns/intruder/sa/stolen');
    let stopped = false;
    const relay = net.createServer((client) => {
      const up = net.connect({ host: target, port });
      client.on('error', () => undefined);
      up.on('error', () => undefined);
      client.on('data', (d) => up.write(d));
      let got = 0;
      up.on('data', (d) => {
        got += d.length;
        client.write(d);
        if (got > 8 << 20 && !stopped) {
          stopped = true;
          up.pause();
          process.stdout.write(`${JSON.stringify({ stoppedReadingAfter: got, ms: Date.now() - started })}\n`);
          setTimeout(() => done('held'), Number(v.hold));
        }
      });
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    const wide = 2 ** 31 - 1;
    const session = http2.connect(`https://127.0.0.1:${(relay.address() as net.AddressInfo).port}`,
      { ...id, ALPNProtocols: ['h2'], rejectUnauthorized: false, minVersion: 'TLSv1.3', settings: { initialWindowSize: wide } } as http2.SecureClientSessionOptions);
    session.on('error', () => undefined);
    await new Promise((r) => session.once('connect', r));
    session.setLocalWindowSize(wide);
    const stream = session.request({ ':method': 'CONNECT', ':authority': `${target}:8080` }, { endStream: false });
    stream.on('error', () => undefined);
    stream.resume();
    await new Promise((r) => stream.once('response', r));
    // What the agent's windows take, as fast as they take it (piling it all up at once would
    // trip Node's session memory cap on the agent, which resets the stream: another story).
    const chunk = Buffer.alloc(1 << 20, 0x45); // 'E': the pod's server echoes (demo/peer.ts)
    for (let i = 0; i < Number(v.count); i++) {
      if (!stream.write(chunk)) await new Promise((r) => stream.once('drain', r));
    }
    break;
  }
  case 'hold-sockets': {
    // --count plain TCP connections to the tunnel port that never start a handshake, held 8 s:
    // prints a line once they are open, then the result.
    const sockets = await Promise.all(Array.from({ length: Number(v.count) }, () => new Promise<net.Socket | undefined>((resolve) => {
      const s = net.connect({ host: target, port });
      s.once('connect', () => resolve(s));
      s.once('error', () => resolve(undefined));
    })));
    const held = () => sockets.filter((s) => s && !s.destroyed).length;
    process.stdout.write(`${JSON.stringify({ holding: held() })}\n`);
    setTimeout(() => done('held', { stillOpen: held() }), 8_000);
    break;
  }
  case 'connection-flood': {
    const n = Number(v.count);
    let open = 0;
    let refused = 0;
    const sockets: net.Socket[] = [];
    await Promise.all(Array.from({ length: n }, () => new Promise<void>((resolve) => {
      const s = net.connect({ host: target, port });
      sockets.push(s);
      s.on('connect', () => { open++; });
      // A socket the agent keeps is still open after a moment; a refused one is reset at once.
      s.on('error', () => { refused++; resolve(); });
      s.on('close', () => resolve());
      setTimeout(resolve, 1500);
    })));
    const stillOpen = sockets.filter((s) => !s.destroyed && s.readyState === 'open').length;
    done('flooded', { attempted: n, connected: open, refused, stillOpen });
    break;
  }
  default:
    process.stderr.write(`unknown attack ${v.attack}\n`);
    process.exit(2);
}
