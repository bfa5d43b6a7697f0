"""int8/int4/f16 for ONNX graphs, with onnxruntime's own tools."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir

# weights go beside the graph (model.onnx.data, as onnxruntime-genai's builder writes) above this:
# protobuf refuses messages over 2 GB, and a single-file save serializes the whole model in memory
# (1.1B int4: 3.7 GB peak against 1.7 written tensor by tensor)
EXTERNAL_DATA_OVER = 256 * 1024**2

INT4_BLOCK = 32
# accuracy_level 4: int8 activations in MatMulNBits (measured 3.8x faster than fp32 per decode token
# on a 56M model, against 2.1x at the default level)
INT4_ACCURACY_LEVEL = 4


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save `model` at `path`, its weights in `path`.data when over EXTERNAL_DATA_OVER; a weights file
    left from the graph it replaces is removed."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights > EXTERNAL_DATA_OVER:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    else:
        onnx.save(model, str(path))


def save_ir(model: ir.Model, path: Path) -> None:
    """save_onnx for an onnx_ir model, whose initializers may be lazy: ir.save evaluates and writes
    them one at a time."""
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    ir.save(model, path, external_data=path.name + ".data" if weights > EXTERNAL_DATA_OVER else None)


def _lm_head(graph: ir.Graph) -> ir.Node:
    """The MatMul that produces `logits`."""
    for node in graph:
        if node.op_type == "MatMul" and any(v.name == "logits" for v in node.outputs):
            return node
    raise ValueError("no MatMul produces logits")


def _weight_config(bits: int, ops: tuple[str, ...]):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

    return DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=INT4_ACCURACY_LEVEL, bits=bits,
                                        op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)))


def _quantize_one(model: ir.Model, node: ir.Node, config) -> None:
    """onnxruntime's MatMulNBitsQuantizer on `node` alone: a one-node model holding only its weight
    (read now, from a lazy initializer) goes through the quantizer, and the nodes and initializers it
    returns take the node's place. The weight's float data is let go when this returns."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    graph = model.graph
    weight = next(v for v in node.inputs if v is not None and v.is_initializer())
    activations = [v for v in node.inputs if v is not None and not v.is_initializer()]
    # built in place: helper.make_graph/make_model would copy the weight's bytes twice more
    one_node = onnx.ModelProto(ir_version=model.ir_version,
                               opset_import=[onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()])
    one_node.graph.name = "one_weight"
    one_node.graph.node.append(ir.serde.serialize_node(node))
    one_node.graph.input.extend(ir.serde.serialize_value(v) for v in activations)
    one_node.graph.output.extend(ir.serde.serialize_value(v) for v in node.outputs)
    tensor = one_node.graph.initializer.add()
    ir.serde.serialize_tensor_into(tensor, weight.const_value)
    tensor.name = weight.name
    quantizer = MatMulNBitsQuantizer(one_node, algo_config=config)
    quantizer.process()
    quantized = ir.from_proto(quantizer.model.model)
    new_graph = quantized.graph
    new_nodes, new_outputs = list(new_graph), list(new_graph.outputs)
    for mine, theirs in zip(activations, new_graph.inputs):
        theirs.replace_all_uses_with(mine)
    new_graph.outputs.clear()
    new_graph.remove(new_nodes)
    for value in list(new_graph.initializers.values()):
        new_graph.initializers.pop(value.name)
        # copied out: a tensor still backed by the quantizer's protobuf keeps that whole message (the
        # float weight included) alive
        value.const_value = ir.Tensor(value.const_value.numpy(), dtype=value.const_value.dtype, name=value.name)
        graph.register_initializer(value)
    ir.convenience.replace_nodes_and_values(graph, node, [node], new_nodes, list(node.outputs), new_outputs)
    if not weight.uses():
        graph.initializers.pop(weight.name)
    for domain, version in quantized.opset_imports.items():  # com.microsoft for MatMulNBits; opset 21 for an int4 Gather
        model.opset_imports[domain] = max(version, model.opset_imports.get(domain, 0))
    model.ir_version = max(model.ir_version, quantized.ir_version)


def quantize_int4(model: ir.Model, embedding: bool = False, int8_lm_head: bool = False) -> list[str]:
    """int4 weights as the graph is written: every MatMul (and with `embedding` the embedding Gather)
    whose weight is a constant becomes onnxruntime's MatMulNBits (GatherBlockQuantized), one weight
    at a time (_quantize_one), so memory holds the int4 model and one float weight, never the float
    model; `int8_lm_head` keeps the LM head at 8 bits. Returns notes for the user."""
    import logging

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line per node
    head = _lm_head(model.graph) if int8_lm_head else None
    ops = ("MatMul", "Gather") if embedding else ("MatMul",)
    for node in list(model.graph):
        weights = [v for v in node.inputs if v is not None and v.is_initializer() and v.shape is not None and len(v.shape) == 2]
        if node.op_type in ops and weights:
            _quantize_one(model, node, _weight_config(8 if node is head else 4, ops))
    notes = [f"int4: MatMulNBits, block {INT4_BLOCK}, symmetric, accuracy_level {INT4_ACCURACY_LEVEL}"
             + (", embedding as GatherBlockQuantized int4" if embedding else "")]
    if head is not None:
        notes.append(f"LM head ({head.name}): MatMulNBits 8 bits, block {INT4_BLOCK}")
    return notes


def quantize_onnx(path: Path, quant: str) -> list[str]:
    """int8 or f16: rewrite the float graph at `path` (and its weights file) in place; returns notes for the user."""
    if quant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = path.with_name(path.stem + ".int8.onnx")
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         use_external_data_format=True)
        model = onnx.load(str(tmp))
        tmp.unlink()
        tmp.with_name(tmp.name + ".data").unlink()
        notes = ["int8: dynamic quantization, QInt8 weights on every MatMul"]
    elif quant == "f16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # inputs and outputs in fp16 too: a KV buffer bound as both past and present must be one tensor,
        # which a cast at the graph's edge would split
        model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=False)
        notes = ["f16: weights, KV cache and compute in fp16 (logits are returned as fp16); ONNX Runtime's CPU "
                 "provider lacks fp16 kernels for some ops and inserts casts there, so f16 mainly pays on GPU and "
                 "mobile providers"]
    else:
        raise ValueError(quant)
    save_onnx(model, path)
    return notes
