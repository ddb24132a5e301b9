/*
 * kmdf: a KMDF-style driver. KMDF drivers reach the framework through the WdfFunctions
 * table that WdfVersionBind (WDFLDR.SYS) fills; the KMDF stub library linked into every
 * KMDF driver passes it a WDF_BIND_INFO whose FuncTable member points at the driver's
 * WdfFunctions variable. wdf.h's inline wrappers then call
 * `WdfFunctions[WdfMemoryCreateTableIndex](WdfDriverGlobals, ...)`. MinGW-w64 has no
 * KMDF headers, so the shapes are declared here from the public KMDF headers
 * (wdfldr.h, wdffuncenum.h, wdfmemory.h, wdfdriver.h). Tags start with "Kf"; decoys
 * with "Dc". ground_truth.json lists what must be found.
 */
#include <ntddk.h>

#define NOINLINE __attribute__((noinline))

typedef struct _WDF_VERSION {
    ULONG Major;
    ULONG Minor;
    ULONG Build;
} WDF_VERSION;

typedef VOID (*WDFFUNC)(VOID);

/* wdfldr.h */
typedef struct _WDF_BIND_INFO {
    ULONG Size;
    PWCHAR Component;
    WDF_VERSION Version;
    ULONG FuncCount;
    WDFFUNC **FuncTable;
    PVOID Module;
} WDF_BIND_INFO, *PWDF_BIND_INFO;

typedef struct _WDF_DRIVER_GLOBALS *PWDF_DRIVER_GLOBALS;

/* wdfdriver.h */
typedef struct _WDF_DRIVER_CONFIG {
    ULONG Size;
    PVOID EvtDriverDeviceAdd;
    PVOID EvtDriverUnload;
    ULONG DriverInitFlags;
    ULONG DriverPoolTag;
} WDF_DRIVER_CONFIG, *PWDF_DRIVER_CONFIG;

/* wdffuncenum.h (KMDF 1.x; the enumeration only ever grows at its end) */
enum {
    WdfDriverCreateTableIndex = 116,
    WdfMemoryCreateTableIndex = 192,
    WdfMemoryCreatePreallocatedTableIndex = 193,
    WdfLookasideListCreateTableIndex = 198,
    WdfFunctionCount = 444,
};

typedef NTSTATUS (NTAPI *PFN_WDFDRIVERCREATE)(PWDF_DRIVER_GLOBALS, PDRIVER_OBJECT,
                                              PUNICODE_STRING, PVOID Attributes,
                                              PWDF_DRIVER_CONFIG, PVOID *Driver);
typedef NTSTATUS (NTAPI *PFN_WDFMEMORYCREATE)(PWDF_DRIVER_GLOBALS, PVOID Attributes,
                                              POOL_TYPE PoolType, ULONG PoolTag,
                                              SIZE_T BufferSize, PVOID *Memory,
                                              PVOID *Buffer);
typedef NTSTATUS (NTAPI *PFN_WDFMEMORYCREATEPREALLOCATED)(PWDF_DRIVER_GLOBALS,
                                                          PVOID Attributes, PVOID Buffer,
                                                          SIZE_T BufferSize, PVOID *Memory);
typedef NTSTATUS (NTAPI *PFN_WDFLOOKASIDELISTCREATE)(PWDF_DRIVER_GLOBALS,
                                                     PVOID LookasideAttributes,
                                                     SIZE_T BufferSize, POOL_TYPE PoolType,
                                                     PVOID MemoryAttributes, ULONG PoolTag,
                                                     PVOID *Lookaside);

DECLSPEC_IMPORT NTSTATUS NTAPI WdfVersionBind(PDRIVER_OBJECT DriverObject,
                                              PUNICODE_STRING RegistryPath,
                                              PWDF_BIND_INFO BindInfo,
                                              PWDF_DRIVER_GLOBALS *Globals);

WDFFUNC *WdfFunctions;
PWDF_DRIVER_GLOBALS WdfDriverGlobals;
WDF_BIND_INFO WdfBindInfo = {sizeof(WDF_BIND_INFO), L"KmdfLibrary", {1, 15, 0},
                             WdfFunctionCount, &WdfFunctions, NULL};
PVOID g_Keep[16];
UCHAR g_Buffer[64];

NOINLINE NTSTATUS Memory(VOID)
{
    PVOID memory = NULL, lookaside = NULL, buffer = NULL;
    NTSTATUS status;
    status = ((PFN_WDFMEMORYCREATE)WdfFunctions[WdfMemoryCreateTableIndex])(
        WdfDriverGlobals, NULL, NonPagedPool, 'cMfK', 256, &memory, &buffer);
    g_Keep[0] = memory;
    status |= ((PFN_WDFLOOKASIDELISTCREATE)WdfFunctions[WdfLookasideListCreateTableIndex])(
        WdfDriverGlobals, NULL, 128, NonPagedPool, NULL, 'lLfK', &lookaside);
    g_Keep[1] = lookaside;
    /* No tag argument: a tag-like buffer size is not a tag. */
    status |= ((PFN_WDFMEMORYCREATEPREALLOCATED)
                   WdfFunctions[WdfMemoryCreatePreallocatedTableIndex])(
        WdfDriverGlobals, NULL, g_Buffer, 'pKcD', &memory);
    g_Keep[2] = memory;
    return status;
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    WDF_DRIVER_CONFIG config;
    PVOID driver = NULL;
    NTSTATUS status = WdfVersionBind(DriverObject, RegistryPath, &WdfBindInfo,
                                     &WdfDriverGlobals);
    if (!NT_SUCCESS(status))
        return status;
    RtlZeroMemory(&config, sizeof(config));
    config.Size = sizeof(config);
    config.DriverPoolTag = 'rDfK';
    status = ((PFN_WDFDRIVERCREATE)WdfFunctions[WdfDriverCreateTableIndex])(
        WdfDriverGlobals, DriverObject, RegistryPath, NULL, &config, &driver);
    if (!NT_SUCCESS(status))
        return status;
    return Memory();
}
