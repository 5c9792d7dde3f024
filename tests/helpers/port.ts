/**
 * A TCP port on the loopback address that nothing listens on now: the operating system picks it
 * (a bind to port 0), so that tests running at once never pick the same one.
 */
export function freePort(): number {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const { port } = listener;
  listener.stop(true);
  return port;
}
