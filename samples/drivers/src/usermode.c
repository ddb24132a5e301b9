/*
 * usermode: a plain user-mode DLL (Windows CUI subsystem, imports KERNEL32.dll). It is
 * a bad input for `pooltagscan drivers`, which must report it as not a kernel driver.
 */
#include <windows.h>

__declspec(dllexport) void *SampleAllocate(SIZE_T Size)
{
    return HeapAlloc(GetProcessHeap(), 0, Size);
}

BOOL WINAPI DllMain(HINSTANCE Instance, DWORD Reason, LPVOID Reserved)
{
    (void)Instance;
    (void)Reason;
    (void)Reserved;
    return TRUE;
}
