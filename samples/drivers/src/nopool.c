/*
 * nopool: a sample driver that imports no pool API at all. Its tag-like constants are
 * decoys: scanning it must give no tag and no error.
 */
#include <ntddk.h>

ULONG g_Value;

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    g_Value = 'pNcD';
    DbgPrint("%x %p\n", 'xNcD', &g_Value);
    return STATUS_SUCCESS;
}
