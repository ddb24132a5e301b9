/*
 * A stand-in for ntoskrnl.exe that exports two pool APIs at fixed ordinals
 * (defs/fake_ntoskrnl.def), so that byordinal_x64.sys's by-ordinal imports can be
 * resolved from the batch. It does nothing and is never loaded.
 */
typedef unsigned long ULONG;
typedef unsigned long long SIZE_T;

void *__stdcall ExAllocatePoolWithTag(int PoolType, SIZE_T NumberOfBytes, ULONG Tag)
{
    (void)PoolType;
    (void)NumberOfBytes;
    (void)Tag;
    return 0;
}

void __stdcall ExFreePoolWithTag(void *P, ULONG Tag)
{
    (void)P;
    (void)Tag;
}

long __stdcall FakeEntry(void *DriverObject, void *RegistryPath)
{
    (void)DriverObject;
    (void)RegistryPath;
    return 0;
}
