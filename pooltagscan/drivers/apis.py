"""The pool APIs whose tag argument we recover: the one table the whole package uses.

Each entry says which kernel module exports the API and where its `ULONG Tag` argument
sits. On x64 that is the argument index (0-3 travel in rcx, rdx, r8, r9, the rest on
the stack above the 32-byte home area). On x86 every argument is on the stack, and the
position is counted in 4-byte stack slots rather than arguments, because a 64-bit
argument takes two slots: `ExAllocatePool2(POOL_FLAGS Flags, SIZE_T, ULONG Tag)` has
its tag in slot 3 although it is argument 2.

What is deliberately not in the table:

- APIs without a tag argument (`ExAllocatePool`, `ExAllocatePoolWithQuota`,
  `IoAllocateMdl`, `MmAllocateNonCachedMemory`...): there is nothing to recover.
- `ExAllocatePoolZero`, `ExAllocatePoolUninitialized`, `ExAllocatePoolQuotaZero`,
  `ExAllocatePoolQuotaUninitialized`, `ExAllocatePoolPriorityZero` and
  `ExAllocatePoolPriorityUninitialized`: wdm.h defines them as inline helpers, not
  kernel exports, so no driver imports them. Their code ends in a call to one of the
  exports below (see `INLINE_HELPERS`), which is where their tags are found.
- APIs that take the tag inside a structure (`NdisAllocateNetBufferListPool`'s
  `NET_BUFFER_LIST_POOL_PARAMETERS.PoolTag`, FltMgr context registrations) and KMDF's
  `WdfMemoryCreate`, which is reached through a function table rather than an import:
  the argument-tracking approach does not apply to them.

For the free APIs a tag of 0 is the documented "no tag" (`ExFreePool` is
`ExFreePoolWithTag(P, 0)`), so `zero_is_untagged` marks them: such a call frees an
allocation without naming its tag and is counted, not reported as tag 0. For the
allocation APIs a 0 is a real (if bad) tag and is reported as `\\x00\\x00\\x00\\x00`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "ALLOCATE",
    "FREE",
    "INLINE_HELPERS",
    "KERNEL_MODULES",
    "LOOKASIDE",
    "POOL_APIS",
    "PoolApi",
    "lookup",
    "module_key",
]

ALLOCATE, FREE, LOOKASIDE = "allocate", "free", "lookaside"

# Module names as drivers import them (compared case-insensitively). ntoskrnl's exports
# are imported from whichever kernel image the linker named: the uniprocessor and PAE
# variants of old x86 kernels included.
_NT = ("ntoskrnl.exe", "ntkrnlpa.exe", "ntkrnlmp.exe", "ntkrpamp.exe")
_NDIS = ("ndis.sys",)
_FLTMGR = ("fltmgr.sys",)
_VIDEOPRT = ("videoprt.sys",)
_STORPORT = ("storport.sys",)

#: Every module whose imports mark an image as kernel-mode code (HAL and the other
#: kernel-mode export drivers pool-allocating drivers link against).
KERNEL_MODULES = frozenset(
    (*_NT, *_NDIS, *_FLTMGR, *_VIDEOPRT, *_STORPORT, "hal.dll", "wdfldr.sys", "ks.sys")
)


@dataclass(frozen=True)
class PoolApi:
    """One exported pool API.

    `tag_index` is the 0-based argument index (the x64 position); `x86_slot` the
    0-based 4-byte stack slot of the tag at the call on x86 (stdcall, arguments pushed
    right to left); `x86_stack_bytes` what the callee pops on return, needed to follow
    the stack pointer backwards across calls to it.
    """

    name: str
    modules: tuple[str, ...]
    kind: str
    tag_index: int
    x86_slot: int
    x86_stack_bytes: int

    @property
    def zero_is_untagged(self) -> bool:
        """A zero tag means "no tag" for this API (the free APIs)."""
        return self.kind == FREE


def _api(
    name: str, modules: tuple[str, ...], kind: str, tag: int, slot: int, stack: int
) -> PoolApi:
    return PoolApi(name, modules, kind, tag, slot, stack)


# (name, modules, kind, x64 tag index, x86 tag slot, x86 argument bytes) - the signatures
# come from the WDK documentation of each routine.
_TABLE = (
    # PoolType, NumberOfBytes, Tag
    _api("ExAllocatePoolWithTag", _NT, ALLOCATE, 2, 2, 12),
    _api("ExAllocatePoolWithQuotaTag", _NT, ALLOCATE, 2, 2, 12),
    # PoolType, NumberOfBytes, Tag, Priority
    _api("ExAllocatePoolWithTagPriority", _NT, ALLOCATE, 2, 2, 16),
    # ULONG64 Flags (two slots on x86), NumberOfBytes, Tag
    _api("ExAllocatePool2", _NT, ALLOCATE, 2, 3, 16),
    # ULONG64 Flags, NumberOfBytes, Tag, ExtendedParameters, ExtendedParametersCount
    _api("ExAllocatePool3", _NT, ALLOCATE, 2, 3, 24),
    # PoolType, Tag
    _api("ExAllocateCacheAwareRundownProtection", _NT, ALLOCATE, 1, 1, 8),
    # PoolType, NumberOfBytes, Tag
    _api("FsRtlAllocatePoolWithTag", _NT, ALLOCATE, 2, 2, 12),
    _api("FsRtlAllocatePoolWithQuotaTag", _NT, ALLOCATE, 2, 2, 12),
    # NumberOfBytes, PoolTag
    _api("MmAllocateMappingAddress", _NT, ALLOCATE, 1, 1, 8),
    # P, Tag
    _api("ExFreePoolWithTag", _NT, FREE, 1, 1, 8),
    # P, Tag, ExtendedParameters, ExtendedParametersCount
    _api("ExFreePool2", _NT, FREE, 1, 1, 16),
    # BaseAddress, PoolTag
    _api("MmFreeMappingAddress", _NT, FREE, 1, 1, 8),
    # Lookaside, Allocate, Free, Flags, Size, Tag, Depth
    _api("ExInitializeNPagedLookasideList", _NT, LOOKASIDE, 5, 5, 28),
    _api("ExInitializePagedLookasideList", _NT, LOOKASIDE, 5, 5, 28),
    # Lookaside, Allocate, Free, PoolType, Flags, Size, Tag, Depth
    _api("ExInitializeLookasideListEx", _NT, LOOKASIDE, 6, 6, 32),
    # VirtualAddress (out), Length, Tag
    _api("NdisAllocateMemoryWithTag", _NDIS, ALLOCATE, 2, 2, 12),
    # NdisHandle, Length, Tag, Priority
    _api("NdisAllocateMemoryWithTagPriority", _NDIS, ALLOCATE, 2, 2, 16),
    # VirtualAddress, Tag
    _api("NdisFreeMemoryWithTag", _NDIS, FREE, 1, 1, 8),
    # NdisHandle, VirtualAddress, Tag
    _api("NdisFreeMemoryWithTagPriority", _NDIS, FREE, 2, 2, 12),
    # Instance, PoolType, NumberOfBytes, Tag
    _api("FltAllocatePoolAlignedWithTag", _FLTMGR, ALLOCATE, 3, 3, 16),
    # Instance, Buffer, Tag
    _api("FltFreePoolAlignedWithTag", _FLTMGR, FREE, 2, 2, 12),
    # HwDeviceExtension, PoolType, NumberOfBytes, Tag
    _api("VideoPortAllocatePool", _VIDEOPRT, ALLOCATE, 3, 3, 16),
    # HwDeviceExtension, NumberOfBytes, Tag, BufferPointer
    _api("StorPortAllocatePool", _STORPORT, ALLOCATE, 2, 2, 16),
)

#: API name -> entry.
POOL_APIS: MappingProxyType[str, PoolApi] = MappingProxyType({a.name: a for a in _TABLE})

#: wdm.h inline helpers and the export their code calls (see the module docstring).
INLINE_HELPERS = MappingProxyType(
    {
        "ExAllocatePoolZero": "ExAllocatePoolWithTag",
        "ExAllocatePoolUninitialized": "ExAllocatePoolWithTag",
        "ExAllocatePoolQuotaZero": "ExAllocatePoolWithQuotaTag",
        "ExAllocatePoolQuotaUninitialized": "ExAllocatePoolWithQuotaTag",
        "ExAllocatePoolPriorityZero": "ExAllocatePoolWithTagPriority",
        "ExAllocatePoolPriorityUninitialized": "ExAllocatePoolWithTagPriority",
    }
)

_BY_MODULE: dict[tuple[str, str], PoolApi] = {
    (module, api.name): api for api in _TABLE for module in api.modules
}


def module_key(name: str) -> str:
    """The form module names are compared in (lowercase, no directory)."""
    return name.replace("\\", "/").rsplit("/", 1)[-1].lower()


def lookup(module: str, function: str) -> PoolApi | None:
    """The pool API a driver imports as `function` from `module`, or None.

    The exporting module matters: a driver's own helper DLL could export a function of
    the same name with another signature.
    """
    return _BY_MODULE.get((module_key(module), function))
