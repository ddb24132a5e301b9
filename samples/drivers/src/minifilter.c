/*
 * minifilter: a file-system minifilter's context tags. FltMgr allocates a filter's
 * contexts itself, under the PoolTag its FLT_CONTEXT_REGISTRATION names; the only
 * trace in the driver is the static FLT_REGISTRATION passed to FltRegisterFilter,
 * whose ContextRegistration pointer leads to that array (ended by FLT_CONTEXT_END).
 * Plus a direct FltAllocatePoolAlignedWithTag. Tags start with "Mf"; the decoy array,
 * never registered, with "Dc".
 *
 * MinGW-w64 ships no fltKernel.h: the structures are declared here with the public
 * header's field order and types, which give the layouts apis.py cites.
 */
#include <ntddk.h>

typedef struct {
    USHORT ContextType;
    USHORT Flags;
    PVOID ContextCleanupCallback;
    SIZE_T Size;
    ULONG PoolTag;
    PVOID ContextAllocateCallback;
    PVOID ContextFreeCallback;
    PVOID Reserved1;
} CONTEXT_REGISTRATION;

typedef struct {
    USHORT Size;
    USHORT Version;
    ULONG Flags;
    const CONTEXT_REGISTRATION *ContextRegistration;
    const VOID *OperationRegistration;
    PVOID FilterUnloadCallback;
    PVOID InstanceSetupCallback;
    PVOID InstanceQueryTeardownCallback;
    PVOID InstanceTeardownStartCallback;
    PVOID InstanceTeardownCompleteCallback;
    PVOID GenerateFileNameCallback;
    PVOID NormalizeNameComponentCallback;
    PVOID NormalizeContextCleanupCallback;
    PVOID TransactionNotificationCallback;
    PVOID NormalizeNameComponentExCallback;
    PVOID SectionNotificationCallback;
} REGISTRATION;

#define FLT_VOLUME_CONTEXT 0x0001
#define FLT_INSTANCE_CONTEXT 0x0002
#define FLT_STREAM_CONTEXT 0x0010
#define FLT_CONTEXT_END 0xffff
#define FLT_REGISTRATION_VERSION 0x0203

DECLSPEC_IMPORT NTSTATUS NTAPI FltRegisterFilter(PDRIVER_OBJECT Driver,
                                                 const REGISTRATION *Registration,
                                                 PVOID *RetFilter);
DECLSPEC_IMPORT PVOID NTAPI FltAllocatePoolAlignedWithTag(PVOID Instance, POOL_TYPE PoolType,
                                                          SIZE_T NumberOfBytes, ULONG Tag);
DECLSPEC_IMPORT VOID NTAPI FltFreePoolAlignedWithTag(PVOID Instance, PVOID Buffer, ULONG Tag);

static VOID NTAPI Cleanup(PVOID Context, USHORT ContextType)
{
    (void)Context;
    (void)ContextType;
}

static const CONTEXT_REGISTRATION Contexts[] = {
    {FLT_VOLUME_CONTEXT, 0, Cleanup, 64, 'lVfM', NULL, NULL, NULL},
    {FLT_INSTANCE_CONTEXT, 0, Cleanup, 32, 'nIfM', NULL, NULL, NULL},
    {FLT_STREAM_CONTEXT, 0, Cleanup, 128, 'tSfM', NULL, NULL, NULL},
    {FLT_CONTEXT_END},
};

/* Decoy: the same shape, never registered. */
const CONTEXT_REGISTRATION Unused[] = {
    {FLT_STREAM_CONTEXT, 0, Cleanup, 16, 'lFcD', NULL, NULL, NULL},
    {FLT_CONTEXT_END},
};

static const REGISTRATION FilterRegistration = {
    sizeof(REGISTRATION), FLT_REGISTRATION_VERSION, 0, Contexts, NULL,
};

PVOID g_Filter;
PVOID g_Keep[2];
volatile PVOID g_Instance;

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    (void)RegistryPath;
    g_Keep[0] = (PVOID)Unused;
    NTSTATUS status = FltRegisterFilter(DriverObject, &FilterRegistration, &g_Filter);
    g_Keep[1] = FltAllocatePoolAlignedWithTag(g_Instance, NonPagedPool, 256, 'fBfM');
    FltFreePoolAlignedWithTag(g_Instance, g_Keep[1], 'fBfM');
    return status;
}
