import {
  create,
  type DescMessage,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import {
  type CallOptions,
  type Client,
  credentials,
  makeGenericClientConstructor,
  type ServiceDefinition,
  type ServiceError,
} from "@grpc/grpc-js";

/** A typed promise-returning client for every unary method of a protobuf-es service. */
export type UnaryClient<M extends GenServiceMethods> = {
  [K in keyof M]: (
    request: MessageInitShape<M[K]["input"]>,
    options?: CallOptions,
  ) => Promise<MessageShape<M[K]["output"]>>;
} & { close(): void };

export type ServiceClient<S> = S extends GenService<infer M> ? UnaryClient<M> : never;

/** Connects to `address` (e.g. `unix:///run/csi.sock`) as a client of `service`. */
export function createClient<M extends GenServiceMethods>(
  service: GenService<M>,
  address: string,
): UnaryClient<M> {
  const definition: Record<string, ServiceDefinition[string]> = {};
  for (const method of service.methods) {
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: false,
      responseStream: false,
      requestSerialize: (message: MessageShape<DescMessage>) =>
        Buffer.from(toBinary(method.input, message)),
      requestDeserialize: (bytes: Buffer) => fromBinary(method.input, bytes),
      responseSerialize: (message: MessageShape<DescMessage>) =>
        Buffer.from(toBinary(method.output, message)),
      responseDeserialize: (bytes: Buffer) => fromBinary(method.output, bytes),
    };
  }
  const Constructor = makeGenericClientConstructor(definition, service.typeName);
  const client = new Constructor(address, credentials.createInsecure()) as Client &
    Record<string, Function>;
  const typed: Record<string, unknown> = { close: () => client.close() };
  for (const method of service.methods) {
    typed[method.localName] = (init: MessageInitShape<DescMessage>, options: CallOptions = {}) =>
      new Promise((resolve, reject) => {
        const call = client[method.localName];
        call?.call(
          client,
          create(method.input, init),
          options,
          (error: ServiceError | null, response: unknown) =>
            error ? reject(error) : resolve(response),
        );
      });
  }
  return typed as UnaryClient<M>;
}
