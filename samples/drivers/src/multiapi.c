/*
 * multiapi: a sample driver that allocates through the pool APIs of NDIS.SYS,
 * FLTMGR.SYS, VIDEOPRT.SYS and STORPORT.SYS (a real driver would use one of them; the
 * sample uses all so one binary covers them). Tags start with "Ma" (plus Hv0z, a tag
 * the sample dumps plant), decoys with "Dc".
 * The prototypes are declared here because MinGW-w64's ndis.h, fltKernel.h, video.h
 * and storport.h do not combine in one translation unit.
 */
#include <ntddk.h>

#define NOINLINE __attribute__((noinline))

DECLSPEC_IMPORT NTSTATUS NTAPI NdisAllocateMemoryWithTag(PVOID *VirtualAddress, ULONG Length,
                                                         ULONG Tag);
DECLSPEC_IMPORT PVOID NTAPI NdisAllocateMemoryWithTagPriority(PVOID NdisHandle, ULONG Length,
                                                              ULONG Tag, ULONG Priority);
DECLSPEC_IMPORT VOID NTAPI NdisFreeMemoryWithTag(PVOID VirtualAddress, ULONG Tag);
DECLSPEC_IMPORT VOID NTAPI NdisFreeMemoryWithTagPriority(PVOID NdisHandle,
                                                         PVOID VirtualAddress, ULONG Tag);
DECLSPEC_IMPORT PVOID NTAPI FltAllocatePoolAlignedWithTag(PVOID Instance, POOL_TYPE PoolType,
                                                          SIZE_T NumberOfBytes, ULONG Tag);
DECLSPEC_IMPORT VOID NTAPI FltFreePoolAlignedWithTag(PVOID Instance, PVOID Buffer, ULONG Tag);
DECLSPEC_IMPORT PVOID NTAPI VideoPortAllocatePool(PVOID HwDeviceExtension, ULONG PoolType,
                                                  SIZE_T NumberOfBytes, ULONG Tag);
DECLSPEC_IMPORT ULONG NTAPI StorPortAllocatePool(PVOID HwDeviceExtension, ULONG NumberOfBytes,
                                                 ULONG Tag, PVOID *BufferPointer);

PVOID g_Keep[16];
PVOID g_Handle;

/* An NDIS allocation wrapper: the tag is the caller's. */
NOINLINE PVOID NetAlloc(ULONG Length, ULONG Tag)
{
    PVOID p = NULL;
    if (NdisAllocateMemoryWithTag(&p, Length, Tag) != STATUS_SUCCESS)
        return NULL;
    return p;
}

NOINLINE VOID Ndis(VOID)
{
    g_Keep[0] = NetAlloc(64, 'ANaM');
    g_Keep[1] = NetAlloc(96, 'BNaM');
    g_Keep[2] = NdisAllocateMemoryWithTagPriority(g_Handle, 128, 'PNaM', 32);
    /* A tag the sample dumps plant too (samples/gen_common.py THIRD_PARTY_TAGS). */
    g_Keep[7] = NdisAllocateMemoryWithTagPriority(g_Handle, 192, 'z0vH', 32);
    NdisFreeMemoryWithTag(g_Keep[0], 'ANaM');
    NdisFreeMemoryWithTagPriority(g_Handle, g_Keep[2], 'PNaM');
}

NOINLINE VOID Filter(PVOID Instance)
{
    /* The tag is the 4th argument: r9 on x64, the 4th stack dword on x86. */
    g_Keep[3] = FltAllocatePoolAlignedWithTag(Instance, NonPagedPool, 512, 'lFaM');
    FltFreePoolAlignedWithTag(Instance, g_Keep[3], 'lFaM');
}

NOINLINE VOID Video(PVOID Extension)
{
    g_Keep[4] = VideoPortAllocatePool(Extension, 1, 256, 'pVaM');
}

NOINLINE VOID Storage(PVOID Extension)
{
    PVOID buffer = NULL;
    if (StorPortAllocatePool(Extension, 1024, 'tSaM', &buffer) == 0)
        g_Keep[5] = buffer;
}

/* Decoy: a tag-like constant compared, never passed to a pool API. */
NOINLINE ULONG Decoy(PULONG Value)
{
    return *Value == 'pMcD';
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(RegistryPath);
    Ndis();
    Filter(DriverObject->DriverExtension);
    Video(DriverObject->DeviceObject);
    Storage(DriverObject->DriverSection);
    g_Keep[6] = (PVOID)(ULONG_PTR)Decoy((PULONG)DriverObject->DriverStart);
    return STATUS_SUCCESS;
}
