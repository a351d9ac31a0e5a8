"""Runtimes for graphs gigaseg did not build: ONNX Runtime, and graphs with a fixed batch size.

Each is an ``nn.Module`` from ``(N, C, *tile)`` float32 tiles on the model's
device to ``(N, K, *tile)`` scores there, so the Predictor, the stitcher and
the device path run them as they run any network.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

from gigaseg.errors import ModelError

ONNX_EXTRA = "pip install 'gigaseg[onnx]' (onnxruntime; onnxruntime-gpu on a machine with CUDA)"
# ONNX Runtime's providers in the order gigaseg prefers them on a CUDA device; GIGASEG_ONNX_PROVIDERS
# (comma-separated) chooses others, e.g. CUDAExecutionProvider alone to leave TensorRT out.
CUDA_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class Exported(nn.Module):
    """A ``torch.export`` program's module: always in inference mode (an exported graph has no
    train mode to switch to), with a fixed batch fed full batches."""

    def __init__(self, inner: nn.Module, batch: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.batch = batch

    def train(self, mode: bool = True) -> Exported:  # noqa: D102 - the graph was exported in eval mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Module protocol
        return self.inner(x) if self.batch is None else in_batches(self.inner, x, self.batch)


def in_batches(run: Any, x: torch.Tensor, batch: int) -> torch.Tensor:
    """``run`` over ``x`` in pieces of exactly ``batch`` tiles (the last zero-padded)."""
    if len(x) == batch:
        return run(x)
    out = []
    for i in range(0, len(x), batch):
        piece = x[i : i + batch]
        if len(piece) < batch:
            piece = torch.cat([piece, piece.new_zeros((batch - len(piece), *piece.shape[1:]))])
        out.append(run(piece)[: len(x) - i])
    return torch.cat(out)


_SESSIONS: dict[tuple[Any, ...], Any] = {}


def onnx_session(path: str, *, device: torch.device, threads: int | None = None) -> Any:
    """An ONNX Runtime session for ``path`` on ``device``'s providers, with gigaseg's thread budget
    (torch's threads: what the worker was given); one per file version, device and budget."""
    threads = threads or torch.get_num_threads()
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, str(device), threads)
    if key not in _SESSIONS:
        _SESSIONS.clear()  # one model per worker at a time, as Predictors are kept
        _SESSIONS[key] = _new_session(path, device=device, threads=threads)
    return _SESSIONS[key]


def _new_session(path: str, *, device: torch.device, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError(f"{path} is an ONNX model, and running it needs ONNX Runtime: {ONNX_EXTRA}") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: its warnings would print on every worker
    try:
        return ort.InferenceSession(path, sess_options=options, providers=providers(device))
    except Exception as e:  # ONNX Runtime raises its own exception types for bad files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelError(f"{path} is not an ONNX model ONNX Runtime can load: {first}") from None


def providers(device: torch.device) -> list[Any]:
    """The execution providers for ``device``: TensorRT and CUDA where installed, else the CPU."""
    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    wanted = os.environ.get("GIGASEG_ONNX_PROVIDERS")
    names = [p.strip() for p in wanted.split(",")] if wanted else list(CUDA_PROVIDERS)
    available = set(ort.get_available_providers())
    chosen: list[Any] = []
    for name in names:
        if name not in available:
            continue
        # One CUDA stream for torch and ONNX Runtime: the tiles torch wrote are ready when it reads them.
        stream = str(torch.cuda.current_stream(device).cuda_stream)
        options = {"device_id": device.index or 0, "user_compute_stream": stream}
        if name == "TensorrtExecutionProvider":
            options |= {"trt_fp16_enable": os.environ.get("GIGASEG_TRT_FP16", "0") == "1"}
        chosen.append((name, {k: str(v) for k, v in options.items()}))
    return [*chosen, "CPUExecutionProvider"]


class OnnxModule(nn.Module):
    """An ONNX model as a module: tiles on the device in, scores on the device out.

    On a CUDA device the tiles and scores stay in GPU memory (ONNX Runtime's I/O
    binding reads and writes torch's tensors where they are); on the CPU they are
    shared with numpy without a copy. A fixed batch dimension is fed full batches.
    Sessions are kept per file, device and thread budget (:func:`onnx_session`).
    """

    gigaseg_autocast = False  # the graph runs in its own number type
    gigaseg_channels_last = False  # ONNX Runtime reads contiguous (N, C, ...) tensors

    def __init__(self, path: str, *, outputs: int, batch: int | None = None) -> None:
        super().__init__()
        self.path = path
        self.outputs = outputs
        self.batch = batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - nn.Module protocol
        if self.batch is not None:
            return in_batches(self._run, x, self.batch)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        session = onnx_session(self.path, device=x.device)
        first = session.get_inputs()[0]
        x = x.to(torch.float16 if first.type == "tensor(float16)" else torch.float32).contiguous()
        if x.device.type == "cuda" and session.get_providers()[0] != "CPUExecutionProvider":
            return self._bound(session, first.name, x)
        out = session.run(None, {first.name: x.cpu().numpy()})[0]
        return torch.from_numpy(np.asarray(out)).to(x.device).float()

    def _bound(self, session: Any, name: str, x: torch.Tensor) -> torch.Tensor:
        """One run on the GPU through I/O binding: no copy through the host."""
        dtype = np.float16 if x.dtype == torch.float16 else np.float32
        out = torch.empty((len(x), self.outputs, *x.shape[2:]), dtype=x.dtype, device=x.device)
        binding = session.io_binding()
        index = x.device.index or 0
        binding.bind_input(name, "cuda", index, dtype, tuple(x.shape), x.data_ptr())
        output = session.get_outputs()[0].name
        binding.bind_output(output, "cuda", index, dtype, tuple(out.shape), out.data_ptr())
        session.run_with_iobinding(binding)
        return out.float()
