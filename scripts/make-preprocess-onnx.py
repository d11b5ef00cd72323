"""Writes models/engines/preprocess-{nchw,nhwc}.onnx: uint8 RGB patches [N,H,W,3] -> float32 model input,
y = (x * scale - mean) / std = x * a + b, transposed to NCHW for the nchw variant. onnxruntime runs it in the engine worker,
so the event loop only copies bytes (the float conversion of 8 x 320 x 320 x 3 values costs ~10 ms in JS).

  /usr/bin/python3 scripts/make-preprocess-onnx.py
"""
import os

import onnx
from onnx import TensorProto, helper

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "engines")
for layout in ("nchw", "nhwc"):
    # y = x * a + b per channel, with a = scale / std and b = -mean / std (computed by the engine from the manifest);
    # NCHW transposes the uint8 input first (1 byte per value moved instead of 4)
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, ["n", "h", "w", 3])
    shape_ab = [3, 1, 1] if layout == "nchw" else [3]
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, shape_ab)
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, shape_ab)
    out_shape = ["n", 3, "h", "w"] if layout == "nchw" else ["n", "h", "w", 3]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    nodes = []
    src = "x"
    if layout == "nchw":
        nodes.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]))
        src = "xt"
    nodes += [
        helper.make_node("Cast", [src], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "a"], ["xa"]),
        helper.make_node("Add", ["xa", "b"], ["y"]),
    ]
    g = helper.make_graph(nodes, f"focusd_preprocess_{layout}", [x, a, b], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="focusd")
    m.ir_version = 7
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(here, f"preprocess-{layout}.onnx"))
    print("wrote", os.path.join(here, f"preprocess-{layout}.onnx"))
