/*
 * Survive SIGBUS on a mapped dump (inputs/mapguard.py).
 *
 * Reading a dump through a mapping skips the copy out of the page cache (half the time of
 * a one-process scan), but a page of the mapping that the file no longer holds (it
 * shrank under the scan, or the disk failed to read it) raises SIGBUS, which kills a
 * Python process. Ranges of mappings are armed here; a fault inside one is answered by
 * mapping a page of zeros over the faulting page and noting where it starts, and the
 * faulting instruction then reads zeros. The Python side checks the note when it is done
 * with the window and reports the dump as shrunk: the zeros never reach a result. A fault
 * outside every armed range goes to the previous handler, or kills the process as it
 * would have without us.
 *
 * mmap is not on POSIX's list of async-signal-safe calls, but on Linux it is one system
 * call that takes no user-space lock, and this signal is synchronous: it interrupts the
 * faulting instruction of the very thread that armed the range, never a malloc.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if defined(__linux__)
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SLOTS 64

typedef struct {
    volatile uintptr_t low, high;    /* [low, high) */
    volatile uintptr_t first_fault;  /* start of the lowest faulting page in the range, or 0 */
    volatile sig_atomic_t armed;
} slot_t;

static slot_t slots[SLOTS];
static struct sigaction previous;
static uintptr_t page_size;

static void on_sigbus(int sig, siginfo_t *info, void *context)
{
    uintptr_t at = (uintptr_t)info->si_addr;
    for (int i = 0; i < SLOTS; i++) {
        slot_t *s = &slots[i];
        if (!s->armed || at < s->low || at >= s->high)
            continue;
        uintptr_t page = at & ~(page_size - 1);
        if (mmap((void *)page, page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                 -1, 0) == MAP_FAILED)
            break;
        /* The whole page is gone, not only the byte touched first (a copy may touch a
         * page's end before its start). */
        uintptr_t from = page < s->low ? s->low : page;
        if (!s->first_fault || from < s->first_fault)
            s->first_fault = from;
        return;
    }
    /* Not ours: what would have happened without this handler. */
    if ((previous.sa_flags & SA_SIGINFO) && previous.sa_sigaction) {
        previous.sa_sigaction(sig, info, context);
        return;
    }
    if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    /* The default action, now: dies on return (a sent signal as well as a fault). */
    signal(SIGBUS, SIG_DFL);
    raise(SIGBUS);
}

/* Our handler is in place (again: faulthandler.enable() or a signal() call may have put
 * another there since, which becomes the one we hand foreign faults to). */
static int install(void)
{
    struct sigaction now;
    if (sigaction(SIGBUS, NULL, &now) < 0)
        return -1;
    if ((now.sa_flags & SA_SIGINFO) && now.sa_sigaction == on_sigbus)
        return 0;
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_sigbus;
    ours.sa_flags = SA_SIGINFO;
    sigemptyset(&ours.sa_mask);
    if (sigaction(SIGBUS, &ours, &previous) < 0)
        return -1;
    return 0;
}

/* arm(buffer) -> slot: faults inside the buffer's bytes are absorbed until disarm(slot);
 * -1 when every slot is taken or the handler cannot be installed (read the bytes another
 * way then). */
static PyObject *arm(PyObject *self, PyObject *obj)
{
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uintptr_t low = (uintptr_t)view.buf, high = low + (uintptr_t)view.len;
    PyBuffer_Release(&view);
    if (install() < 0)
        return PyLong_FromLong(-1);
    for (int i = 0; i < SLOTS; i++) {
        slot_t *s = &slots[i];
        if (s->armed)
            continue;
        s->low = low;
        s->high = high;
        s->first_fault = 0;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        s->armed = 1;
        return PyLong_FromLong(i);
    }
    return PyLong_FromLong(-1);
}

static slot_t *get_slot(PyObject *arg)
{
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (i < 0 || i >= SLOTS || !slots[i].armed) {
        PyErr_SetString(PyExc_ValueError, "not an armed slot");
        return NULL;
    }
    return &slots[i];
}

/* faulted(slot) -> offset from the range's start of the lowest page that faulted (where
 * the file's bytes stopped), or -1. */
static PyObject *faulted(PyObject *self, PyObject *arg)
{
    slot_t *s = get_slot(arg);
    if (!s)
        return NULL;
    uintptr_t at = s->first_fault;
    return at ? PyLong_FromSize_t(at - s->low) : PyLong_FromLong(-1);
}

/* disarm(slot): the range is no longer watched (call once it is unmapped). */
static PyObject *disarm(PyObject *self, PyObject *arg)
{
    slot_t *s = get_slot(arg);
    if (!s)
        return NULL;
    s->armed = 0;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"arm", arm, METH_O, "Absorb SIGBUS inside a buffer's bytes; returns a slot or -1."},
    {"faulted", faulted, METH_O, "Offset of the lowest page of a slot that faulted, or -1."},
    {"disarm", disarm, METH_O, "Stop watching a slot's range."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mapguard", NULL, -1, methods};

PyMODINIT_FUNC PyInit__mapguard(void)
{
    page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    return PyModule_Create(&module);
}

#else /* not Linux: no guard; inputs/mapguard.py reads with pread instead */

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mapguard", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__mapguard(void)
{
    PyErr_SetString(PyExc_ImportError, "the SIGBUS guard is only built for Linux");
    return NULL;
}
#endif
