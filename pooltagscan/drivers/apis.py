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

APIs that take the tag inside a structure have `field_offset`: the tag argument is
then a pointer to the structure and the tag sits at that offset in it (the offsets are
the public WDK headers' layouts, cited at each entry). `FltRegisterFilter` has
`registration`: its argument points to a static FLT_REGISTRATION whose
ContextRegistration pointer leads to an array of FLT_CONTEXT_REGISTRATION, ended by
FLT_CONTEXT_END, each naming the PoolTag of the contexts FltMgr allocates for it. KMDF's functions are not
imports: drivers call them through the `WdfFunctions` table, by the index its public
header wdffuncenum.h gives (`WDF_APIS`). Names a driver may resolve at run time
(`MmGetSystemRoutineAddress`, `VideoPortGetProcAddress`...) are the names of this table.

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
    "CALLBACK_RESOLVER_MODULES",
    "FREE",
    "INLINE_HELPERS",
    "KERNEL_MODULES",
    "LOOKASIDE",
    "POOL_APIS",
    "RESOLVER_APIS",
    "WDF_APIS",
    "WDF_BIND",
    "PoolApi",
    "WdfBind",
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
    #: When set, argument `tag_index` points to a structure whose ULONG tag is at this
    #: offset (x64, x86): the two differ when pointers precede the field.
    field_offset: tuple[int, int] | None = None
    #: When set, argument `tag_index` points to a registration structure: (offset of its
    #: pointer to the array of entries, size of an entry, offset of the ULONG tag in an
    #: entry), each as (x64, x86). An entry whose first USHORT is 0xFFFF ends the array.
    registration: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None

    def registration_layout(self, is64: bool) -> tuple[int, int, int] | None:
        """(array pointer offset, entry size, tag offset in an entry), or None."""
        if self.registration is None:
            return None
        return tuple(pair[0 if is64 else 1] for pair in self.registration)  # type: ignore[return-value]

    def field(self, is64: bool) -> int | None:
        """Offset of the tag in the structure the argument points to, or None."""
        if self.field_offset is None:
            return None
        return self.field_offset[0 if is64 else 1]

    @property
    def zero_is_untagged(self) -> bool:
        """A zero tag means "no tag" for this API (the free APIs)."""
        return self.kind == FREE


def _api(
    name: str,
    modules: tuple[str, ...],
    kind: str,
    tag: int,
    slot: int,
    stack: int,
    field: tuple[int, int] | None = None,
    registration: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None,
) -> PoolApi:
    return PoolApi(name, modules, kind, tag, slot, stack, field, registration)


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
    # Driver, Registration, RetFilter. fltKernel.h: FLT_REGISTRATION {USHORT Size;
    # USHORT Version; ULONG Flags; const FLT_CONTEXT_REGISTRATION *ContextRegistration;
    # ...}: the pointer at 8 on both. FLT_CONTEXT_REGISTRATION {USHORT ContextType;
    # USHORT Flags; PVOID ContextCleanupCallback; SIZE_T Size; ULONG PoolTag; PVOID
    # ContextAllocateCallback, ContextFreeCallback, Reserved1}: 56 bytes with the tag at
    # 24 (x64), 28 bytes with the tag at 12 (x86); ContextType FLT_CONTEXT_END (0xFFFF)
    # ends the array.
    _api("FltRegisterFilter", _FLTMGR, ALLOCATE, 1, 1, 12, None, ((8, 8), (56, 28), (24, 12))),
    # HwDeviceExtension, PoolType, NumberOfBytes, Tag
    _api("VideoPortAllocatePool", _VIDEOPRT, ALLOCATE, 3, 3, 16),
    # HwDeviceExtension, NumberOfBytes, Tag, BufferPointer
    _api("StorPortAllocatePool", _STORPORT, ALLOCATE, 2, 2, 16),
    # DriverObject, Tag, USHORT Size
    _api("NdisAllocateGenericObject", _NDIS, ALLOCATE, 1, 1, 12),
    # NdisHandle, PNET_BUFFER_LIST_POOL_PARAMETERS. ndis.h (NDIS 6.0): Header
    # (NDIS_OBJECT_HEADER, 4 bytes), UCHAR ProtocolId, BOOLEAN fAllocateNetBuffer,
    # USHORT ContextSize, ULONG PoolTag (offset 8), ULONG DataSize.
    _api("NdisAllocateNetBufferListPool", _NDIS, LOOKASIDE, 1, 1, 8, (8, 8)),
    # NdisHandle, PNET_BUFFER_POOL_PARAMETERS. ndis.h: Header (4 bytes), ULONG PoolTag
    # (offset 4), ULONG DataSize.
    _api("NdisAllocateNetBufferPool", _NDIS, LOOKASIDE, 1, 1, 8, (4, 4)),
)

#: KMDF functions that take a pool tag, by their index in the `WdfFunctions` table
#: (wdffuncenum.h, KMDF 1.x: the enumeration only grows at its end). Every entry takes
#: the driver's `WdfDriverGlobals` first, so the tag index counts it.
WDF_APIS: MappingProxyType[int, PoolApi] = MappingProxyType(
    {
        # DriverGlobals, DriverObject, RegistryPath, DriverAttributes, DriverConfig,
        # Driver. wdfdriver.h: WDF_DRIVER_CONFIG {ULONG Size; PFN EvtDriverDeviceAdd;
        # PFN EvtDriverUnload; ULONG DriverInitFlags; ULONG DriverPoolTag;}: the tag
        # at 28 on x64 (two pointers after a padded ULONG), 16 on x86.
        116: _api("WdfDriverCreate", (), LOOKASIDE, 4, 4, 24, (28, 16)),
        # DriverGlobals, Attributes, PoolType, PoolTag, BufferSize, Memory, Buffer
        192: _api("WdfMemoryCreate", (), ALLOCATE, 3, 3, 28),
        # DriverGlobals, LookasideAttributes, BufferSize, PoolType, MemoryAttributes,
        # PoolTag, Lookaside
        198: _api("WdfLookasideListCreate", (), LOOKASIDE, 5, 5, 28),
        # WdfMemoryCreatePreallocated (193) takes no tag: the driver's buffer is used.
    }
)


@dataclass(frozen=True)
class WdfBind:
    """`WdfVersionBind(DriverObject, RegistryPath, PWDF_BIND_INFO BindInfo, Globals)`,
    which the KMDF stub calls to fill the driver's function table. wdfldr.h:
    WDF_BIND_INFO {ULONG Size; PWCHAR Component; WDF_VERSION Version (3 ULONGs);
    ULONG FuncCount; WDFFUNC **FuncTable; PVOID Module;}: FuncTable, the address of
    the driver's `WdfFunctions` variable, is at 32 on x64 and 24 on x86."""

    module: str = "wdfldr.sys"
    name: str = "WdfVersionBind"
    bind_info_index: int = 2  # x64 argument index and x86 stack slot
    x86_stack_bytes: int = 16
    func_table_offset: tuple[int, int] = (32, 24)


WDF_BIND = WdfBind()

#: Routines that return the address of a routine named by a string: (module, name,
#: whether the name is a UNICODE_STRING rather than an ANSI string).
#: VideoPortGetProcAddress is not exported: miniports get it from
#: VIDEO_PORT_CONFIG_INFO, so any call through a pointer may be it (ANSI names only).
RESOLVER_APIS: MappingProxyType[tuple[str, str], bool] = MappingProxyType(
    {
        **{(module, "MmGetSystemRoutineAddress"): True for module in _NT},
        ("fltmgr.sys", "FltGetRoutineAddress"): False,
        ("ndis.sys", "NdisGetRoutineAddress"): True,
    }
)

#: Modules whose importers may get a name resolver as a callback rather than an
#: import (VideoPort: `VIDEO_PORT_CONFIG_INFO.VideoPortGetProcAddress`).
CALLBACK_RESOLVER_MODULES = frozenset(_VIDEOPRT)

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
