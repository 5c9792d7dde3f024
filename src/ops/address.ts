/** Splits `host:port` (`:9809`, `127.0.0.1:9809`, `[::1]:9809`); undefined when malformed. */
export function parseAddress(address: string): { hostname: string; port: number } | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(address);
  const port = Number(match?.[3]);
  if (!match || port > 65535) return undefined;
  // An empty host means every address, IPv6 and IPv4 alike ("::" takes both on Linux).
  return { hostname: match[1] ?? (match[2] || "::"), port };
}
