// Raw HTTP over node:net, byte for byte what the test writes: requests no fetch() would send
// (no Host, a bad Host, garbage), and probes that open a connection each, as the kubelet's do.
import { connect } from "node:net";

export interface RawAnswer {
  /** 0 when nothing parseable came back. */
  status: number;
  body: string;
  /** Everything received, headers included. */
  raw: string;
}

/**
 * Sends `request` on a fresh connection to 127.0.0.1:port (from `localAddress`, another loopback
 * address if given) and collects what comes back until the server closes the connection, a
 * complete answer arrived, or `timeoutMs` passed (then rejects).
 */
export function rawRequest(
  port: number,
  request: string,
  timeoutMs = 5_000,
  localAddress?: string,
): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port, localAddress });
    let raw = "";
    const finish = (error?: Error) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(parse(raw));
    };
    const timer = setTimeout(
      () => finish(new Error(`no answer within ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      raw += chunk;
      if (complete(raw)) finish();
    });
    socket.on("close", () => finish());
    socket.on("error", (error) => finish(error));
    socket.write(request, "latin1");
  });
}

/** A kubelet-like probe: GET on a connection of its own, given `timeoutMs` to answer. */
export function probe(
  port: number,
  path: string,
  timeoutMs: number,
  localAddress?: string,
): Promise<RawAnswer> {
  return rawRequest(
    port,
    `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n`,
    timeoutMs,
    localAddress,
  );
}

function parse(raw: string): RawAnswer {
  const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(raw)?.[1] ?? 0);
  const split = raw.indexOf("\r\n\r\n");
  return { status, body: split === -1 ? "" : raw.slice(split + 4), raw };
}

/** True once `raw` holds a whole answer with a Content-Length. */
function complete(raw: string): boolean {
  const split = raw.indexOf("\r\n\r\n");
  if (split === -1) return false;
  const length = /^content-length: *(\d+)/im.exec(raw.slice(0, split))?.[1];
  return length !== undefined && raw.length - split - 4 >= Number(length);
}
