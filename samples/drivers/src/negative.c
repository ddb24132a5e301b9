/*
 * negative: precision. One real tag (NgOk) next to tag-like text and constants that
 * are not tags: a compared magic value, a signature check, a hash seed computed just
 * before an allocation whose tag the analysis cannot follow (so the low-confidence
 * fallback looks at that code), a string, and the PDB path in the debug directory
 * (build.sh links with --pdb=NgPd_negative_ARCH.pdb; ld keeps the file name only). None of these may be reported.
 * Tags start with "Ng"; ground_truth.json lists the decoys.
 */
#include <ntddk.h>

#define NOINLINE __attribute__((noinline))

typedef struct _HEADER {
    ULONG Magic;
    ULONG Signature;
    ULONG Length;
    UCHAR Name[16];
} HEADER, *PHEADER;

typedef struct _CONTEXT_TAG {
    PVOID Buffer;
    ULONG Tag;  /* set at run time from elsewhere: not visible to a static analysis */
} CONTEXT_TAG, *PCONTEXT_TAG;

PVOID g_Keep[8];

/* A hash seeded with a tag-like constant (an FNV-style loop), then an allocation whose
 * size is the hash and whose tag comes from the caller's structure. */
NOINLINE PVOID HashedAllocate(PHEADER Header, PCONTEXT_TAG Context)
{
    ULONG hash = 'sHgN';
    ULONG i;
    for (i = 0; i < sizeof(Header->Name); i++)
        hash = (hash ^ Header->Name[i]) * 16777619u;
    return ExAllocatePoolWithTag(NonPagedPool, (hash & 0xff) + 16, Context->Tag);
}

/* Magic and signature checks: compared, never allocated with. */
NOINLINE BOOLEAN Valid(PHEADER Header)
{
    if (Header->Magic != 'mCgN')
        return FALSE;
    return Header->Signature == 'gSgN';
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PHEADER header = (PHEADER)DriverObject->DriverStart;
    UNREFERENCED_PARAMETER(RegistryPath);
    if (!Valid(header))
        return STATUS_INVALID_IMAGE_FORMAT;
    g_Keep[0] = ExAllocatePoolWithTag(NonPagedPool, 64, 'kOgN');
    g_Keep[1] = HashedAllocate(header, (PCONTEXT_TAG)DriverObject->DriverExtension);
    DbgPrint("NgSt: loaded\n");
    return STATUS_SUCCESS;
}
