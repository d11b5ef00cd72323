"""Writes models/engines/preprocess-{nchw,nhwc}.onnx: uint8 RGB patches [N,H,W,3] -> float32 model input,
y = (x * scale - mean) / std, transposed to NCHW for the nchw variant. onnxruntime runs it in the engine worker,
so the event loop only copies bytes (the float conversion of 8 x 320 x 320 x 3 values costs ~10 ms in JS).

  /usr/bin/python3 scripts/make-preprocess-onnx.py
"""
import os

import onnx
from onnx import TensorProto, helper

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "engines")
for layout in ("nchw", "nhwc"):
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, ["n", "h", "w", 3])
    scale = helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])
    mean = helper.make_tensor_value_info("mean", TensorProto.FLOAT, [3])
    std = helper.make_tensor_value_info("std", TensorProto.FLOAT, [3])
    out_shape = ["n", 3, "h", "w"] if layout == "nchw" else ["n", "h", "w", 3]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "scale"], ["xs"]),
        helper.make_node("Sub", ["xs", "mean"], ["xm"]),
        helper.make_node("Div", ["xm", "std"], ["y" if layout == "nhwc" else "yn"]),
    ]
    if layout == "nchw":
        nodes.append(helper.make_node("Transpose", ["yn"], ["y"], perm=[0, 3, 1, 2]))
    g = helper.make_graph(nodes, f"focusd_preprocess_{layout}", [x, scale, mean, std], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="focusd")
    m.ir_version = 7
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(here, f"preprocess-{layout}.onnx"))
    print("wrote", os.path.join(here, f"preprocess-{layout}.onnx"))
