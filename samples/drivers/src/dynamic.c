/*
 * dynamic: pool APIs resolved at run time, the way drivers that run on old and new
 * Windows call ExAllocatePool2 (and how portable runtimes allocate). The driver
 * imports no pool API at all: MmGetSystemRoutineAddress returns the routines, the
 * driver keeps them in globals (one a structure of function pointers) and calls them
 * directly, through a register, or through the Control Flow Guard dispatch pointer.
 * Tags start with "Dy"; decoys with "Dc". ground_truth.json lists what must be found.
 *
 * The routine names reach MmGetSystemRoutineAddress in the three ways drivers write
 * them: RtlInitUnicodeString on a stack UNICODE_STRING, a static initialised
 * UNICODE_STRING (RTL_CONSTANT_STRING), and a stack UNICODE_STRING built field by field.
 */
#include <ntddk.h>

#define NOINLINE __attribute__((noinline))
typedef ULONG64 POOL_FLAGS;
#define POOL_FLAG_NON_PAGED 0x40ULL

/* Signatures from the WDK documentation of each routine. */
typedef PVOID (NTAPI *PFN_ALLOCATE_POOL2)(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag);
typedef PVOID (NTAPI *PFN_ALLOCATE_POOL3)(POOL_FLAGS Flags, SIZE_T NumberOfBytes, ULONG Tag,
                                         PVOID ExtendedParameters, ULONG Count);
typedef PVOID (NTAPI *PFN_ALLOCATE_WITH_TAG)(POOL_TYPE PoolType, SIZE_T NumberOfBytes,
                                            ULONG Tag);
typedef VOID (NTAPI *PFN_FREE_WITH_TAG)(PVOID P, ULONG Tag);
typedef VOID (NTAPI *PFN_STALL)(ULONG MicroSeconds);

/* A table of function pointers, as portable runtimes keep their kernel imports. */
typedef struct _POOL_ROUTINES {
    PFN_ALLOCATE_POOL3 Allocate3;
    PFN_FREE_WITH_TAG Free;
} POOL_ROUTINES;

PFN_ALLOCATE_POOL2 g_AllocatePool2;
PFN_ALLOCATE_WITH_TAG g_AllocateWithTag;
PFN_STALL g_Stall;
POOL_ROUTINES g_Pool;
PVOID g_Keep[32];

static UNICODE_STRING s_WithTagName = RTL_CONSTANT_STRING(L"ExAllocatePoolWithTag");

#if defined(__x86_64__)
/* What MSVC's /guard:cf makes of an indirect call on x64: the target in rax, then
 * `call [__guard_dispatch_icall_fptr]`. In the image the pointer holds the address of
 * _guard_dispatch_icall_nop, a lone `jmp rax`; the kernel repoints it at load time. */
__asm__(".text\n.p2align 4\nSampleGuardDispatchNop:\n\tjmp *%rax\n");
extern void SampleGuardDispatchNop(void);
void *__guard_dispatch_icall_fptr = (void *)SampleGuardDispatchNop;

NOINLINE PVOID GuardedAllocate(SIZE_T Size)
{
    register PVOID target __asm__("rax") = (PVOID)g_AllocatePool2;
    register ULONG64 flags __asm__("rcx") = POOL_FLAG_NON_PAGED;
    register SIZE_T size __asm__("rdx") = Size;
    register ULONG tag __asm__("r8") = 'fCyD';
    __asm__ __volatile__("subq $40, %%rsp\n\tcall *__guard_dispatch_icall_fptr(%%rip)\n\t"
                         "addq $40, %%rsp"
                         : "+r"(target), "+r"(flags), "+r"(size), "+r"(tag)
                         :
                         : "r9", "r10", "r11", "memory", "cc");
    return target;
}
#else
/* x86 /guard:cf: the target goes to ecx for `call [__guard_check_icall_fptr]` (which
 * holds _guard_check_icall_nop, a lone `ret`, in the image), then `call reg`. */
__asm__(".text\n.p2align 4\n_SampleGuardCheckNop:\n\tret\n");
extern void SampleGuardCheckNop(void);
void *__guard_check_icall_fptr = (void *)SampleGuardCheckNop;

NOINLINE PVOID GuardedAllocate(SIZE_T Size)
{
    PFN_ALLOCATE_POOL2 target = g_AllocatePool2;
    ((void(__fastcall *)(PVOID))__guard_check_icall_fptr)((PVOID)target);
    return target(POOL_FLAG_NON_PAGED, Size, 'fCyD');
}
#endif

/* A portable runtime's allocator: one tag, many call sites. */
NOINLINE PVOID RtAlloc(SIZE_T Size)
{
    return g_AllocatePool2(POOL_FLAG_NON_PAGED, Size, 'tRyD');
}

NOINLINE VOID RtFree(PVOID P)
{
    if (P != NULL)
        g_Pool.Free(P, 'tRyD');
}

/* A wrapper whose callers choose the tag. */
NOINLINE PVOID RtAllocTagged(SIZE_T Size, ULONG Tag)
{
    return g_AllocateWithTag(NonPagedPool, Size, Tag);
}

NOINLINE VOID Resolve(VOID)
{
    UNICODE_STRING name;
    UNICODE_STRING freeName;

    RtlInitUnicodeString(&name, L"ExAllocatePool2");
    g_AllocatePool2 = (PFN_ALLOCATE_POOL2)MmGetSystemRoutineAddress(&name);
    RtlInitUnicodeString(&name, L"ExAllocatePool3");
    g_Pool.Allocate3 = (PFN_ALLOCATE_POOL3)MmGetSystemRoutineAddress(&name);
    g_AllocateWithTag = (PFN_ALLOCATE_WITH_TAG)MmGetSystemRoutineAddress(&s_WithTagName);
    freeName.Buffer = L"ExFreePoolWithTag";
    freeName.Length = sizeof(L"ExFreePoolWithTag") - sizeof(WCHAR);
    freeName.MaximumLength = sizeof(L"ExFreePoolWithTag");
    g_Pool.Free = (PFN_FREE_WITH_TAG)MmGetSystemRoutineAddress(&freeName);
    RtlInitUnicodeString(&name, L"KeStallExecutionProcessor");
    g_Stall = (PFN_STALL)MmGetSystemRoutineAddress(&name);
}

NOINLINE VOID UseRoutines(VOID)
{
    int i;
    g_Keep[0] = g_AllocatePool2(POOL_FLAG_NON_PAGED, 64, '2AyD');
    g_Keep[1] = g_Pool.Allocate3(POOL_FLAG_NON_PAGED, 96, '3AyD', NULL, 0);
    g_Keep[2] = g_AllocateWithTag(NonPagedPool, 32, 'tWyD');
    g_Pool.Free(g_Keep[2], 'tWyD');
    g_Keep[3] = GuardedAllocate(48);
    g_Keep[4] = RtAllocTagged(16, '1WyD');
    g_Keep[5] = RtAllocTagged(24, '2WyD');
    for (i = 6; i < 12; i++)
        g_Keep[i] = RtAlloc(16 * i);
    RtFree(g_Keep[6]);
    /* Decoy: a tag-like value given to a resolved routine that is not a pool API. */
    g_Stall('yDcD');
}

NTSTATUS NTAPI DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    Resolve();
    if (g_AllocatePool2 == NULL || g_Pool.Free == NULL)
        return STATUS_NOT_SUPPORTED;
    UseRoutines();
    g_Keep[12] = RtAlloc(256);
    g_Keep[13] = RtAlloc(512);
    return STATUS_SUCCESS;
}
