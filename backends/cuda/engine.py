"""The serialized engine: plan, tactics, cubin (one architecture) and PTX in one checked blob.

Layout: b"QCENGINE" + u32 header length + JSON header + payload (cubin bytes, then PTX
bytes). The header holds the format version, architecture, toolchain versions, the plan (one
entry per compute node), the tactic of each GEMM, the payload's sizes and its sha256. The
weights travel with the graph in the artifact (qcompile.artifact), whose file checksum covers
this blob too; the engine's own checksum catches a blob damaged on its own.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field

from qcompile.errors import BackendError

from .plan import Step

MAGIC = b"QCENGINE"
FORMAT = 1


@dataclass
class Engine:
    arch: str | None                       # None: an emulation-only engine (no cubin)
    steps: list[Step]
    tactics: dict[str, str] = field(default_factory=dict)    # GEMM node -> tile
    cubin: bytes = b""
    ptx: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        payload = self.cubin + self.ptx.encode()
        header = {"format": FORMAT, "arch": self.arch, "versions": self.versions,
                  "steps": [asdict(s) for s in self.steps], "tactics": self.tactics,
                  "cubin_bytes": len(self.cubin), "ptx_bytes": len(self.ptx.encode()),
                  "sha256": hashlib.sha256(payload).hexdigest()}
        text = json.dumps(header, sort_keys=True).encode()
        return MAGIC + struct.pack("<I", len(text)) + text + payload

    @classmethod
    def from_bytes(cls, data: bytes) -> "Engine":
        header, payload = _split(data)
        if header.get("format") != FORMAT:
            raise BackendError(f"engine format {header.get('format')} is not the format this "
                               f"qcompile reads ({FORMAT}); rebuild the engine")
        if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
            raise BackendError("engine payload checksum mismatch: the engine is damaged")
        cut = header["cubin_bytes"]
        steps = [Step(**{**s, "gemm": tuple(s["gemm"]) if s["gemm"] else None})
                 for s in header["steps"]]
        return cls(header["arch"], steps, dict(header["tactics"]), payload[:cut],
                   payload[cut:].decode(), dict(header["versions"]))


def _split(data: bytes) -> tuple[dict, bytes]:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise BackendError("not a qcompile cuda-int8 engine (bad magic)")
    (size,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(data[start:start + size])
    except ValueError as err:
        raise BackendError(f"engine header is damaged ({err})") from None
    return header, data[start + size:]
