"""capstone's light decoding as numpy arrays, for the sweep of whole code sections.

`Cs.disasm_lite` yields one Python tuple per instruction, built from four ctypes field
reads and two decodes: on real-size drivers that per-instruction cost was most of the
analysis (about 45% in capstone's Python binding, 38% in our loop over its tuples). The
C function underneath, `cs_disasm`, fills one contiguous array of `cs_insn` records;
this module calls it with the same handle (same mode, same SKIPDATA option, so the very
same instructions) and reads that array as a numpy structured array, so the sweep can
classify every instruction with array operations and fall back to Python only for the
few it must look at (branches, moves to and from globals, padding forms).
"""

from __future__ import annotations

import ctypes

import capstone
import numpy as np

__all__ = ["LITE_DTYPE", "clear_after_nul", "decode_lite", "text"]

_INSN = capstone._cs_insn  # the binding's own ctypes layout of cs_insn
_FIELDS = ("address", "size", "mnemonic", "op_str")
#: address, size, mnemonic and operand text of each instruction, at cs_insn's offsets.
_RECORD = np.dtype(
    {
        "names": list(_FIELDS),
        "formats": ["<u8", "<u2", "S32", "S160"],
        "offsets": [getattr(_INSN, name).offset for name in _FIELDS],
        "itemsize": ctypes.sizeof(_INSN),
    }
)
LITE_DTYPE = np.dtype(
    [("address", "<u8"), ("size", "<u2"), ("mnemonic", "S32"), ("op_str", "S160")]
)


def decode_lite(cs: capstone.Cs, code: bytes, address: int) -> np.ndarray:
    """Every instruction `cs.disasm_lite(code, address)` would yield, as one array of
    `LITE_DTYPE` records (a copy: capstone's buffer is freed before returning)."""
    records = ctypes.POINTER(_INSN)()
    count = capstone._cs.cs_disasm(cs.csh, code, len(code), address, 0, ctypes.byref(records))
    if count <= 0:
        status = capstone._cs.cs_errno(cs.csh)
        if status != capstone.CS_ERR_OK:
            raise capstone.CsError(status)
        return np.zeros(0, LITE_DTYPE)
    try:
        raw = (ctypes.c_char * (count * _RECORD.itemsize)).from_address(
            ctypes.addressof(records.contents)
        )
        view = np.frombuffer(raw, _RECORD, count)
        result = np.empty(count, LITE_DTYPE)
        for name in _FIELDS:
            result[name] = view[name]
    finally:
        capstone._cs.cs_free(records, count)
    # capstone writes NUL-terminated text into reused buffers: what follows the NUL is
    # left over from an earlier instruction. The mnemonics are cleared here (every one is
    # compared); operand texts by `text()`, for the few that are read.
    result["mnemonic"] = clear_after_nul(result["mnemonic"])
    return result


def clear_after_nul(texts: np.ndarray) -> np.ndarray:
    """Fixed-width C strings with every byte after the first NUL set to NUL."""
    grid = np.ascontiguousarray(texts).view(np.uint8).reshape(len(texts), texts.dtype.itemsize)
    grid = np.where(np.logical_or.accumulate(grid == 0, axis=1), 0, grid).astype(np.uint8)
    return grid.reshape(-1).view(texts.dtype)


def text(raw: bytes) -> str:
    """One operand text of a record (cut at its NUL)."""
    return raw.split(b"\0", 1)[0].decode("ascii")
