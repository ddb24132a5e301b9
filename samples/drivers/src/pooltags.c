/*
 * pooltags: a sample kernel driver that allocates with known pool tags through every
 * ntoskrnl pool API in pooltagscan's table, in the code shapes the attribution has to
 * follow, plus decoys that must NOT be reported. It is never loaded anywhere: it exists
 * to be disassembled. ground_truth.json lists what `pooltagscan drivers` must find.
 *
 * Tags are written the way drivers write them, as reversed multi-character literals
 * ('tWtP' is the tag "PtWt" in memory). Every tag of this driver starts with "Pt"
 * (except WdRv and Fz3k, shared with the sample dumps); every decoy starts with "Dc",
 * so a test can tell at a glance which is which.
 */
#include <ntddk.h>

/* Missing from MinGW-w64's headers and import library (see ../build.sh and defs/). They
 * are declared WITHOUT dllimport on purpose: the linker then routes the calls through a
 * `jmp [__imp_X]` thunk, which is the jump-thunk shape the scanner must follow. */
typedef ULONG64 POOL_FLAGS;
#define POOL_FLAG_NON_PAGED 0x40ULL
#define POOL_FLAG_PAGED 0x100ULL
PVOID NTAPI ExAllocatePool2(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag);
PVOID NTAPI ExAllocatePool3(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag,
                            PVOID ExtendedParameters, ULONG ExtendedParametersCount);
VOID NTAPI ExFreePool2(PVOID P, ULONG Tag, PVOID ExtendedParameters,
                       ULONG ExtendedParametersCount);

/* In ntifs.h, which does not combine with ntddk.h in MinGW-w64; declared here. */
NTKERNELAPI PVOID NTAPI FsRtlAllocatePoolWithTag(POOL_TYPE PoolType, ULONG NumberOfBytes,
                                                 ULONG Tag);

#define NOINLINE __attribute__((noinline))

/* What wdm.h's ExAllocatePoolZero helper does on a down-level build: an inline function
 * that ends in ExAllocatePoolWithTag. It is not an export, so the tag must be found at
 * the ExAllocatePoolWithTag call the compiler leaves behind. */
static __inline PVOID SampleAllocatePoolZero(POOL_TYPE Type, SIZE_T Size, ULONG Tag)
{
    PVOID p = ExAllocatePoolWithTag(Type, Size, Tag);
    if (p != NULL)
        RtlZeroMemory(p, Size);
    return p;
}

/* A global that is passed as the tag: its initial value in .data is the tag used. */
ULONG g_PoolTag = 'lGtP';
/* A zero-initialised global (.bss) set at run time before use: the stored constant is
 * the tag, the zero it starts with is not. */
ULONG g_RuntimeTag;
/* A global written with a tag-like constant but never passed to a pool API: a decoy. */
volatile ULONG g_DecoyStore;
/* Tag-like constants in read-only data that never reach a pool API: decoys. */
const ULONG g_DecoyTable[3] = {'1TcD', '2TcD', '3TcD'};

typedef struct _SAMPLE_CONTEXT {
    PVOID Buffer;
    ULONG Tag;
} SAMPLE_CONTEXT, *PSAMPLE_CONTEXT;

NPAGED_LOOKASIDE_LIST g_NPagedList;
PAGED_LOOKASIDE_LIST g_PagedList;
LOOKASIDE_LIST_EX g_ListEx;
PVOID g_Keep[32];

/* An opaque call: the compiler must assume it reads and writes any memory it can reach. */
NOINLINE VOID SampleTouch(PSAMPLE_CONTEXT Context)
{
    Context->Buffer = (PVOID)((ULONG_PTR)Context->Buffer ^ 1);
    __asm__ __volatile__("" ::: "memory");
}

/* The driver's own allocator: the tag reaching ExAllocatePoolWithTag is a parameter, so
 * the tags are the immediates its callers pass. */
NOINLINE PVOID MyAlloc(SIZE_T Size, ULONG Tag)
{
    PVOID p = ExAllocatePoolWithTag(NonPagedPool, Size, Tag);
    if (p != NULL)
        RtlZeroMemory(p, Size);
    return p;
}

/* A tag returned by a helper: a known limit of the analysis (it does not follow return
 * values), so MyAlloc's call site is reported as partly unresolved and PtRv is missed. */
NOINLINE ULONG SampleReturnTag(VOID)
{
    return 'vRtP';
}

/* A wrapper of the wrapper: two levels up. */
NOINLINE PVOID MyAllocPaged(SIZE_T Size, ULONG Tag)
{
    PVOID p = MyAlloc(Size, Tag);
    g_Keep[31] = p;
    return p;
}

/* A wrapper built with a frame pointer, as MSVC's x86 drivers are: on x86 the tag
 * parameter is read through ebp ([ebp+0xc]) instead of esp. */
__attribute__((noinline, optimize("no-omit-frame-pointer"))) PVOID MyAllocFramed(SIZE_T Size,
                                                                                   ULONG Tag)
{
    PVOID p = ExAllocatePoolWithTag(PagedPool, Size, Tag);
    g_Keep[30] = p;
    return p;
}

/* A free wrapper that sets the protected bit like pre-Windows 8 object frees did: the
 * constant reaching ExFreePoolWithTag is the caller's tag OR 0x80000000. */
NOINLINE VOID MyFree(PVOID P, ULONG Tag)
{
    if (P != NULL)
        ExFreePoolWithTag(P, Tag | PROTECTED_POOL);
}

NOINLINE VOID UseRuntimeTag(VOID)
{
    g_Keep[20] = ExAllocatePoolWithTag(PagedPool, 40, g_RuntimeTag);
}

NOINLINE VOID UseGlobalTag(VOID)
{
    g_Keep[21] = ExAllocatePoolWithTag(NonPagedPool, 24, g_PoolTag);
}

/* The tag reaches the API from a structure field reloaded after an opaque call: data
 * flow cannot prove it, so only the YARA fallback (tag-like immediate near an
 * allocation) reports it, with low confidence. */
NOINLINE VOID UseContextTag(PSAMPLE_CONTEXT Context)
{
    Context->Tag = 'fYtP';
    SampleTouch(Context);
    Context->Buffer = ExAllocatePoolWithTag(NonPagedPool, 48, Context->Tag);
}

/* An immediate moved through another register first: the empty asm pins the constant
 * in ebx/rbx, so the compiler has to copy it into the argument slot afterwards. */
NOINLINE VOID UseRegisterTag(VOID)
{
    ULONG tag = 'gRtP';
    __asm__ __volatile__("" : "+b"(tag));
    g_Keep[22] = ExAllocatePoolWithTag(NonPagedPool, 56, tag);
}

/* The tag depends on a condition: both constants reach the call (gcc turns this into
 * the branchless sbb/and/add select idiom; either way both are tags). */
NOINLINE VOID BranchTag(ULONG Which)
{
    ULONG tag;
    if (Which & 1)
        tag = '1BtP';
    else
        tag = '2BtP';
    g_Keep[24] = ExAllocatePoolWithTag(NonPagedPool, 72, tag);
}

/* The tag is set in two blocks that join before the call (the call in the branch keeps
 * the compiler from turning it into a select): both constants reach the call. */
NOINLINE VOID JoinTag(ULONG Which)
{
    ULONG tag = '1JtP';
    if (Which & 2) {
        g_Keep[25] = g_Keep[26];
        SampleTouch((PSAMPLE_CONTEXT)&g_Keep[26]);
        tag = '2JtP';
    }
    g_Keep[27] = ExAllocatePoolWithTag(PagedPool, 88, tag);
}

/* Decoys: a compare with 'PAGE', a store to a global never passed, a tag-like value
 * handed to an allocation API that takes no tag, and to DbgPrint. */
NOINLINE ULONG Decoys(PVOID Section, PVOID Buffer)
{
    ULONG sum = 0;
    ULONG i;
    if (*(ULONG *)Section == 'EGAP')
        sum += 1;
    g_DecoyStore = 'lGcD';
    for (i = 0; i < 3; i++)
        sum += g_DecoyTable[i];
    g_Keep[23] = IoAllocateMdl(Buffer, 'dMcD', FALSE, FALSE, NULL);
    DbgPrint("%x\n", 'pDcD');
    return sum;
}

NOINLINE VOID Lookasides(VOID)
{
    /* The tag is the 6th (7th for the Ex form) argument: a stack argument on both. */
    ExInitializeNPagedLookasideList(&g_NPagedList, NULL, NULL, 0, 64, 'lNtP', 0);
    ExInitializePagedLookasideList(&g_PagedList, NULL, NULL, 0, 128, 'lPtP', 0);
    ExInitializeLookasideListEx(&g_ListEx, NULL, NULL, NonPagedPool, 0, 96, 'xLtP', 0);
}

NOINLINE VOID OtherApis(VOID)
{
    PVOID p;
    g_Keep[0] = ExAllocatePoolWithQuotaTag(PagedPool, 32, 'tQtP');
    g_Keep[1] = ExAllocatePoolWithTagPriority(NonPagedPool, 32, 'rPtP', NormalPoolPriority);
    g_Keep[2] = ExAllocatePool2(POOL_FLAG_NON_PAGED, 64, '2AtP');
    g_Keep[3] = ExAllocatePool3(POOL_FLAG_PAGED, 64, '3AtP', NULL, 0);
    g_Keep[4] = SampleAllocatePoolZero(NonPagedPool, 80, 'rZtP');
    g_Keep[5] = MmAllocateMappingAddress(PAGE_SIZE, 'aMtP');
    g_Keep[6] = FsRtlAllocatePoolWithTag(PagedPool, 16, 'sFtP');
    g_Keep[7] = ExAllocateCacheAwareRundownProtection(NonPagedPool, 'dRtP');
    p = ExAllocatePool2(POOL_FLAG_PAGED, 16, '2AtP');
    ExFreePool2(p, '2FtP', NULL, 0);
    MmFreeMappingAddress(g_Keep[5], 'aMtP');
}

/* Two "third-party" tags that the sample dump generator also plants
 * (samples/gen_common.py THIRD_PARTY_TAGS), so a dump and this driver can be joined:
 * the dump's unknown tags WdRv and Fz3k belong to this driver. */
NOINLINE VOID DumpTags(VOID)
{
    g_Keep[28] = ExAllocatePoolWithTag(NonPagedPool, 160, 'vRdW');
    g_Keep[29] = ExAllocatePool2(POOL_FLAG_PAGED, 176, 'k3zF');
}

NOINLINE VOID OddTags(VOID)
{
    /* Tag 0 and a tag with non-printable bytes are still tags: reported as raw hex. */
    g_Keep[8] = ExAllocatePoolWithTag(NonPagedPool, 8, 0);
    g_Keep[9] = ExAllocatePoolWithTag(NonPagedPool, 8, 0xFF017450);
    /* A free with tag 0 is the untagged ExFreePool: not a tag. */
    ExFreePoolWithTag(g_Keep[8], 0);
}

NOINLINE VOID NTAPI Unload(PDRIVER_OBJECT DriverObject)
{
    UNREFERENCED_PARAMETER(DriverObject);
    ExDeleteNPagedLookasideList(&g_NPagedList);
    ExDeletePagedLookasideList(&g_PagedList);
    MyFree(g_Keep[10], 'rFtP');
    ExFreePoolWithTag(g_Keep[11], 'tWtP');
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    SAMPLE_CONTEXT context;

    g_Keep[11] = ExAllocatePoolWithTag(NonPagedPool, 256, 'tWtP');
    g_Keep[10] = MyAlloc(100, '1MtP');
    g_Keep[12] = MyAlloc(200, '2MtP');
    g_Keep[13] = MyAllocPaged(300, '3MtP');
    g_Keep[15] = MyAllocFramed(400, 'pFtP');
    g_Keep[16] = MyAlloc(500, SampleReturnTag());
    g_RuntimeTag = 'sGtP';
    UseRuntimeTag();
    UseGlobalTag();
    context.Buffer = NULL;
    UseContextTag(&context);
    UseRegisterTag();
    BranchTag(RegistryPath->Length);
    JoinTag(RegistryPath->MaximumLength);
    Lookasides();
    OtherApis();
    OddTags();
    DumpTags();
    g_Keep[14] = (PVOID)(ULONG_PTR)Decoys(DriverObject->DriverStart, g_Keep[11]);
    DriverObject->DriverUnload = Unload;
    return STATUS_SUCCESS;
}
