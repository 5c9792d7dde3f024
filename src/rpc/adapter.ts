import {
  create,
  type DescMessage,
  type DescMethod,
  fromBinary,
  type MessageInitShape,
  type MessageShape,
  toBinary,
} from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import {
  type ServerUnaryCall,
  type ServiceDefinition,
  type sendUnaryData,
  status,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";
import type { Logger } from "../ops/log.ts";
import { LogKey } from "../ops/log-keys.ts";
import type { InFlightCalls } from "./in-flight.ts";
import { type CallStatus, RpcError, toStatus } from "./status.ts";

/** Typed async handlers for every method of a protobuf-es service descriptor. */
type UnaryHandlers<M extends GenServiceMethods> = {
  [K in keyof M]: (
    request: MessageShape<M[K]["input"]>,
  ) => Promise<MessageInitShape<M[K]["output"]>>;
};

/** The handlers of a generated service: `ServiceHandlers<typeof Node>`. */
export type ServiceHandlers<S> = S extends GenService<infer M> ? UnaryHandlers<M> : never;

/** What the adapter reports about each finished call (for logs and metrics). */
export interface CallRecord extends CallStatus {
  method: DescMethod;
  /** The decoded request, absent when the bytes could not be decoded. */
  request?: unknown;
  durationMs: number;
}

/** Told of each call once it is answered, and through `started` (if set) before it runs. */
export interface CallObserver {
  (record: CallRecord): void;
  started?: (method: DescMethod) => void;
}

/** What every call of a service is told to, and counted in. */
export interface CallOptions {
  /** Told of each finished call (for logs and metrics). */
  observe: CallObserver;
  /** Where a failing observer is reported. */
  logger: Logger;
  /** The count a shutdown waits on; none: the calls are not waited for. */
  inFlight?: InFlightCalls;
}

export interface GrpcService {
  definition: ServiceDefinition;
  implementation: UntypedServiceImplementation;
}

const passThrough = (bytes: Buffer): Buffer => bytes;

/**
 * Turns a protobuf-es service descriptor and its handlers into a grpc-js service.
 *
 * Requests are decoded here rather than by grpc-js, so that bytes that are not a valid message
 * answer INVALID_ARGUMENT (the caller's mistake) instead of grpc-js's INTERNAL.
 */
export function grpcService<M extends GenServiceMethods>(
  service: GenService<M>,
  handlers: UnaryHandlers<M>,
  options: CallOptions,
): GrpcService {
  const definition: Record<string, ServiceDefinition[string]> = {};
  const implementation: UntypedServiceImplementation = {};
  for (const method of service.methods) {
    if (method.methodKind !== "unary") {
      throw new Error(`${service.typeName}.${method.name}: only unary methods are supported`);
    }
    const handler = handlers[method.localName as keyof M];
    if (handler === undefined) {
      throw new Error(`${service.typeName}.${method.name}: no handler`);
    }
    definition[method.name] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: false,
      responseStream: false,
      originalName: method.localName,
      requestSerialize: passThrough,
      requestDeserialize: passThrough,
      responseSerialize: passThrough,
      responseDeserialize: passThrough,
    };
    implementation[method.name] = unaryCall(
      method,
      handler as (request: unknown) => Promise<unknown>,
      options,
    );
  }
  return { definition, implementation };
}

function unaryCall(
  method: DescMethod,
  handler: (request: unknown) => Promise<unknown>,
  { observe, logger, inFlight }: CallOptions,
) {
  return async (call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => {
    const started = performance.now();
    inFlight?.start();
    let request: unknown;
    let response: Buffer | undefined;
    let outcome: CallStatus = { code: status.OK, details: "" };
    try {
      observe.started?.(method);
      request = decode(method.input, call.request);
      const init = await handler(request);
      const bytes = toBinary(
        method.output,
        create(method.output, init as MessageInitShape<DescMessage>),
      );
      // A view of the encoded bytes, not a copy.
      response = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    } catch (error) {
      outcome = toStatus(error);
    }
    // Exactly one callback per call, whatever happened above.
    if (response !== undefined) {
      callback(null, response);
    } else {
      callback({ code: outcome.code, details: outcome.details });
    }
    inFlight?.finish();
    try {
      observe({ ...outcome, method, request, durationMs: performance.now() - started });
    } catch (error) {
      // The answer has gone out; a failing observer (a log write) must not become an
      // unhandled rejection that takes the process down.
      try {
        logger.error("call observer failed", { [LogKey.method]: method.name }, error);
      } catch {
        // The log itself cannot be written: there is nowhere left to say so.
      }
    }
  };
}

function decode(schema: DescMessage, bytes: Buffer): unknown {
  try {
    return fromBinary(schema, bytes);
  } catch (error) {
    throw new RpcError(
      status.INVALID_ARGUMENT,
      `request is not a valid ${schema.typeName}: ${(error as Error).message}`,
    );
  }
}
