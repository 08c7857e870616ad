"""Convert MediaPipe's face mesh, iris and selfie-segmentation ``.tflite`` graphs into safetensors for torch.

    python -m tools.convert_mediapipe [--source WHEEL_OR_DIR] [--out simpsonize/weights/mediapipe]

``--source`` is the ``mediapipe==0.10.21`` wheel or a folder it was unpacked into (default: the
``SIMPSONIZE_MEDIAPIPE_DIR`` environment variable, else ``~/.cache/simpsonize/mediapipe``). The graphs are parsed
with the ``tflite`` package's flatbuffer bindings (no TFLite interpreter). Each becomes one safetensors file: the
weights in torch's layout (OIHW), named after the tensor each op writes, and the op list as JSON metadata, which
``simpsonize/model/tflite_graph.py`` runs. Beside them go the wheel's Apache-2.0 LICENSE and a NOTICE.md.

Weights are stored as fp16 when the network's outputs on a real photo stay within ``FP16_TOLERANCE`` of the fp32
weights' (the face mesh and the segmenter ship fp16 weights already, so it is exact for them), else as fp32.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WHEEL_NAME = "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl"
LICENSE_MEMBER = "mediapipe-0.10.21.dist-info/LICENSE"
DEFAULT_SOURCE = Path.home() / ".cache" / "simpsonize" / "mediapipe"
SOURCE_ENV = "SIMPSONIZE_MEDIAPIPE_DIR"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "simpsonize" / "weights" / "mediapipe"
FP16_TOLERANCE = 0.05  # max output difference (model-input pixels, or mask probability) fp16 weights may cause


@dataclass(frozen=True)
class Network:
    name: str
    member: str  # path inside the wheel
    purpose: str
    probe_box: tuple[int, int, int, int]  # a region of skimage.data.astronaut this network expects, for the fp16 check


NETWORKS = (
    Network(
        "face_landmark",
        "mediapipe/modules/face_landmark/face_landmark.tflite",
        "468-point face mesh + face-present logit, 192x192 face crop",
        (142, 35, 307, 200),
    ),
    Network(
        "selfie_segmentation",
        "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        "person probability mask, 256x256 photo",
        (0, 0, 512, 512),
    ),
    Network(
        "iris_landmark",
        "mediapipe/modules/iris_landmark/iris_landmark.tflite",
        "71 eye-contour/brow + 5 iris points, 64x64 eye crop",
        (222, 90, 258, 126),
    ),
)


class ConversionError(Exception):
    """The graph holds something the torch runtime does not reproduce."""


class Source:
    """The wheel, or a folder holding its unpacked members."""

    def __init__(self, path: Path):
        self.path = path
        self._zip = zipfile.ZipFile(path) if path.is_file() else None

    def read(self, member: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(member)
        file = self.path / member
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: unpack {member} from the {WHEEL_NAME} wheel into {self.path}.")
        return file.read_bytes()


# -- reading a .tflite graph -----------------------------------------------------------------------------------------

_PADDING = {0: "same", 1: "valid"}  # tflite Padding enum
_CUSTOM_PADDING = {1: "same", 2: "valid"}  # TfLitePadding (C API) in custom ops' options
_FUSED = {0: "none", 1: "relu", 3: "relu6"}  # tflite ActivationFunctionType; others are not supported here
_UNARY = {"RELU": "relu", "RELU6": "relu6", "LOGISTIC": "sigmoid", "HARD_SWISH": "hard_swish"}


def _module_key(name: str) -> str:
    """A tensor name usable as a torch module name (no dots)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


class _Graph:
    def __init__(self, data: bytes):
        import tflite
        from tflite.BuiltinOperator import BuiltinOperator
        from tflite.TensorType import TensorType

        self.model = tflite.Model.GetRootAsModel(data, 0)
        if self.model.SubgraphsLength() != 1:
            raise ConversionError(f"expected one subgraph, found {self.model.SubgraphsLength()}")
        self.sub = self.model.Subgraphs(0)
        self.op_names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
        self.dtypes = {TensorType.FLOAT32: np.float32, TensorType.FLOAT16: np.float16, TensorType.INT32: np.int32}
        self.dequantized: dict[int, int] = {}  # DEQUANTIZE output -> its fp16 constant

    def name(self, index: int) -> str:
        return self.sub.Tensors(self.dequantized.get(index, index)).Name().decode()

    def shape(self, index: int) -> list[int]:
        return [int(v) for v in self.sub.Tensors(index).ShapeAsNumpy()]

    def constant(self, index: int) -> np.ndarray | None:
        """The tensor's stored value (an fp16 one for a DEQUANTIZE output), or None for a computed tensor."""
        index = self.dequantized.get(index, index)
        tensor = self.sub.Tensors(index)
        data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or len(data) == 0:
            return None
        if tensor.Type() not in self.dtypes:
            raise ConversionError(f"tensor {tensor.Name().decode()} has unsupported type {tensor.Type()}")
        return np.frombuffer(data.tobytes(), dtype=self.dtypes[tensor.Type()]).reshape(self.shape(index))

    def options(self, op, kind: str):
        import importlib

        cls = getattr(importlib.import_module(f"tflite.{kind}"), kind)
        options = cls()
        table = op.BuiltinOptions()
        options.Init(table.Bytes, table.Pos)
        return options

    def op_name(self, op) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = self.op_names.get(builtin, str(builtin))
        return f"CUSTOM:{code.CustomCode().decode()}" if name == "CUSTOM" else name


def read_graph(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The graph as ``tflite_graph.TfliteGraph`` reads it, and its weights in torch layout (their stored dtype)."""
    graph = _Graph(data)
    sub = graph.sub
    ops: list[dict[str, Any]] = []
    weights: dict[str, np.ndarray] = {}
    produced = {_module_key(graph.name(i)) for i in sub.InputsAsNumpy()}

    for position in range(sub.OperatorsLength()):
        op = sub.Operators(position)
        kind = graph.op_name(op)
        inputs = [int(i) for i in op.InputsAsNumpy()]
        outputs = [int(i) for i in op.OutputsAsNumpy()]
        if kind == "DEQUANTIZE":
            if graph.constant(inputs[0]) is None:
                raise ConversionError("DEQUANTIZE of a computed tensor (a quantized activation) is not supported")
            graph.dequantized[outputs[0]] = inputs[0]
            continue
        if len(outputs) != 1:
            raise ConversionError(f"{kind} with {len(outputs)} outputs")
        key = _module_key(graph.name(outputs[0]))
        spec: dict[str, Any] = {"op": None, "inputs": [_module_key(graph.name(inputs[0]))], "output": key}

        if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            options = graph.options(op, "Conv2DOptions" if kind == "CONV_2D" else "DepthwiseConv2DOptions")
            kernel, bias = graph.constant(inputs[1]), graph.constant(inputs[2])
            if kernel is None or bias is None:
                raise ConversionError(f"{key}: convolution without constant weights")
            if kind == "CONV_2D":  # OHWI -> OIHW
                weight, groups = kernel.transpose(0, 3, 1, 2), 1
            else:  # 1HW(C*m) -> (C*m)1HW; groups = input channels, so output channel c*m+k reads input c, as in TFLite
                weight, groups = kernel.transpose(3, 0, 1, 2), graph.shape(inputs[0])[3]
            weights[f"{key}.weight"], weights[f"{key}.bias"] = weight, bias
            spec.update(
                op="conv2d",
                stride=[options.StrideH(), options.StrideW()],
                padding=_PADDING[options.Padding()],
                dilation=[options.DilationHFactor(), options.DilationWFactor()],
                groups=groups,
                activation=_fused(options.FusedActivationFunction(), key),
            )
        elif kind == "CUSTOM:Convolution2DTransposeBias":
            padding, stride_w, stride_h = np.frombuffer(op.CustomOptionsAsNumpy().tobytes(), dtype=np.int32)
            kernel, bias = graph.constant(inputs[1]), graph.constant(inputs[2])
            weights[f"{key}.weight"] = kernel.transpose(3, 0, 1, 2)  # OHWI -> IOHW, torch's transposed layout
            weights[f"{key}.bias"] = bias
            spec.update(
                op="conv_transpose2d", stride=[int(stride_h), int(stride_w)], padding=_CUSTOM_PADDING[int(padding)]
            )
        elif kind == "PRELU":
            alpha = graph.constant(inputs[1])
            if alpha is None or alpha.size != alpha.shape[-1]:
                shape = None if alpha is None else alpha.shape
                raise ConversionError(f"{key}: PRELU alpha must be one value per channel, got shape {shape}")
            weights[f"{key}.weight"] = alpha.reshape(-1)
            spec["op"] = "prelu"
        elif kind in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            options = graph.options(op, "Pool2DOptions")
            if _PADDING[options.Padding()] != "valid":
                raise ConversionError(f"{key}: pooling with SAME padding is not supported")
            spec.update(
                op="max_pool" if kind == "MAX_POOL_2D" else "avg_pool",
                kernel=[options.FilterHeight(), options.FilterWidth()],
                stride=[options.StrideH(), options.StrideW()],
                activation=_fused(options.FusedActivationFunction(), key),
            )
        elif kind == "PAD":
            paddings = graph.constant(inputs[1])
            if paddings is None or paddings.shape != (4, 2) or paddings[0].any():
                raise ConversionError(f"{key}: PAD needs constant NHWC paddings that leave the batch alone")
            (top, bottom), (left, right), (front, back) = paddings[1], paddings[2], paddings[3]
            spec.update(op="pad", pads=[int(v) for v in (left, right, top, bottom, front, back)])
        elif kind == "RESIZE_BILINEAR":
            options = graph.options(op, "ResizeBilinearOptions")
            size = graph.constant(inputs[1])
            if options.AlignCorners() == options.HalfPixelCenters():
                raise ConversionError(f"{key}: only half-pixel centres or aligned corners have a torch equivalent")
            spec.update(op="resize_bilinear", size=[int(v) for v in size], align_corners=bool(options.AlignCorners()))
        elif kind in ("ADD", "MUL"):
            options = graph.options(op, "AddOptions" if kind == "ADD" else "MulOptions")
            spec.update(
                op=kind.lower(),
                inputs=[_module_key(graph.name(i)) for i in inputs],
                activation=_fused(options.FusedActivationFunction(), key),
            )
        elif kind in _UNARY:
            spec["op"] = _UNARY[kind]
        elif kind == "RESHAPE":
            spec.update(op="reshape", shape=graph.shape(outputs[0])[1:])
        else:
            raise ConversionError(f"op {kind} ({key}) is not supported by simpsonize.model.landmarks")

        missing = [name for name in spec["inputs"] if name not in produced]
        if missing:
            raise ConversionError(f"{key} reads {missing}, which no earlier op writes (a constant operand?)")
        if key in produced:
            raise ConversionError(f"two tensors are named {key!r} once made usable as module names")
        produced.add(key)
        ops.append(spec)

    wiring = {
        "inputs": [{"name": _module_key(graph.name(i)), "shape_nhwc": graph.shape(i)} for i in sub.InputsAsNumpy()],
        "outputs": [_module_key(graph.name(i)) for i in sub.OutputsAsNumpy()],
        "ops": ops,
    }
    return wiring, weights


def _fused(code: int, key: str) -> str:
    if code not in _FUSED:
        raise ConversionError(f"{key}: fused activation {code} is not supported")
    return _FUSED[code]


# -- writing ---------------------------------------------------------------------------------------------------------


def _probe(network: Network, graph) -> list[np.ndarray]:
    """The network's outputs on its region of the astronaut, stretched to the input size, in [0, 1]."""
    import torch
    from PIL import Image
    from skimage import data

    _, height, width, _ = graph.graph["inputs"][0]["shape_nhwc"]
    image = Image.fromarray(data.astronaut()).resize((width, height), Image.BILINEAR, box=network.probe_box)
    batch = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    with torch.no_grad():
        return [output.numpy() for output in graph(batch)]


def convert(network: Network, source: Source, out_dir: Path) -> dict[str, Any]:
    """Write ``out_dir/<name>.safetensors``; return what NOTICE.md says about it."""
    import torch
    from safetensors.torch import save_file

    from simpsonize.model.tflite_graph import FORMAT_VERSION, METADATA_KEY, TfliteGraph

    data = source.read(network.member)
    spec, weights = read_graph(data)
    spec = {"format_version": FORMAT_VERSION, **spec}
    stored_fp16 = all(w.dtype == np.float16 for w in weights.values())
    full = {k: torch.tensor(np.ascontiguousarray(v, dtype=np.float32)) for k, v in weights.items()}
    half = {k: v.half() for k, v in full.items()}
    drift = max(
        float(np.abs(a - b).max())
        for a, b in zip(_probe(network, TfliteGraph(spec, full)), _probe(network, TfliteGraph(spec, half)))
    )
    use_half = drift <= FP16_TOLERANCE
    tensors = half if use_half else full
    metadata = {
        **spec,
        "name": network.name,
        "purpose": network.purpose,
        "source": {"wheel": WHEEL_NAME, "member": network.member, "sha256": hashlib.sha256(data).hexdigest()},
        "dtype": "float16" if use_half else "float32",
        "licence": "Apache-2.0 (LICENSE beside this file)",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{network.name}.safetensors"
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return {
        "network": network,
        "path": path,
        "tflite_bytes": len(data),
        "bytes": path.stat().st_size,
        "dtype": metadata["dtype"],
        "drift": drift,
        "exact": stored_fp16 or not use_half,
        "ops": len(spec["ops"]),
        "parameters": sum(int(v.numel()) for v in full.values()),
    }


def write_notice(out_dir: Path, results: list[dict[str, Any]]) -> None:
    items = []
    for r in results:
        if r["exact"]:
            stored = f"{r['dtype']}, exactly the .tflite's weights"
        else:
            stored = f"{r['dtype']} (from fp32; outputs move by at most {r['drift']:.2g} on a test photo)"
        items.append(
            f"- `{r['path'].name}` ({r['bytes'] / 1e6:.2f} MB): {r['network'].purpose}.\n"
            f"  From `{r['network'].member}` ({r['tflite_bytes'] / 1e6:.2f} MB): {r['ops']} ops, "
            f"{r['parameters']:,} parameters.\n  Stored {stored}."
        )
    (out_dir / "NOTICE.md").write_text(
        "# MediaPipe networks\n\n"
        f"Converted from the `mediapipe==0.10.21` wheel (`{WHEEL_NAME}`;\n"
        "MediaPipe, Copyright The MediaPipe Authors, Apache-2.0: `LICENSE` here is the wheel's\n"
        "`mediapipe-0.10.21.dist-info/LICENSE`) by `tools/convert_mediapipe.py`, which reads the `.tflite`\n"
        "flatbuffers and writes the same graphs as safetensors: the weights in torch's layout, named after\n"
        "the tensors of the `.tflite` file, and the op list as JSON metadata (key `mediapipe_graph`).\n"
        "Nothing was retrained or changed; `simpsonize/model/landmarks.py` runs them with torch.\n\n"
        + "\n".join(items)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=Path(os.environ.get(SOURCE_ENV, DEFAULT_SOURCE)),
        help="the mediapipe 0.10.21 wheel, or a folder it is unpacked into",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the safetensors, LICENSE and NOTICE go")
    args = parser.parse_args(argv)
    path = args.source
    if path.is_dir() and (path / WHEEL_NAME).is_file() and not (path / NETWORKS[0].member).is_file():
        path = path / WHEEL_NAME
    if not path.exists():
        print(
            f"convert_mediapipe: {path} does not exist; pass --source with the {WHEEL_NAME} wheel or the folder "
            f"it is unpacked into.",
            file=sys.stderr,
        )
        return 2
    source = Source(path)
    try:
        license_text = source.read(LICENSE_MEMBER)
        results = [convert(network, source, args.out) for network in NETWORKS]
    except (FileNotFoundError, KeyError, ConversionError) as exc:
        print(f"convert_mediapipe: {exc}", file=sys.stderr)
        return 1
    (args.out / "LICENSE").write_bytes(license_text)
    write_notice(args.out, results)
    for r in results:
        print(
            f"{r['path']}: {r['ops']} ops, {r['parameters']:,} parameters, {r['dtype']}, {r['bytes'] / 1e6:.2f} MB "
            f"(fp16 output drift {r['drift']:.2g})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
