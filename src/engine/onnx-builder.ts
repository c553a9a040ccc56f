// A small typed layer over onnx-proto for writing graphs by hand, with weights stored as
// external data in one file beside the model so that no protobuf limit applies.
import { closeSync, openSync, writeSync } from "node:fs";
import onnxProto from "onnx-proto";

const { onnx } = onnxProto;
type NodeProto = InstanceType<typeof onnx.NodeProto>;
type TensorProtoInit = ConstructorParameters<typeof onnx.TensorProto>[0] & object;

export const ElemType = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
  FLOAT16: 10,
} as const;
export type ElemType = (typeof ElemType)[keyof typeof ElemType];

export type Dim = number | string;
export type AttrValue = number | string | number[] | { float: number };

export const MS_DOMAIN = "com.microsoft";
const EXTERNAL_ALIGNMENT = 4096;

/** Appends initializer bytes to one file; offsets are page-aligned so ORT may map them. */
export class ExternalWeights {
  private fd: number;
  private position = 0;
  constructor(
    readonly path: string,
    readonly location: string,
  ) {
    this.fd = openSync(path, "w");
  }

  append(bytes: Uint8Array): { offset: number; length: number } {
    const padding = (EXTERNAL_ALIGNMENT - (this.position % EXTERNAL_ALIGNMENT)) % EXTERNAL_ALIGNMENT;
    if (padding) this.position += writeSync(this.fd, new Uint8Array(padding));
    const offset = this.position;
    let written = 0;
    while (written < bytes.byteLength) written += writeSync(this.fd, bytes, written);
    this.position += written;
    return { offset, length: bytes.byteLength };
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** Initializers below this size stay inside the model proto. */
const INLINE_LIMIT = 1024;

export class GraphBuilder {
  private nodes: NodeProto[] = [];
  private initializers: TensorProtoInit[] = [];
  private inputs: ReturnType<typeof valueInfo>[] = [];
  private outputs: ReturnType<typeof valueInfo>[] = [];
  private counter = 0;

  constructor(private readonly weights: ExternalWeights) {}

  input(name: string, type: ElemType, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, type, dims));
    return name;
  }

  output(name: string, type: ElemType, dims: Dim[]): void {
    this.outputs.push(valueInfo(name, type, dims));
  }

  /** Adds a constant tensor; large ones go to the external weights file. */
  initializer(name: string, type: ElemType, dims: number[], bytes: Uint8Array): string {
    const tensor: TensorProtoInit = { name, dataType: type, dims };
    if (bytes.byteLength <= INLINE_LIMIT) {
      tensor.rawData = bytes;
    } else {
      const { offset, length } = this.weights.append(bytes);
      tensor.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL;
      tensor.externalData = [
        { key: "location", value: this.weights.location },
        { key: "offset", value: String(offset) },
        { key: "length", value: String(length) },
      ];
    }
    this.initializers.push(tensor);
    return name;
  }

  f32(name: string, dims: number[], data: Float32Array): string {
    return this.initializer(name, ElemType.FLOAT, dims, bytesOf(data));
  }

  i64(name: string, values: number[]): string {
    return this.initializer(name, ElemType.INT64, [values.length], bytesOf(BigInt64Array.from(values.map(BigInt))));
  }

  scalarI64(name: string, value: number): string {
    return this.initializer(name, ElemType.INT64, [], bytesOf(BigInt64Array.of(BigInt(value))));
  }

  /** Adds a node; returns its output names. An input "" means an omitted optional input. */
  node(
    opType: string,
    inputs: string[],
    attrs: Record<string, AttrValue> = {},
    opts: { domain?: string; outputs?: number | string[]; name?: string } = {},
  ): string[] {
    const id = this.counter++;
    const base = opts.name ?? `${opType}_${id}`;
    const outputs = Array.isArray(opts.outputs) ? opts.outputs : Array.from({ length: opts.outputs ?? 1 }, (_, i) => `${base}/out${i}`);
    this.nodes.push(
      onnx.NodeProto.create({
        opType,
        domain: opts.domain ?? "",
        name: base,
        input: inputs,
        output: outputs,
        attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
      }),
    );
    return outputs;
  }

  /** Single-output convenience form of `node`. */
  op(opType: string, inputs: string[], attrs: Record<string, AttrValue> = {}, domain?: string, name?: string): string {
    return this.node(opType, inputs, attrs, { domain, name })[0]!;
  }

  encode(): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 10,
      producerName: "tessera",
      opsetImport: [
        { domain: "", version: 21 },
        { domain: MS_DOMAIN, version: 1 },
      ],
      graph: {
        name: "span",
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}

function valueInfo(name: string, elemType: ElemType, dims: Dim[]) {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function attribute(name: string, value: AttrValue) {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof value === "number") return { name, type: T.INT, i: value };
  if (typeof value === "string") return { name, type: T.STRING, s: new TextEncoder().encode(value) };
  if (Array.isArray(value)) return { name, type: T.INTS, ints: value };
  return { name, type: T.FLOAT, f: value.float };
}

export function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}
