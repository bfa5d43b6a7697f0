"""int8/int4/f16 for ONNX graphs, with onnxruntime's own tools."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path

import onnx
import onnx_ir as ir

# weights go beside the graph (model.onnx.data, as onnxruntime-genai's builder writes) above this:
# protobuf refuses messages over 2 GB, and a single-file save serializes the whole model in memory
# (1.1B int4: 3.7 GB peak against 1.7 written tensor by tensor)
EXTERNAL_DATA_OVER = 256 * 1024**2

INT4_BLOCK = 32
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)  # MatMulNBits: a power of two from 16 (the genai builder's choices)
# accuracy_level 4: int8 activations in MatMulNBits (measured 3.8x faster than fp32 per decode token
# on a 56M model, against 2.1x at the default level); 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8
INT4_ACCURACY_LEVEL = 4
INT4_ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def save_ir(model: ir.Model, path: Path) -> None:
    """Save `model` at `path`, its weights in `path`.data when over EXTERNAL_DATA_OVER; its
    initializers may be lazy: ir.save evaluates and writes them one at a time."""
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    ir.save(model, path, external_data=path.name + ".data" if weights > EXTERNAL_DATA_OVER else None)


def _lm_head(graph: ir.Graph) -> ir.Node:
    """The MatMul that produces `logits`."""
    for node in graph:
        if node.op_type == "MatMul" and any(v.name == "logits" for v in node.outputs):
            return node
    raise ValueError("no MatMul produces logits")


def _weight_config(bits: int, ops: tuple[str, ...], block_size: int = INT4_BLOCK, accuracy_level: int = INT4_ACCURACY_LEVEL):
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig

    return DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level, bits=bits,
                                        op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)))


def _quantize_one(model: ir.Model, node: ir.Node, quantize: Callable[[onnx.ModelProto], onnx.ModelProto]) -> None:
    """An onnxruntime quantizer (`quantize`) on `node` alone: a one-node model holding only its weight
    (read now, from a lazy initializer) goes through it, and the nodes and initializers it returns
    take the node's place; a node it returns that the graph already has (by name: int8's
    DynamicQuantizeLinear of an activation several MatMuls read) is not added twice. The weight's
    float data is let go when this returns."""
    graph = model.graph
    weight = next(v for v in node.inputs if v is not None and v.is_initializer())
    activations = [v for v in node.inputs if v is not None and not v.is_initializer()]
    opsets = dict(model.opset_imports)
    if node.op_type == "Gather":  # an int4 Gather's data is opset 21's INT4: given a lower opset, the quantizer raised it
        opsets[""] = max(opsets.get("", 0), 21)  # with a warning that the model "may not be valid", past --quiet
    # built in place: helper.make_graph/make_model would copy the weight's bytes twice more
    one_node = onnx.ModelProto(ir_version=model.ir_version,
                               opset_import=[onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items()])
    one_node.graph.name = "one_weight"
    one_node.graph.node.append(ir.serde.serialize_node(node))
    one_node.graph.input.extend(ir.serde.serialize_value(v) for v in activations)
    one_node.graph.output.extend(ir.serde.serialize_value(v) for v in node.outputs)
    tensor = one_node.graph.initializer.add()
    ir.serde.serialize_tensor_into(tensor, weight.const_value)
    tensor.name = weight.name
    quantized = ir.from_proto(quantize(one_node))
    new_graph = quantized.graph
    for mine, theirs in zip(activations, new_graph.inputs):
        theirs.replace_all_uses_with(mine)
    present = {n.name: n for n in graph if n.op_type == "DynamicQuantizeLinear"}
    for duplicate in [n for n in new_graph if n.name in present]:
        for theirs, mine in zip(duplicate.outputs, present[duplicate.name].outputs):
            theirs.replace_all_uses_with(mine)
        new_graph.remove(duplicate)
    new_nodes, new_outputs = list(new_graph), list(new_graph.outputs)
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


def _quantize_each(model: ir.Model, ops: tuple[str, ...], quantize: Callable[[ir.Node], Callable[[onnx.ModelProto], onnx.ModelProto]]) -> None:
    """_quantize_one on every node of `ops` whose weight is a constant 2-D initializer, the largest
    weight first: onnxruntime's quantizers hold several copies of the weight they work on (1.1B's
    262 MB LM head through quantize_dynamic: ~1.7 GB at once), so that peak comes before the quantized
    weights pile up (1.1B int8: 3.35 → 2.36 GB). The graph is sorted back into topological order after
    (a DynamicQuantizeLinear made for a later MatMul may feed an earlier one)."""
    def weight(node: ir.Node) -> ir.Value | None:
        return next((v for v in node.inputs if v is not None and v.is_initializer() and v.shape is not None and len(v.shape) == 2), None)

    nodes = [node for node in model.graph if node.op_type in ops and weight(node) is not None]
    for node in sorted(nodes, key=lambda node: weight(node).const_value.nbytes, reverse=True):
        _quantize_one(model, node, quantize(node))
    model.graph.sort()


def _matmul_nbits(one_node: onnx.ModelProto, config) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(one_node, algo_config=config)
    quantizer.process()
    return quantizer.model.model


class _WithoutPreProcessAdvice(logging.Filter):
    """quantize_dynamic advises through the root logger, on every call, running its pre-processing
    (shape inference and graph optimization, for static quantization of vision models): called once
    per weight it would print that a hundred times."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


def _quantize_dynamic(one_node: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's `quantize_dynamic` (QInt8 weights, per tensor, on MatMul), which writes its
    result to a file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgelm-int8-") as folder:
        out = Path(folder) / "quantized.onnx"
        quantize_dynamic(one_node, out, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
        return onnx.load(str(out))


def quantize_int8(model: ir.Model) -> list[str]:
    """int8 weights as the graph is written, as quantize_int4 does: every MatMul whose weight is a
    constant goes alone through onnxruntime's `quantize_dynamic`, whose nodes (DynamicQuantizeLinear
    of the activation, shared by the MatMuls that read it; MatMulInteger; the scale Muls) replace it.
    Returns notes for the user."""
    root = logging.getLogger()
    advice = _WithoutPreProcessAdvice()
    root.addFilter(advice)
    try:
        _quantize_each(model, ("MatMul",), lambda node: _quantize_dynamic)
    finally:
        root.removeFilter(advice)
    return ["int8: dynamic quantization, QInt8 weights on every MatMul"]


def quantize_int4(model: ir.Model, embedding: bool = False, int8_lm_head: bool = False, block_size: int = INT4_BLOCK,
                  accuracy_level: int = INT4_ACCURACY_LEVEL, eight_bit: Collection[str] = ()) -> list[str]:
    """int4 weights as the graph is written: every MatMul (and with `embedding` the embedding Gather)
    whose weight is a constant becomes onnxruntime's MatMulNBits (GatherBlockQuantized), one weight
    at a time (_quantize_one), so memory holds the int4 model and one float weight, never the float
    model; `int8_lm_head` keeps the LM head at 8 bits; `block_size` weights share a scale, `accuracy_level`
    is MatMulNBits' compute type (onnxruntime's names); the MatMuls whose weight (initializer) is named
    in `eight_bit` take 8 bits too (quantize/mixed.py's choice). Returns notes for the user."""
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line per node
    head = _lm_head(model.graph) if int8_lm_head else None
    ops = ("MatMul", "Gather") if embedding else ("MatMul",)

    def quantize(node: ir.Node) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
        weight = next(v.name for v in node.inputs if v is not None and v.is_initializer())
        config = _weight_config(8 if node is head or weight in eight_bit else 4, ops, block_size, accuracy_level)
        return lambda one_node: _matmul_nbits(one_node, config)

    _quantize_each(model, ops, quantize)
    notes = [f"int4: MatMulNBits, block {block_size}, symmetric, accuracy_level {accuracy_level}"
             + (", embedding as GatherBlockQuantized int4" if embedding else "")]
    if head is not None:
        notes.append(f"LM head ({head.name}): MatMulNBits 8 bits, block {block_size}")
    return notes


def convert_f16(model: ir.Model) -> ir.Model:
    """f16 as the graph is written: onnxruntime's `convert_float_to_float16` rewrites the graph (types,
    casts around the ops it keeps in fp32) with the checkpoint's weights standing in as graph inputs
    of their type and shape but no data — whole, 1.1B's fp32 weights are 4.4 GB, past protobuf's 2 GB —,
    then each weight returns as an initializer that converts, when written, through the converter's
    own `convert_np_to_float16` (which also rounds magnitudes below float16's smallest subnormal up
    to it, as it does to initializers). Returns the converted model."""
    from onnxruntime.transformers.float16 import convert_float_to_float16, convert_np_to_float16

    graph = model.graph
    weights = {name: value.const_value for name, value in graph.initializers.items() if isinstance(value.const_value, ir.LazyTensor)}
    for name in weights:
        graph.inputs.append(graph.initializers.pop(name))
    # inputs and outputs in fp16 too: a KV buffer bound as both past and present must be one tensor,
    # which a cast at the graph's edge would split
    converted = ir.from_proto(convert_float_to_float16(ir.serde.serialize_model(model), keep_io_types=False))
    graph = converted.graph
    for value in [v for v in graph.inputs if v.name in weights]:
        graph.inputs.remove(value)
        weight = weights[value.name]
        if value.dtype == ir.DataType.FLOAT16:
            weight = ir.LazyTensor(lambda weight=weight: ir.Tensor(convert_np_to_float16(weight.numpy())),
                                   dtype=ir.DataType.FLOAT16, shape=weight.shape)
        value.const_value = weight
        graph.register_initializer(value)
    return converted


F16_NOTE = ("f16: weights, KV cache and compute in fp16 (logits are returned as fp16); ONNX Runtime's CPU "
            "provider lacks fp16 kernels for some ops and inserts casts there, so f16 mainly pays on GPU and "
            "mobile providers")
