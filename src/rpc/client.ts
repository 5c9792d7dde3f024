import {
  create,
  type DescMessage,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import { type CallOptions, Client, type ClientOptions, credentials } from "@grpc/grpc-js";

/** A typed promise-returning client for every unary method of a protobuf-es service. */
export type UnaryClient<M extends GenServiceMethods> = {
  [K in keyof M]: (
    request: MessageInitShape<M[K]["input"]>,
    options?: CallOptions,
  ) => Promise<MessageShape<M[K]["output"]>>;
} & { close(): void };

/**
 * Connects to `address` (e.g. `unix:///run/csi.sock`) as a client of `service`. Calls reject with
 * grpc-js's ServiceError (`code`, `details`).
 */
export function createClient<M extends GenServiceMethods>(
  service: GenService<M>,
  address: string,
  options: ClientOptions = {},
): UnaryClient<M> {
  const client = new Client(address, credentials.createInsecure(), options);
  const typed: Record<string, unknown> = { close: () => client.close() };
  for (const method of service.methods) {
    const serialize = (message: MessageShape<DescMessage>) =>
      Buffer.from(toBinary(method.input, message));
    const deserialize = (bytes: Buffer) => fromBinary(method.output, bytes);
    typed[method.localName] = (
      init: MessageInitShape<DescMessage>,
      callOptions: CallOptions = {},
    ) =>
      new Promise((resolve, reject) => {
        client.makeUnaryRequest(
          `/${service.typeName}/${method.name}`,
          serialize,
          deserialize,
          create(method.input, init),
          callOptions,
          (error, response) => (error ? reject(error) : resolve(response)),
        );
      });
  }
  return typed as UnaryClient<M>;
}
