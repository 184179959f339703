"""The artifact file: magic, format version, JSON header, tensor bytes, SHA-256 trailer.

    b"QCMPART" | u16 version | u64 header length | header JSON | tensor blob | sha256(all before)

Tensors are raw little-endian bytes described in the header (dtype, shape, offset), so a
file is read without pickle and two saves of the same model are byte-identical.
"""
from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import torch

from ..errors import ArtifactError

MAGIC = b"QCMPART"
FORMAT_VERSION = 1
_DTYPES = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.int8: "i8",
           torch.uint8: "u8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64",
           torch.bool: "bool", torch.bfloat16: "bf16", torch.float8_e4m3fn: "f8e4m3",
           torch.float8_e5m2: "f8e5m2"}
# dtypes numpy lacks travel as raw bytes of a same-width integer view
_VIEW_AS = {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.uint8,
            torch.float8_e5m2: torch.uint8}
_BY_NAME = {v: k for k, v in _DTYPES.items()}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype in _VIEW_AS:
        t = t.view(_VIEW_AS[t.dtype])
    return t.numpy().tobytes()


def write_container(path: str, header: dict, tensors: dict[str, torch.Tensor]) -> None:
    index, blob, offset = {}, bytearray(), 0
    for name in sorted(tensors):
        data = _tensor_bytes(tensors[name])
        index[name] = {"dtype": _DTYPES[tensors[name].dtype], "shape": list(tensors[name].shape),
                       "offset": offset, "nbytes": len(data)}
        blob += data
        offset += len(data)
    head = json.dumps({**header, "tensors": index}, sort_keys=True).encode("utf-8")
    body = MAGIC + struct.pack("<HQ", FORMAT_VERSION, len(head)) + head + bytes(blob)
    with open(path, "wb") as f:
        f.write(body + hashlib.sha256(body).digest())


def _check(raw: bytes, path: str) -> tuple[dict, bytes]:
    fixed = len(MAGIC) + 10
    if len(raw) < fixed + 32 or not raw.startswith(MAGIC):
        raise ArtifactError(f"{path} is not a qcompile artifact (bad magic or too short)")
    version, head_len = struct.unpack("<HQ", raw[len(MAGIC):fixed])
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format version {version}; this qcompile reads up to "
                            f"{FORMAT_VERSION}: upgrade qcompile")
    if hashlib.sha256(raw[:-32]).digest() != raw[-32:]:
        raise ArtifactError(f"{path} is corrupt or truncated (checksum mismatch)")
    try:
        header = json.loads(raw[fixed:fixed + head_len].decode("utf-8"))
    except ValueError as err:
        raise ArtifactError(f"{path} has an unreadable header: {err}") from None
    return header, raw[fixed + head_len:-32]


def read_container(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ArtifactError(f"cannot read artifact {path}: {err}") from None
    header, blob = _check(raw, path)
    tensors = {}
    for name, info in header.pop("tensors").items():
        data = blob[info["offset"]:info["offset"] + info["nbytes"]]
        dtype = _BY_NAME[info["dtype"]]
        np_dtype = torch.empty(0, dtype=_VIEW_AS.get(dtype, dtype)).numpy().dtype
        array = np.frombuffer(data, dtype=np_dtype).reshape(info["shape"]).copy()
        value = torch.from_numpy(array)
        tensors[name] = value.view(dtype) if dtype in _VIEW_AS else value
    return header, tensors
