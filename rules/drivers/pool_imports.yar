/*
 * Generated from pooltagscan/drivers/apis.py by
 * pooltagscan.drivers.yarascan.pool_import_rule_source(); do not edit by hand.
 * The prefilter of `pooltagscan drivers`: a file that matches no rule tagged
 * pool_import is not disassembled. Imports by ordinal from a module that exports
 * pool APIs count, since the ordinal may name one.
 */
import "pe"

rule imports_pool_api : pool_import
{
    meta:
        description = "imports an API that takes a pool tag, or imports by ordinal from a module exporting one"
    condition:
        for any module in pe.import_details : (
            module.library_name matches /^(fltmgr\.sys|ndis\.sys|ntkrnlmp\.exe|ntkrnlpa\.exe|ntkrpamp\.exe|ntoskrnl\.exe|storport\.sys|videoprt\.sys)$/i and
            for any function in module.functions : (
                defined function.ordinal or
                function.name matches /^(ExAllocateCacheAwareRundownProtection|ExAllocatePool2|ExAllocatePool3|ExAllocatePoolWithQuotaTag|ExAllocatePoolWithTag|ExAllocatePoolWithTagPriority|ExFreePool2|ExFreePoolWithTag|ExInitializeLookasideListEx|ExInitializeNPagedLookasideList|ExInitializePagedLookasideList|FltAllocatePoolAlignedWithTag|FltFreePoolAlignedWithTag|FltRegisterFilter|FsRtlAllocatePoolWithQuotaTag|FsRtlAllocatePoolWithTag|MmAllocateMappingAddress|MmFreeMappingAddress|NdisAllocateGenericObject|NdisAllocateMemoryWithTag|NdisAllocateMemoryWithTagPriority|NdisAllocateNetBufferListPool|NdisAllocateNetBufferPool|NdisFreeMemoryWithTag|NdisFreeMemoryWithTagPriority|StorPortAllocatePool|VideoPortAllocatePool)$/
            )
        )
}

rule resolves_pool_api : pool_import
{
    meta:
        description = "names a pool API and imports a routine that resolves names (or is a VideoPort miniport, which gets VideoPortGetProcAddress as a callback)"
    strings:
        $name0 = "ExAllocateCacheAwareRundownProtection" ascii wide
        $name1 = "ExAllocatePool2" ascii wide
        $name2 = "ExAllocatePool3" ascii wide
        $name3 = "ExAllocatePoolWithQuotaTag" ascii wide
        $name4 = "ExAllocatePoolWithTag" ascii wide
        $name5 = "ExAllocatePoolWithTagPriority" ascii wide
        $name6 = "ExFreePool2" ascii wide
        $name7 = "ExFreePoolWithTag" ascii wide
        $name8 = "ExInitializeLookasideListEx" ascii wide
        $name9 = "ExInitializeNPagedLookasideList" ascii wide
        $name10 = "ExInitializePagedLookasideList" ascii wide
        $name11 = "FltAllocatePoolAlignedWithTag" ascii wide
        $name12 = "FltFreePoolAlignedWithTag" ascii wide
        $name13 = "FltRegisterFilter" ascii wide
        $name14 = "FsRtlAllocatePoolWithQuotaTag" ascii wide
        $name15 = "FsRtlAllocatePoolWithTag" ascii wide
        $name16 = "MmAllocateMappingAddress" ascii wide
        $name17 = "MmFreeMappingAddress" ascii wide
        $name18 = "NdisAllocateGenericObject" ascii wide
        $name19 = "NdisAllocateMemoryWithTag" ascii wide
        $name20 = "NdisAllocateMemoryWithTagPriority" ascii wide
        $name21 = "NdisAllocateNetBufferListPool" ascii wide
        $name22 = "NdisAllocateNetBufferPool" ascii wide
        $name23 = "NdisFreeMemoryWithTag" ascii wide
        $name24 = "NdisFreeMemoryWithTagPriority" ascii wide
        $name25 = "StorPortAllocatePool" ascii wide
        $name26 = "VideoPortAllocatePool" ascii wide
    condition:
        any of ($name*) and (
            pe.imports(/^(fltmgr\.sys|ndis\.sys|ntkrnlmp\.exe|ntkrnlpa\.exe|ntkrpamp\.exe|ntoskrnl\.exe)$/i, /^(FltGetRoutineAddress|MmGetSystemRoutineAddress|NdisGetRoutineAddress)$/) or
            pe.imports(/^videoprt\.sys$/i, /./)
        )
}

rule kmdf_driver : pool_import
{
    meta:
        description = "binds to KMDF, whose function table has pool APIs"
    condition:
        pe.imports(/^wdfldr\.sys$/i, /^WdfVersionBind$/)
}
