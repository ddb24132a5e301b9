"""The classic hex dump: address, 16 bytes in two groups of eight, printable ASCII."""

from __future__ import annotations

WIDTH = 16


def hexdump_lines(address: int, data: bytes, width: int = WIDTH) -> list[str]:
    """One line per `width` bytes; the address column is as wide as the last address
    needs (at least 8 digits), so physical and kernel virtual addresses both line up."""
    digits = max(8, len(f"{address + max(len(data) - 1, 0):x}"))
    half = width // 2
    lines = []
    for start in range(0, len(data), width):
        chunk = data[start : start + width]
        cells = [f"{b:02x}" for b in chunk] + ["  "] * (width - len(chunk))
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(
            f"{address + start:0{digits}x}  {' '.join(cells[:half])}  "
            f"{' '.join(cells[half:])}  |{text}|"
        )
    return lines
