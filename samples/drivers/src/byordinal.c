/*
 * byordinal: a sample driver whose pool API is imported by ordinal, not by name
 * (defs/ntoskrnl_ordinal.def marks it NONAME). The ordinal is only resolvable when the
 * exporting module is scanned in the same batch: ordinal/ntoskrnl.exe, built from
 * fake_ntoskrnl.c, stands in for it. Tags start with "Od".
 */
#include <ntddk.h>

PVOID g_Keep[2];

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    g_Keep[0] = ExAllocatePoolWithTag(NonPagedPool, 64, 'lOdO');
    ExFreePoolWithTag(g_Keep[1], 'lOdO');
    return STATUS_SUCCESS;
}
