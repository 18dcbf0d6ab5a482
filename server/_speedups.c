/*
 * gearproto.server._speedups: two small primitives of the job server's hot path,
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
 * Optional: gearproto/server/_wire.py holds the Python versions, which are the
 * reference (tests check both give the same results) and are used when this
 * module is not built or GEARPROTO_PURE_PYTHON is set.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
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

static PyObject *
write_nonblocking(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "write_nonblocking(fd, data) takes 2 arguments");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (fd < 0 || fd > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "bad file descriptor number");
        return NULL;
    }
    PyObject *data = args[1];
    ssize_t written;
    int saved;
    if (PyBytes_CheckExact(data)) {
        written = write((int)fd, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data));
        saved = errno;
    }
    else {
        Py_buffer view;
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
            return NULL;
        }
        written = write((int)fd, view.buf, (size_t)view.len);
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

static PyMethodDef methods[] = {
    {"res_packet", (PyCFunction)(void (*)(void))res_packet, METH_FASTCALL,
     "res_packet(ptype, *parts) -> bytes: a \\0RES packet of the parts."},
    {"write_nonblocking", (PyCFunction)(void (*)(void))write_nonblocking, METH_FASTCALL,
     "write_nonblocking(fd, data) -> int: one write(2) to a non-blocking fd."},
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
