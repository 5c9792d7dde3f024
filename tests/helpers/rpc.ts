import { Client, credentials, status } from "@grpc/grpc-js";

/** The gRPC status a call failed with; fails the test if the call succeeded. */
export async function rpcFailure(
  call: Promise<unknown>,
): Promise<{ code: number; details: string }> {
  try {
    await call;
  } catch (error) {
    return error as { code: number; details: string };
  }
  throw new Error("the call succeeded");
}

/** Sends raw bytes as a request, as a broken or hostile client would; resolves to the status. */
export function sendRawRequest(
  address: string,
  path: string,
  bytes: Buffer,
): Promise<{ code: number; details: string }> {
  const client = new Client(address, credentials.createInsecure());
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      bytes,
      (error) => {
        client.close();
        resolve(error ?? { code: status.OK, details: "" });
      },
    );
  });
}
