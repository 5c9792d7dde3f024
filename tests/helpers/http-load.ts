// Load generator, run as a process of its own so that its work does not slow the test's probes:
// `bun tests/helpers/http-load.ts <port> <path> <clients> <seconds>`. Each client keeps a
// connection to 127.0.0.1:<port> and loops GET <path> on it, sending the next request as soon as
// an answer is complete, reconnecting when the server closes. It stops by itself after <seconds>
// and prints one JSON line: answers, reconnects and refused connections.
import { connect, type Socket } from "node:net";

const [port, path, clients, seconds] = [
  Number(process.argv[2]),
  process.argv[3] ?? "/healthz",
  Number(process.argv[4]),
  Number(process.argv[5]),
];
const deadline = performance.now() + seconds * 1000;
const request = `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;
const totals = { answers: 0, connections: 0, refused: 0, open: 0, maxOpen: 0 };

function client(): Promise<void> {
  return new Promise((resolve) => {
    const loop = () => {
      if (performance.now() >= deadline) {
        resolve();
        return;
      }
      const socket: Socket = connect({ host: "127.0.0.1", port });
      let buffer = "";
      let connected = false;
      socket.setEncoding("latin1");
      socket.on("connect", () => {
        connected = true;
        totals.connections++;
        totals.maxOpen = Math.max(totals.maxOpen, ++totals.open);
        socket.write(request);
      });
      socket.on("data", (chunk: string) => {
        buffer += chunk;
        for (;;) {
          const split = buffer.indexOf("\r\n\r\n");
          if (split === -1) return;
          const length = Number(/content-length: *(\d+)/i.exec(buffer.slice(0, split))?.[1] ?? 0);
          if (buffer.length < split + 4 + length) return;
          buffer = buffer.slice(split + 4 + length);
          totals.answers++;
          if (performance.now() >= deadline) {
            socket.destroy();
            return;
          }
          socket.write(request);
        }
      });
      socket.on("error", () => {
        if (!connected) totals.refused++;
      });
      socket.on("close", () => {
        if (connected) totals.open--;
        // A refused or closed connection is opened again after a short pause.
        setTimeout(loop, connected ? 0 : 50);
      });
    };
    loop();
  });
}

await Promise.all(Array.from({ length: clients }, client));
console.log(JSON.stringify(totals));
process.exit(0);
