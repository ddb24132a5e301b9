/*
 * videocb: a VideoPort miniport that gets VideoPortAllocatePool through the
 * VideoPortGetProcAddress callback of VIDEO_PORT_CONFIG_INFO (video.h), rather than
 * importing it, keeps it in a global and calls it. Tags start with "Vc".
 */
#include <ntdef.h>
#include <miniport.h>
#include <video.h>

#define NOINLINE __attribute__((noinline))
/* winerror.h values VideoPort miniports return. */
#define NO_ERROR 0L
#define ERROR_INVALID_FUNCTION 1L

typedef PVOID (NTAPI *PFN_VIDEO_PORT_ALLOCATE_POOL)(PVOID HwDeviceExtension,
                                                   VP_POOL_TYPE PoolType,
                                                   SIZE_T NumberOfBytes, ULONG Tag);

PFN_VIDEO_PORT_ALLOCATE_POOL g_VideoPortAllocatePool;
PVOID g_Keep[4];

NOINLINE VP_STATUS NTAPI FindAdapter(PVOID HwDeviceExtension, PVOID HwContext,
                                      PWSTR ArgumentString,
                                      PVIDEO_PORT_CONFIG_INFO ConfigInfo, PUCHAR Again)
{
    (void)HwContext;
    (void)ArgumentString;
    (void)Again;
    g_VideoPortAllocatePool = (PFN_VIDEO_PORT_ALLOCATE_POOL)ConfigInfo->VideoPortGetProcAddress(
        HwDeviceExtension, (PUCHAR) "VideoPortAllocatePool");
    if (g_VideoPortAllocatePool == NULL)
        return ERROR_INVALID_FUNCTION;
    g_Keep[0] = g_VideoPortAllocatePool(HwDeviceExtension, VpNonPagedPool, 512, 'pVcV');
    return NO_ERROR;
}

ULONG NTAPI DriverEntry(PVOID Context1, PVOID Context2)
{
    VIDEO_HW_INITIALIZATION_DATA init;
    VideoPortZeroMemory(&init, sizeof(init));
    init.HwInitDataSize = sizeof(init);
    init.HwFindAdapter = FindAdapter;
    return VideoPortInitialize(Context1, Context2, &init, NULL);
}
