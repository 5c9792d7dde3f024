// Load generator, run as a process of its own so that its work does not slow the test's probes:
// `bun tests/helpers/http-load.ts <port> <path> <clients> <seconds> <from> [<pipeline>]`.
// Each client keeps a connection to 127.0.0.1:<port> and loops GET <path> on it, sending the
// next request as soon as an answer is complete, reconnecting when the server closes. <from> is
// `<first address>/<count>`: the clients connect from <count> consecutive loopback addresses
// (the whole of 127/8 is loopback), round robin, as many remote clients would. With <pipeline>,
// a client writes that many requests at once on each connection instead of looping (0: it sends
// nothing). It stops by itself after <seconds> and prints one JSON line: answers, connections,
// refused (closed before any answer) and the most connections open at once.
import { connect, type Socket } from "node:net";

const [port, path, clients, seconds, from, pipeline] = [
  Number(process.argv[2]),
  process.argv[3] ?? "/healthz",
  Number(process.argv[4]),
  Number(process.argv[5]),
  process.argv[6] ?? "127.0.0.1/1",
  Number(process.argv[7] ?? 1),
];
const [first = "127.0.0.1", count = "1"] = from.split("/");
const base = first.split(".").map(Number);
const sources = Array.from({ length: Number(count) }, (_, i) => {
  const address = [...base];
  address[3] = (address[3] ?? 0) + i;
  return address.join(".");
});
const deadline = performance.now() + seconds * 1000;
const request = `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`;
const totals = { answers: 0, connections: 0, refused: 0, open: 0, maxOpen: 0 };

function client(localAddress: string): Promise<void> {
  return new Promise((resolve) => {
    const loop = () => {
      if (performance.now() >= deadline) {
        resolve();
        return;
      }
      const socket: Socket = connect({ host: "127.0.0.1", port, localAddress });
      let buffer = "";
      let connected = false;
      let answered = false;
      socket.setEncoding("latin1");
      socket.on("connect", () => {
        connected = true;
        totals.connections++;
        totals.maxOpen = Math.max(totals.maxOpen, ++totals.open);
        socket.write(request.repeat(pipeline));
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
          answered = true;
          if (performance.now() >= deadline) {
            socket.destroy();
            return;
          }
          if (pipeline === 1) socket.write(request);
        }
      });
      socket.on("error", () => {});
      socket.on("close", () => {
        if (connected) totals.open--;
        if (!answered) totals.refused++;
        // A looping client closed after answers reconnects at once; one refused, or one that
        // pipelines or sends nothing, a second later: thousands of them still open thousands of
        // connections a second.
        setTimeout(loop, answered && pipeline === 1 ? 0 : 1_000);
      });
    };
    loop();
  });
}

await Promise.all(
  Array.from({ length: clients }, (_, i) => client(sources[i % sources.length] as string)),
);
console.log(JSON.stringify(totals));
process.exit(0);
