import { describe, expect, test } from "bun:test";
import { parseArgs } from "citty";
import { normalizeArgv } from "../../../src/cli/argv.ts";
import { args, configFromArgs, parsedArgs } from "../../../src/cli/config.ts";
import { ConfigError, validatePluginName } from "../../../src/cli/settings.ts";
import { contextProblem, usableByContainers } from "../../../src/selinux/context.ts";

// No defaults are given here: configFromArgs takes the settings table's own, so that a changed
// default fails the tests that name it.
function config(flags: Record<string, unknown>, env: Record<string, string> = {}) {
  return configFromArgs({ _: [], "workload-api-socket-dir": "/run/spire", ...flags }, env);
}

describe("normalizeArgv", () => {
  test("turns Go-style one-dash flags into long flags", () => {
    expect(
      normalizeArgv(["-workload-api-socket-dir", "/run/spire", "-csi-socket-path=/x/csi.sock"]),
    ).toEqual(["--workload-api-socket-dir", "/run/spire", "--csi-socket-path=/x/csi.sock"]);
  });

  test("leaves long flags, one-letter flags, values and everything after -- alone", () => {
    expect(normalizeArgv(["--plugin-name", "a.b", "-h", "-v", "/path", "--", "-node-id"])).toEqual([
      "--plugin-name",
      "a.b",
      "-h",
      "-v",
      "/path",
      "--",
      "-node-id",
    ]);
  });
});

describe("configFromArgs", () => {
  test("reads the node id from the variable named by -node-id-env", () => {
    expect(config({}, { MY_NODE_NAME: "node-a" }).nodeId).toBe("node-a");
    expect(config({ "node-id-env": "NODE" }, { NODE: "node-b" }).nodeId).toBe("node-b");
  });

  test("-node-id wins over the environment", () => {
    expect(config({ "node-id": "node-c" }, { MY_NODE_NAME: "node-a" }).nodeId).toBe("node-c");
  });

  test("keeps the reference's defaults, and docs/configuration.md's", () => {
    // Literal values, not the table's: a changed default must fail here.
    const { policy, ...resolved } = config({}, { MY_NODE_NAME: "n" });
    expect(policy.enforcing).toBe(false);
    expect(resolved).toEqual({
      workloadApiSocketDir: "/run/spire",
      allowSymlinkedSocketDir: false,
      selfRestartBackoffMs: 30_000,
      csiSocketPath: "/spiffe-csi/csi.sock",
      pluginName: "csi.spiffe.io",
      nodeId: "n",
      logLevel: "info",
      logFormat: "text",
      mountTimeoutMs: 30_000,
      inspectTimeoutMs: 5_000,
      healthAddr: undefined,
      maxConnections: 256,
      connectionIdleTimeoutMs: 60_000,
      kubeletRegistration: undefined,
      selinuxLabel: "auto",
      selinuxContext: "system_u:object_r:container_file_t:s0",
      recursiveBind: false,
      allowWritableSubmounts: false,
    });
  });

  test("--kubelet-registration-path defaults to --csi-socket-path", () => {
    const resolved = config(
      {
        "kubelet-registration-dir": "/var/lib/kubelet/plugins_registry",
        "csi-socket-path": "/x/c.sock",
      },
      { MY_NODE_NAME: "n" },
    );
    expect(resolved.kubeletRegistration).toEqual({
      dir: "/var/lib/kubelet/plugins_registry",
      endpoint: "/x/c.sock",
    });
  });

  test("labels for SELinux when the node runs it, with container_file_t at s0, by default", () => {
    const resolved = config({}, { MY_NODE_NAME: "n" });
    expect(resolved.selinuxLabel).toBe("auto");
    expect(resolved.selinuxContext).toBe("system_u:object_r:container_file_t:s0");
  });

  test("takes --selinux-label and --selinux-context", () => {
    const resolved = config(
      { "selinux-label": "on", "selinux-context": "system_u:object_r:svirt_sandbox_file_t:s0" },
      { MY_NODE_NAME: "n" },
    );
    expect(resolved.selinuxLabel).toBe("on");
    expect(resolved.selinuxContext).toBe("system_u:object_r:svirt_sandbox_file_t:s0");
    expect(config({ "selinux-label": "off" }, { MY_NODE_NAME: "n" }).selinuxLabel).toBe("off");
  });

  const problems: [string, Record<string, unknown>, Record<string, string>, RegExp][] = [
    [
      "no socket dir",
      { "workload-api-socket-dir": undefined },
      { MY_NODE_NAME: "n" },
      /--workload-api-socket-dir is required/,
    ],
    [
      "relative socket dir",
      { "workload-api-socket-dir": "run/spire" },
      { MY_NODE_NAME: "n" },
      /absolute/,
    ],
    ["no node id", {}, {}, /node id is required.*MY_NODE_NAME/],
    [
      "bad plugin name",
      { "plugin-name": "-bad" },
      { MY_NODE_NAME: "n" },
      /plugin name "-bad" is not valid/,
    ],
    ["bad log level", { "log-level": "loud" }, { MY_NODE_NAME: "n" }, /--log-level must be one of/],
    [
      "bad log format",
      { "log-format": "xml" },
      { MY_NODE_NAME: "n" },
      /--log-format must be one of/,
    ],
    ["bad mount timeout", { "mount-timeout": "0" }, { MY_NODE_NAME: "n" }, /--mount-timeout/],
    [
      "a connection cap that is not a whole number",
      { "max-connections": "1.5" },
      { MY_NODE_NAME: "n" },
      /--max-connections must be a positive whole number/,
    ],
    ["no connections", { "max-connections": "0" }, { MY_NODE_NAME: "n" }, /--max-connections/],
    [
      "a bad idle timeout",
      { "connection-idle-timeout": "-1" },
      { MY_NODE_NAME: "n" },
      /--connection-idle-timeout must be a positive number of seconds/,
    ],
    ["unknown flag", { bogus: "1" }, { MY_NODE_NAME: "n" }, /unknown flag --bogus/],
    ["positional", { _: ["serve"] }, { MY_NODE_NAME: "n" }, /unexpected argument "serve"/],
    ["-node-id with no value", { "node-id": "" }, { MY_NODE_NAME: "n" }, /--node-id needs a value/],
    [
      "bad --selinux-label",
      { "selinux-label": "yes" },
      { MY_NODE_NAME: "n" },
      /--selinux-label must be one of auto, on, off, got "yes"/,
    ],
    [
      "bad --selinux-context",
      { "selinux-context": "container_file_t" },
      { MY_NODE_NAME: "n" },
      /--selinux-context must be user:role:type:level/,
    ],
    [
      "--selinux-context with no value",
      { "selinux-context": "" },
      { MY_NODE_NAME: "n" },
      /--selinux-context needs a value/,
    ],
    [
      "--no-node-id-env",
      { "node-id-env": false },
      { MY_NODE_NAME: "n" },
      /--node-id-env needs a value/,
    ],
  ];
  for (const [name, flags, env, message] of problems) {
    test(`rejects ${name}`, () => {
      expect(() => config(flags, env)).toThrow(ConfigError);
      expect(() => config(flags, env)).toThrow(message);
    });
  }
});

describe("--recursive-bind and --allow-writable-submounts", () => {
  /** The flags as citty reads a command line, after the Go-style rewrite. */
  function fromArgv(...argv: string[]) {
    const parsed = parseArgs(
      normalizeArgv(["-workload-api-socket-dir", "/run/spire", "-node-id", "n", ...argv]),
      args,
    );
    return configFromArgs(parsed as Record<string, unknown>, {});
  }

  test("are off by default", () => {
    const resolved = fromArgv();
    expect(resolved.recursiveBind).toBe(false);
    expect(resolved.allowWritableSubmounts).toBe(false);
  });

  test.each([
    [["--recursive-bind"], true],
    [["-recursive-bind"], true],
    [["--recursive-bind=true"], true],
    [["-recursive-bind=true"], true],
    [["--recursive-bind=false"], false],
    [["-recursive-bind=false"], false],
  ])("%p sets recursive bind to %p", (argv, on) => {
    expect(fromArgv(...argv).recursiveBind).toBe(on);
  });

  test("--allow-writable-submounts waives the read-only rule of --recursive-bind", () => {
    for (const spelling of ["--allow-writable-submounts", "-allow-writable-submounts=true"]) {
      const resolved = fromArgv("-recursive-bind", spelling);
      expect(resolved.recursiveBind).toBe(true);
      expect(resolved.allowWritableSubmounts).toBe(true);
    }
  });

  test("a separate value is a stray argument, as with Go's boolean flags", () => {
    expect(() => fromArgv("--recursive-bind", "false")).toThrow(/unexpected argument "false"/);
  });

  test("--allow-writable-submounts alone is refused", () => {
    expect(() => fromArgv("--allow-writable-submounts")).toThrow(
      "--allow-writable-submounts applies only with --recursive-bind",
    );
  });

  test("a value given where citty expects none is refused", () => {
    expect(() => config({ "recursive-bind": "yes" }, { MY_NODE_NAME: "n" })).toThrow(
      "--recursive-bind takes no value",
    );
  });
});

describe("--allow", () => {
  /** The flags as the driver reads a command line: citty's parse, with every repeated value. */
  function fromArgv(...words: string[]) {
    const argv = normalizeArgv([
      "-workload-api-socket-dir",
      "/run/spire",
      "-node-id",
      "n",
      ...words,
    ]);
    return configFromArgs(parsedArgs(parseArgs(argv, args), argv), {});
  }
  const rules = (...words: string[]) => fromArgv(...words).policy.describe();

  test("unset: every pod", () => {
    expect(fromArgv().policy.enforcing).toBe(false);
    expect(rules()).toBe("every pod (no --allow rule)");
  });

  test("every spelling, repeated, in order; commas join rules", () => {
    expect(
      rules(
        "-allow",
        "a",
        "--allow=b/x",
        "-allow=c",
        "--allow",
        "d,e/y",
        "--recursive-bind",
        "--allowWritableSubmounts",
      ),
    ).toBe("a/*, b/x, c/*, d/*, e/y");
  });

  test("a flag taking a value takes the next word as citty does, even one like --allow", () => {
    const resolved = fromArgv("--node-id", "--allow", "--allow", "team-a");
    expect(resolved.nodeId).toBe("--allow");
    expect(resolved.policy.describe()).toBe("team-a/*");
  });

  test("words after -- are not flags", () => {
    expect(() => fromArgv("--allow", "a", "--", "--allow", "b")).toThrow(/unexpected argument/);
  });

  test.each([
    [["--allow"], "--allow needs a value"],
    [["--allow="], "--allow needs a value"],
    [["--allow", "a", "--allow"], "--allow needs a value"],
    [["--no-allow"], "--allow needs a value"],
    [["--allow", "Team"], '--allow "Team": "Team" is not a namespace name'],
    [["--allow", "a", "--allow", "b/c/d"], '--allow "b/c/d": a rule is NAMESPACE or'],
  ])("%p is a setting error", (words, message) => {
    expect(() => fromArgv(...words)).toThrow(ConfigError);
    expect(() => fromArgv(...words)).toThrow(message);
  });
});

describe("validatePluginName", () => {
  test.each(["csi.spiffe.io", "a", "x-y.example.com", "a".repeat(63)])("accepts %s", (name) => {
    expect(validatePluginName(name)).toBeUndefined();
  });

  test.each([
    "",
    "-a.b",
    "a.b-",
    "a..b",
    "a.-b",
    "a-.b",
    "a_b.io",
    "a".repeat(64),
    "csi.spiffe.io.",
  ])("rejects %p", (name) => {
    expect(validatePluginName(name)).toBeString();
  });
});

describe("SELinux contexts", () => {
  test.each([
    "system_u:object_r:container_file_t:s0",
    "system_u:object_r:container_file_t:s0:c1,c2",
    "system_u:object_r:container_file_t:s0-s0:c0.c1023",
    "unconfined_u:object_r:svirt_sandbox_file_t:s0:c5.c10,c12",
    "u:object_r:my.type-1:s15",
  ])("accepts %s", (context) => {
    expect(contextProblem(context)).toBeUndefined();
  });

  test.each([
    "",
    "container_file_t",
    "system_u:object_r:container_file_t",
    "system_u:object_r:container_file_t:",
    "system_u:object_r:container_file_t:0",
    "system_u:object_r:container_file_t:s0:",
    "system_u:object_r:container_file_t:s0:c1,",
    "system_u:object_r:container_file_t:s0-",
    "system_u::container_file_t:s0",
    "system_u:object_r:container file_t:s0",
    "system_u:object_r:container_file_t:s0\n",
  ])("rejects %p", (context) => {
    expect(contextProblem(context)).toContain("--selinux-context must be user:role:type:level");
  });

  test("a label containers may use has the configured type at s0 without categories", () => {
    const context = "system_u:object_r:container_file_t:s0";
    expect(usableByContainers(context, context)).toBe(true);
    expect(usableByContainers("unconfined_u:object_r:container_file_t:s0", context)).toBe(true);
    expect(usableByContainers("system_u:object_r:container_file_t:s0:c1,c2", context)).toBe(false);
    expect(usableByContainers("system_u:object_r:var_run_t:s0", context)).toBe(false);
    expect(usableByContainers(undefined, context)).toBe(false);
  });
});
