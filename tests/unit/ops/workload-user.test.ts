import { describe, expect, test } from "bun:test";
import {
  describeOwner,
  describeUser,
  parseWorkloadUser,
  permits,
  SEARCH,
  WRITE,
} from "../../../src/ops/workload-user.ts";

describe("parseWorkloadUser", () => {
  test.each([
    ["any", { kind: "any" }],
    ["1000", { kind: "id", uid: 1000 }],
    ["1000:3000", { kind: "id", uid: 1000, gid: 3000 }],
    ["0", { kind: "id", uid: 0 }],
    ["4294967294", { kind: "id", uid: 4294967294 }],
  ])("%p", (text, user) => {
    expect(parseWorkloadUser(text)).toEqual(user as never);
  });

  test.each(["", "Any", "nobody", "-1", "1000:", ":1000", "1:2:3", "01000", "1e3", "4294967295"])(
    "refuses %p",
    (text) => {
      expect(parseWorkloadUser(text)).toBe(
        `--workload-user must be "any" or UID[:GID] (numbers, as in a pod's runAsUser and runAsGroup), got ${JSON.stringify(text)}`,
      );
    },
  );

  test("describes the user", () => {
    expect(describeUser({ kind: "any" })).toBe("any non-root user");
    expect(describeUser({ kind: "id", uid: 1000 })).toBe("uid 1000");
    expect(describeUser({ kind: "id", uid: 1000, gid: 5 })).toBe("uid 1000 (gid 5)");
  });
});

describe("permits", () => {
  const any = { kind: "any" } as const;
  const socket = (uid: number, gid: number, mode: number) => ({ uid, gid, mode: 0o140000 | mode });

  test("any non-root user: SPIRE's 0777 socket and 0755 directory", () => {
    expect(permits(any, socket(0, 0, 0o777), WRITE)).toBe(true);
    expect(permits(any, { uid: 0, gid: 0, mode: 0o40755 }, SEARCH)).toBe(true);
  });

  test("any non-root user: a socket only its owner may write is refused", () => {
    // The agent's user with 0600: root (the doctor) connects, a pod does not.
    expect(permits(any, socket(1001, 1001, 0o600), WRITE)).toBe(false);
    expect(permits(any, socket(0, 0, 0o660), WRITE)).toBe(false);
    expect(permits(any, { uid: 0, gid: 0, mode: 0o40750 }, SEARCH)).toBe(false);
  });

  test("any non-root user: each class such a user may fall into needs the bit", () => {
    // Members of the group are shut out by the group's bits, whatever the others' say.
    expect(permits(any, socket(0, 1001, 0o707), WRITE)).toBe(false);
    // A non-root owner is one such user.
    expect(permits(any, socket(1001, 0, 0o077), WRITE)).toBe(false);
    // Root as the owner needs no bit.
    expect(permits(any, socket(0, 0, 0o077), WRITE)).toBe(true);
  });

  test("one uid: the owner's, the group's or the others' bits, as the kernel picks them", () => {
    const agentOwned = socket(1001, 2001, 0o620);
    expect(permits({ kind: "id", uid: 1001 }, agentOwned, WRITE)).toBe(true);
    expect(permits({ kind: "id", uid: 1000, gid: 2001 }, agentOwned, WRITE)).toBe(true);
    expect(permits({ kind: "id", uid: 1000 }, agentOwned, WRITE)).toBe(false);
    expect(permits({ kind: "id", uid: 1000, gid: 3000 }, agentOwned, WRITE)).toBe(false);
    // The owner's bits decide for the owner, even when the others' would admit it.
    expect(permits({ kind: "id", uid: 1001 }, socket(1001, 0, 0o077), WRITE)).toBe(false);
    expect(permits({ kind: "id", uid: 0 }, socket(1001, 0, 0o000), WRITE)).toBe(true);
  });

  test("describes a file's owner and mode", () => {
    expect(describeOwner(socket(1001, 1002, 0o600))).toBe(
      "owner uid 1001, group gid 1002, mode 0600",
    );
  });
});
