"""VMware memory: a flat `.vmem` file, and the `.vmss`/`.vmsn` state file beside it.

The .vmem holds guest physical memory. On guests with more than ~3 GiB the memory is split
into regions (the PCI hole is not stored), and only the saved-state (.vmss, suspended VM)
or snapshot (.vmsn) file says where each region belongs: regionPPN (physical page),
regionPageNum (page in the .vmem) and regionSize, in its "memory" group. VMware pairs the
two by name, so that is how we find the state file; its content is then checked.
Volatility 3's VmwareLayer reads the state file; we take its physical map and mmap the
.vmem. Without a state file (or with one that does not split memory) the .vmem is flat.
"""

from __future__ import annotations

import os
from typing import Any

from pooltagscan.errors import InputError
from pooltagscan.files import InputFile
from pooltagscan.inputs import sniff, volmap
from pooltagscan.inputs.base import MemoryImage, open_checked
from pooltagscan.inputs.raw import open_raw

STATE_SUFFIXES = (".vmss", ".vmsn", ".VMSS", ".VMSN")
VMEM_SUFFIXES = (".vmem", ".VMEM")


def state_file_beside(path: str) -> str | None:
    """The VMware state file paired with a .vmem (same stem), if there is a valid one."""
    stem, ext = os.path.splitext(path)
    if ext.lower() != ".vmem":
        return None
    for suffix in STATE_SUFFIXES:
        candidate = stem + suffix
        if os.path.isfile(candidate):
            try:
                head = sniff.read_head(candidate)
            except InputError:
                continue
            if sniff.sniff_bytes(head).kind == sniff.VMWARE_STATE:
                return candidate
    return None


def open_state_file(state: InputFile) -> MemoryImage:
    """A .vmss/.vmsn given as the dump: scan the .vmem it describes."""
    path = state.path
    stem = os.path.splitext(path)[0]
    for suffix in VMEM_SUFFIXES:
        if os.path.isfile(stem + suffix):
            vmem = open_checked(stem + suffix)
            try:
                image = open_vmem(vmem, path)
            except BaseException:
                vmem.close()
                raise
            state.close()
            image.notes.append(
                f"{os.path.basename(path)} is a VMware state file; scanned {vmem.path}"
            )
            return image
    raise InputError(
        path,
        "this is a VMware saved-state file; the guest memory is in the .vmem file with the "
        "same name, which is not beside it",
    )


def open_vmem(source: InputFile, state: str) -> MemoryImage:
    """The .vmem mapped through the regions of its state file."""
    from volatility3.framework.layers import vmware

    path = source.path
    InputFile.open(state).close()  # an input too: checked, and never to be overwritten

    def build(context: Any, base: str) -> Any:
        meta = volmap.add_file_layer(context, state, "vmware-state")
        return volmap.stack_layer(context, vmware.VmwareLayer, base, "vmware", meta_layer=meta)

    try:
        image = volmap.physical_image(source, "vmware", build, "VMware memory")
    except InputError as exc:
        if "not split into regions" not in exc.problem:
            raise InputError(path, f"{exc.problem} (state file {state})") from None
        image = open_raw(source)
        image.notes.append(
            f"{os.path.basename(state)} does not split memory into regions; the .vmem is flat"
        )
        return image
    image.details["regions"] = image.details.pop("segments")
    image.details["state_file"] = state
    return image
