/*
 * gearproto.server._speedups: small primitives of the job server's hot path,
 * in C because the interpreter's generic machinery costs more than the work.
 *
 *   res_packet(ptype, *parts) -> bytes
 *       A whole "\0RES" packet: the 12-byte header and the parts, in one
 *       allocation (struct.pack plus concatenation made three objects).
 *   write_nonblocking(fd, data) -> int
 *       One write(2) of data to a non-blocking socket, without releasing the GIL:
 *       such a write never blocks, so handing the GIL over and taking it back is
 *       pure cost.  Returns the bytes written, 0 when the socket takes nothing now
 *       (EAGAIN, EINTR); raises OSError for any other error.
 *
 *   write_chunks(fd, chunks) -> int
 *       One writev(2) (a write(2) for a single chunk) of a list of bytes-like
 *       chunks to a non-blocking socket, keeping the GIL like write_nonblocking:
 *       a connection's replies go out in one system call without first being
 *       joined into one object (and a big payload is never copied).  Returns the
 *       bytes NOT written: 0 when all went out, the total when the socket takes
 *       nothing now (EAGAIN, EINTR); raises OSError for any other error.  Chunks
 *       past IOV_MAX count as not written.
 *
 *   poll_read(poller, maxevents, timeout_ms=0) -> list
 *       The reads of one loop iteration for the connections the asyncio runner
 *       reads itself: epoll_wait(2) on the poller (a select.epoll, or its fd),
 *       waiting at most timeout_ms (the GIL is released only for such a wait),
 *       then one read(2) of each ready socket, without releasing the GIL.
 *       Returns a flat list fd, data, fd, data, ...: data is what was read, or
 *       b"" at EOF or on an error (the connection's transport then reads it
 *       again and reports what happened); a socket with nothing to read after all
 *       (EAGAIN, EINTR) is left out.
 *
 * Optional: gearproto/server/_wire.py holds the Python versions, which are the
 * reference (tests check both give the same results) and are used when this
 * module is not built or GEARPROTO_PURE_PYTHON is set.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* At most this many parts; the server never sends more than a handful. */
#define MAX_PARTS 8

static PyObject *
res_packet(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs < 1 || nargs > MAX_PARTS + 1) {
        PyErr_SetString(PyExc_TypeError, "res_packet(ptype, *parts) takes 1 to 9 arguments");
        return NULL;
    }
    long ptype = PyLong_AsLong(args[0]);
    if (ptype == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (ptype < 0 || ptype > 0xFFFFFFFFL) {
        PyErr_SetString(PyExc_ValueError, "packet type out of range");
        return NULL;
    }
    Py_buffer views[MAX_PARTS];
    Py_ssize_t nparts = nargs - 1;
    Py_ssize_t held = 0;
    Py_ssize_t body = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < nparts; i++) {
        PyObject *part = args[i + 1];
        if (PyBytes_CheckExact(part)) {
            /* The usual case, read in place: no buffer to acquire and release. */
            views[i].obj = NULL;
            views[i].buf = PyBytes_AS_STRING(part);
            views[i].len = PyBytes_GET_SIZE(part);
        }
        else if (PyObject_GetBuffer(part, &views[i], PyBUF_SIMPLE) < 0) {
            goto done;
        }
        held++;
        body += views[i].len;
    }
    if (body > (Py_ssize_t)0xFFFFFFFFL) {
        PyErr_SetString(PyExc_ValueError, "packet body over 4 GiB");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, 12 + body);
    if (result == NULL) {
        goto done;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    uint32_t type32 = (uint32_t)ptype;
    uint32_t size32 = (uint32_t)body;
    memcpy(out, "\0RES", 4);
    out[4] = (unsigned char)(type32 >> 24);
    out[5] = (unsigned char)(type32 >> 16);
    out[6] = (unsigned char)(type32 >> 8);
    out[7] = (unsigned char)type32;
    out[8] = (unsigned char)(size32 >> 24);
    out[9] = (unsigned char)(size32 >> 16);
    out[10] = (unsigned char)(size32 >> 8);
    out[11] = (unsigned char)size32;
    out += 12;
    for (Py_ssize_t i = 0; i < nparts; i++) {
        if (views[i].len) {
            memcpy(out, views[i].buf, (size_t)views[i].len);
            out += views[i].len;
        }
    }
done:
    for (Py_ssize_t i = 0; i < held; i++) {
        if (views[i].obj != NULL) {
            PyBuffer_Release(&views[i]);
        }
    }
    return result;
}

/* A file descriptor number given as an int: 0 and *fd set, or -1 with an error. */
static int
fd_argument(PyObject *arg, int *fd)
{
    long number = PyLong_AsLong(arg);
    if (number == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (number < 0 || number > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "bad file descriptor number");
        return -1;
    }
    *fd = (int)number;
    return 0;
}

static PyObject *
write_nonblocking(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "write_nonblocking(fd, data) takes 2 arguments");
        return NULL;
    }
    int fd;
    if (fd_argument(args[0], &fd) < 0) {
        return NULL;
    }
    PyObject *data = args[1];
    ssize_t written;
    int saved;
    if (PyBytes_CheckExact(data)) {
        written = write(fd, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
        saved = errno;
    }
    else {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        written = write(fd, view.buf, (size_t)view.len);
        saved = errno;
        PyBuffer_Release(&view);
    }
    if (written >= 0) {
        return PyLong_FromSsize_t(written);
    }
    if (saved == EAGAIN || saved == EWOULDBLOCK || saved == EINTR) {
        return PyLong_FromLong(0);
    }
    errno = saved;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* The iovecs and views of up to this many chunks live on the stack; more (a
 * connection with many replies in one flush) are allocated for the call. */
#define STACK_CHUNKS 32
#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

static PyObject *
write_chunks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "write_chunks(fd, chunks) takes 2 arguments");
        return NULL;
    }
    int fd;
    if (fd_argument(args[0], &fd) < 0) {
        return NULL;
    }
    PyObject *chunks = args[1];
    if (!PyList_Check(chunks)) {
        PyErr_SetString(PyExc_TypeError, "chunks must be a list");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(chunks);
    Py_ssize_t used = count < IOV_MAX ? count : IOV_MAX;
    struct iovec stack_iov[STACK_CHUNKS];
    Py_buffer stack_views[STACK_CHUNKS];
    struct iovec *iov = stack_iov;
    Py_buffer *views = stack_views;
    if (used > STACK_CHUNKS) {
        iov = PyMem_Malloc(sizeof(struct iovec) * (size_t)used);
        views = PyMem_Malloc(sizeof(Py_buffer) * (size_t)used);
        if (iov == NULL || views == NULL) {
            PyMem_Free(iov);
            PyMem_Free(views);
            return PyErr_NoMemory();
        }
    }
    Py_ssize_t held = 0;
    Py_ssize_t total = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *chunk = PyList_GET_ITEM(chunks, i);
        Py_ssize_t size;
        if (PyBytes_CheckExact(chunk)) {
            size = PyBytes_GET_SIZE(chunk);
            if (i < used) {
                views[i].obj = NULL;
                iov[i].iov_base = PyBytes_AS_STRING(chunk);
                iov[i].iov_len = (size_t)size;
                held++;
            }
        }
        else {
            Py_buffer view;
            if (PyObject_GetBuffer(chunk, &view, PyBUF_SIMPLE) < 0) {
                goto done;
            }
            size = view.len;
            if (i < used) {
                views[i] = view;
                iov[i].iov_base = view.buf;
                iov[i].iov_len = (size_t)view.len;
                held++;
            }
            else {
                PyBuffer_Release(&view);
            }
        }
        total += size;
    }
    /* One chunk (the usual case: one reply per connection and flush) is a plain
     * write(2), which the kernel handles with less work than a vector. */
    ssize_t written = used == 1   ? write(fd, iov[0].iov_base, iov[0].iov_len)
                      : used      ? writev(fd, iov, (int)used)
                                  : 0;
    if (written >= 0) {
        result = PyLong_FromSsize_t(total - written);
    }
    else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        result = PyLong_FromSsize_t(total);
    }
    else {
        PyErr_SetFromErrno(PyExc_OSError);
    }
done:
    for (Py_ssize_t i = 0; i < held; i++) {
        if (views[i].obj != NULL) {
            PyBuffer_Release(&views[i]);
        }
    }
    if (iov != stack_iov) {
        PyMem_Free(iov);
        PyMem_Free(views);
    }
    return result;
}

/* One read per ready socket per call, of at most this much (level-triggered: what
 * is left is reported again by the next call).  Packets this big or bigger are
 * read by the transport into their own buffer, so this bounds only small reads. */
#define READ_SIZE 65536
#define MAX_EVENTS 64

/* Safe as a static: every use is under the GIL, which poll_read never releases. */
static char read_buffer[READ_SIZE];

static PyObject *
poll_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "poll_read(poller, maxevents, timeout_ms=0) takes 2 or 3 arguments");
        return NULL;
    }
    int epfd = PyObject_AsFileDescriptor(args[0]);
    if (epfd < 0) {
        return NULL;
    }
    long maxevents = PyLong_AsLong(args[1]);
    if (maxevents == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (maxevents < 1) {
        PyErr_SetString(PyExc_ValueError, "maxevents must be at least 1");
        return NULL;
    }
    if (maxevents > MAX_EVENTS) {
        maxevents = MAX_EVENTS;
    }
    long timeout = 0;
    if (nargs == 3) {
        timeout = PyLong_AsLong(args[2]);
        if (timeout == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (timeout < 0 || timeout > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "timeout_ms must be from 0 to 2**31-1");
            return NULL;
        }
    }
    struct epoll_event events[MAX_EVENTS];
    int ready;
    if (timeout == 0) {
        ready = epoll_wait(epfd, events, (int)maxevents, 0);
    }
    else {
        /* A wait may last: other threads (the store's writer) run meanwhile. */
        Py_BEGIN_ALLOW_THREADS
        ready = epoll_wait(epfd, events, (int)maxevents, (int)timeout);
        Py_END_ALLOW_THREADS
    }
    if (ready < 0) {
        if (errno == EINTR) {
            return PyList_New(0);
        }
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *result = PyList_New(0);
    if (result == NULL) {
        return NULL;
    }
    for (int i = 0; i < ready; i++) {
        int fd = events[i].data.fd;
        ssize_t got = read(fd, read_buffer, READ_SIZE);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            continue;
        }
        PyObject *number = PyLong_FromLong(fd);
        PyObject *data = PyBytes_FromStringAndSize(read_buffer, got > 0 ? got : 0);
        int failed = number == NULL || data == NULL || PyList_Append(result, number) < 0
                     || PyList_Append(result, data) < 0;
        Py_XDECREF(number);
        Py_XDECREF(data);
        if (failed) {
            Py_DECREF(result);
            return NULL;
        }
    }
    return result;
}

static PyMethodDef methods[] = {
    {"res_packet", (PyCFunction)(void (*)(void))res_packet, METH_FASTCALL,
     "res_packet(ptype, *parts) -> bytes: a \\0RES packet of the parts."},
    {"write_nonblocking", (PyCFunction)(void (*)(void))write_nonblocking, METH_FASTCALL,
     "write_nonblocking(fd, data) -> int: one write(2) to a non-blocking fd."},
    {"write_chunks", (PyCFunction)(void (*)(void))write_chunks, METH_FASTCALL,
     "write_chunks(fd, chunks) -> int: one writev(2); the bytes not written."},
    {"poll_read", (PyCFunction)(void (*)(void))poll_read, METH_FASTCALL,
     "poll_read(poller, maxevents, timeout_ms=0) -> list: fd, data pairs of the ready sockets."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "gearproto.server._speedups",
    "The job server's C primitives (optional; see gearproto/server/_wire.py).",
    0,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module_def);
}
