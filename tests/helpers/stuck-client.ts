// A client that makes one call and then stops reading its connection (its event loop blocked), as
// a hung kubelet might. Usage: bun tests/helpers/stuck-client.ts <csi socket path>
import { Identity } from "../../src/gen/csi/v1/csi_pb.ts";
import { createClient } from "../../src/rpc/client.ts";

const client = createClient(Identity, `unix://${process.argv[2]}`);
await client.probe({});
process.stdout.write("connected\n");
Bun.sleepSync(60_000);
