/**
 * The keys of the fields on log lines, each spelled once: a log query written against one line
 * finds the same value on every other line that has it.
 */
export const LogKey = {
  code: "code",
  count: "count",
  context: "context",
  csiSocketPath: "csi_socket_path",
  details: "details",
  durationMs: "duration_ms",
  endpoint: "endpoint",
  error: "error",
  graceMs: "grace_ms",
  healthAddr: "health_addr",
  maxConnections: "max_connections",
  method: "method",
  nodeId: "node_id",
  path: "path",
  paths: "paths",
  pluginName: "plugin_name",
  reason: "reason",
  registrationSocket: "registration_socket",
  remote: "remote",
  signal: "signal",
  socketPath: "socket_path",
  targetPath: "target_path",
  unloggedSinceLast: "unlogged_since_last",
  version: "version",
  volumeId: "volume_id",
  volumePath: "volume_path",
  workloadApiSocketDir: "workload_api_socket_dir",
} as const;
