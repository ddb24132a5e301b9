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
                function.name matches /^(ExAllocateCacheAwareRundownProtection|ExAllocatePool2|ExAllocatePool3|ExAllocatePoolWithQuotaTag|ExAllocatePoolWithTag|ExAllocatePoolWithTagPriority|ExFreePool2|ExFreePoolWithTag|ExInitializeLookasideListEx|ExInitializeNPagedLookasideList|ExInitializePagedLookasideList|FltAllocatePoolAlignedWithTag|FltFreePoolAlignedWithTag|FsRtlAllocatePoolWithQuotaTag|FsRtlAllocatePoolWithTag|MmAllocateMappingAddress|MmFreeMappingAddress|NdisAllocateMemoryWithTag|NdisAllocateMemoryWithTagPriority|NdisFreeMemoryWithTag|NdisFreeMemoryWithTagPriority|StorPortAllocatePool|VideoPortAllocatePool)$/
            )
        )
}
