/*
 * structs: tags passed inside structures (and NDIS/lookaside APIs that take a tag
 * argument). A parameter structure on the stack or in a global gets its PoolTag field
 * from an immediate store, and its address goes to the API. Tags start with "Sn";
 * decoys with "Dc". ground_truth.json lists what must be found.
 *
 * MinGW-w64's ndis.h does not combine with ntddk.h, so the NDIS structures and
 * prototypes are declared here from the public WDK documentation (ndis.h, NDIS 6.0):
 * NDIS_OBJECT_HEADER {UCHAR Type; UCHAR Revision; USHORT Size;},
 * NET_BUFFER_LIST_POOL_PARAMETERS {Header; UCHAR ProtocolId; BOOLEAN fAllocateNetBuffer;
 * USHORT ContextSize; ULONG PoolTag; ULONG DataSize;} (PoolTag at offset 8),
 * NET_BUFFER_POOL_PARAMETERS {Header; ULONG PoolTag; ULONG DataSize;} (PoolTag at 4).
 */
#include <ntddk.h>

#define NOINLINE __attribute__((noinline))

typedef struct _NDIS_OBJECT_HEADER {
    UCHAR Type;
    UCHAR Revision;
    USHORT Size;
} NDIS_OBJECT_HEADER;

typedef struct _NET_BUFFER_LIST_POOL_PARAMETERS {
    NDIS_OBJECT_HEADER Header;
    UCHAR ProtocolId;
    BOOLEAN fAllocateNetBuffer;
    USHORT ContextSize;
    ULONG PoolTag;
    ULONG DataSize;
} NET_BUFFER_LIST_POOL_PARAMETERS, *PNET_BUFFER_LIST_POOL_PARAMETERS;

typedef struct _NET_BUFFER_POOL_PARAMETERS {
    NDIS_OBJECT_HEADER Header;
    ULONG PoolTag;
    ULONG DataSize;
} NET_BUFFER_POOL_PARAMETERS, *PNET_BUFFER_POOL_PARAMETERS;

#define NDIS_OBJECT_TYPE_DEFAULT 0x80
#define NET_BUFFER_LIST_POOL_PARAMETERS_REVISION_1 1
#define NET_BUFFER_POOL_PARAMETERS_REVISION_1 1
#define NDIS_PROTOCOL_ID_DEFAULT 0

DECLSPEC_IMPORT PVOID NTAPI NdisAllocateNetBufferListPool(PVOID NdisHandle,
                                                          PNET_BUFFER_LIST_POOL_PARAMETERS P);
DECLSPEC_IMPORT PVOID NTAPI NdisAllocateNetBufferPool(PVOID NdisHandle,
                                                      PNET_BUFFER_POOL_PARAMETERS P);
DECLSPEC_IMPORT PVOID NTAPI NdisAllocateMemoryWithTagPriority(PVOID NdisHandle, ULONG Length,
                                                              ULONG Tag, ULONG Priority);
DECLSPEC_IMPORT PVOID NTAPI NdisAllocateGenericObject(PDRIVER_OBJECT DriverObject, ULONG Tag,
                                                      USHORT Size);

PVOID g_Keep[16];
PVOID g_Handle;
LOOKASIDE_LIST_EX g_ListEx;
/* A global parameter structure whose tag the code stores before the call. */
NET_BUFFER_POOL_PARAMETERS g_NbParams;
/* A read-only, statically initialised one: the tag is in .rdata. */
static const NET_BUFFER_LIST_POOL_PARAMETERS s_StaticParams = {
    {NDIS_OBJECT_TYPE_DEFAULT, NET_BUFFER_LIST_POOL_PARAMETERS_REVISION_1,
     sizeof(NET_BUFFER_LIST_POOL_PARAMETERS)},
    NDIS_PROTOCOL_ID_DEFAULT, TRUE, 0, 'iSnS', 2048};
/* Decoy: parameters filled with a tag-like value but never passed to NDIS. */
volatile NET_BUFFER_LIST_POOL_PARAMETERS g_Unused;

NOINLINE VOID NblPool(VOID)
{
    NET_BUFFER_LIST_POOL_PARAMETERS params;
    RtlZeroMemory(&params, sizeof(params));
    params.Header.Type = NDIS_OBJECT_TYPE_DEFAULT;
    params.Header.Revision = NET_BUFFER_LIST_POOL_PARAMETERS_REVISION_1;
    params.Header.Size = sizeof(params);
    params.ProtocolId = NDIS_PROTOCOL_ID_DEFAULT;
    params.fAllocateNetBuffer = TRUE;
    params.PoolTag = 'lNnS';
    /* Decoy: a tag-like value in the neighbouring field (DataSize) is not the tag. */
    params.DataSize = 'dScD';
    g_Keep[0] = NdisAllocateNetBufferListPool(g_Handle, &params);
    g_Keep[1] = NdisAllocateNetBufferListPool(g_Handle,
                                              (PNET_BUFFER_LIST_POOL_PARAMETERS)&s_StaticParams);
}

NOINLINE VOID NbPool(VOID)
{
    g_NbParams.Header.Type = NDIS_OBJECT_TYPE_DEFAULT;
    g_NbParams.Header.Revision = NET_BUFFER_POOL_PARAMETERS_REVISION_1;
    g_NbParams.Header.Size = sizeof(g_NbParams);
    g_NbParams.PoolTag = 'bNnS';
    g_NbParams.DataSize = 0;
    g_Keep[2] = NdisAllocateNetBufferPool(g_Handle, &g_NbParams);
}

NOINLINE VOID Others(PDRIVER_OBJECT DriverObject)
{
    g_Keep[3] = NdisAllocateMemoryWithTagPriority(g_Handle, 64, 'pMnS', 32);
    g_Keep[4] = NdisAllocateGenericObject(DriverObject, 'oGnS', 48);
    ExInitializeLookasideListEx(&g_ListEx, NULL, NULL, NonPagedPool, 0, 128, 'xLnS', 0);
    g_Unused.PoolTag = 'xScD';
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(RegistryPath);
    NblPool();
    NbPool();
    Others(DriverObject);
    return STATUS_SUCCESS;
}
