"""int8/int4/f16 for ONNX graphs, with onnxruntime's own tools."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx.external_data_helper

EXTERNAL_DATA_OVER = 2 * 1024**3  # protobuf's limit: larger models keep weights beside the graph

INT4_BLOCK = 32
# accuracy_level 4: int8 activations in MatMulNBits (measured 3.8x faster than fp32 per decode token
# on a 56M model, against 2.1x at the default level)
INT4_ACCURACY_LEVEL = 4


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save `model` at `path`, its weights in `path`.data when the graph would pass protobuf's 2 GB limit;
    a weights file left from the graph it replaces is removed."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights > EXTERNAL_DATA_OVER:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    else:
        onnx.save(model, str(path))


def lm_head_node(model: onnx.ModelProto) -> str:
    """The name of the MatMul that produces `logits`."""
    for node in model.graph.node:
        if "logits" in node.output and node.op_type == "MatMul":
            return node.name
    raise ValueError("no MatMul produces logits")


def _int4(model: onnx.ModelProto, embedding: bool, int8_lm_head: bool) -> tuple[onnx.ModelProto, list[str]]:
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line per node
    head = [lm_head_node(model)] if int8_lm_head else []
    ops = ("MatMul", "Gather") if embedding else ("MatMul",)
    config = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=INT4_ACCURACY_LEVEL,
                                          op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=head, algo_config=config)
    quantizer.process()
    model = quantizer.model.model
    notes = [f"int4: MatMulNBits, block {INT4_BLOCK}, symmetric, accuracy_level {INT4_ACCURACY_LEVEL}"
             + (", embedding as GatherBlockQuantized int4" if embedding else "")]
    if head:
        config = DefaultWeightOnlyQuantConfig(block_size=INT4_BLOCK, is_symmetric=True, accuracy_level=INT4_ACCURACY_LEVEL, bits=8)
        quantizer = MatMulNBitsQuantizer(model, nodes_to_include=head, algo_config=config)
        quantizer.process()
        model = quantizer.model.model
        notes.append(f"LM head ({head[0]}): MatMulNBits 8 bits, block {INT4_BLOCK}")
    return model, notes


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


def _location(tensor: onnx.TensorProto) -> str:
    return next(e.value for e in tensor.external_data if e.key == "location")


def _set_location(tensor: onnx.TensorProto, location: str) -> None:
    next(e for e in tensor.external_data if e.key == "location").value = location


def quantize_onnx(path: Path, quant: str, int4_embedding: bool = False, int8_lm_head: bool = False) -> list[str]:
    """Rewrite the graph at `path` (and its weights file) in place; returns notes for the user. int4
    reads the float weights one at a time (1.1B: peak memory about the int4 model, not the fp32 one).
    `int4_embedding`, `int8_lm_head`: with int4, also quantize the embedding Gather; keep the LM head at 8 bits."""
    if quant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = path.with_name(path.stem + ".int8.onnx")
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         use_external_data_format=True)
        model = onnx.load(str(tmp))
        tmp.unlink()
        tmp.with_name(tmp.name + ".data").unlink()
        notes = ["int8: dynamic quantization, QInt8 weights on every MatMul"]
    elif quant == "int4":
        model = onnx.load(str(path), load_external_data=False)
        external = _external_tensors(model)
        for tensor in external:  # the quantizer reads each weight through a memory map when it quantizes it
            _set_location(tensor, str(path.with_name(_location(tensor)).resolve()))
        model, notes = _int4(model, int4_embedding, int8_lm_head)
        for tensor in _external_tensors(model):  # what stayed float (norms, an fp32 embedding) is read in now
            _set_location(tensor, Path(_location(tensor)).name)
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
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
