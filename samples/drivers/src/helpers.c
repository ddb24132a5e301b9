/*
 * helpers: tags that do not appear as an immediate at the allocation. A helper
 * function returns the tag (`mov eax, imm; ret` used as the tag argument), and tags
 * are loaded from initialised data: a read-only constant (.rdata) and a writable
 * global that the code never writes (.data). Both are weaker evidence than an
 * immediate at the call, and reported as such. Tags start with "Hr"; decoys with "Dc".
 */
#include <ntddk.h>

#define NOINLINE __attribute__((noinline))

/* Read through a volatile access so the compiler loads it instead of folding it. */
/* gcc would put a volatile const in .data; the section attribute keeps it read-only. */
static const volatile ULONG s_ReadOnlyTag __attribute__((section(".rdata"))) = 'oRrH';
ULONG g_DataTag = 'tDrH';
PVOID g_Keep[16];
volatile LONG g_Switch;

NOINLINE ULONG DriverTag(VOID)
{
    return 'vRrH';
}

/* Two possible tags, chosen at run time. */
NOINLINE ULONG ChooseTag(LONG Which)
{
    if (Which > 3)
        return '1CrH';
    g_Switch = Which;
    return '2CrH';
}

/* Decoy: a helper's tag-like result that is compared, never passed to a pool API. */
NOINLINE ULONG Signature(VOID)
{
    return 'vRcD';
}

NOINLINE VOID Allocate(PULONG Header)
{
    g_Keep[0] = ExAllocatePoolWithTag(NonPagedPool, 64, DriverTag());
    g_Keep[1] = ExAllocatePoolWithTag(NonPagedPool, 96, ChooseTag(g_Switch));
    g_Keep[2] = ExAllocatePoolWithTag(PagedPool, 32, s_ReadOnlyTag);
    g_Keep[3] = ExAllocatePoolWithTag(PagedPool, 48, g_DataTag);
    if (*Header == Signature())
        g_Keep[4] = Header;
    ExFreePoolWithTag(g_Keep[0], DriverTag());
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(RegistryPath);
    Allocate((PULONG)DriverObject->DriverStart);
    return STATUS_SUCCESS;
}
