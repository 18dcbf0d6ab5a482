/*
 * gearproto._speedups: the receive loops of gearproto._connection, compiled.
 *
 * Connection._parse_requests (server side) and Connection._parse_responses (client
 * side) are translated here statement by statement: the same fast-path tests in the
 * same order, the same state changes on the Connection's own objects (its ready
 * list, reply queue, handle sets and dicts), and every packet the Python fast path
 * hands to the slow path is handed to the very same Python method
 * (Connection._slow_request / _slow_response).  So errors, rarely used packet types,
 * admin text and large bodies run the reference code, and the compiled loops only
 * replace work whose result is fully determined by the Python fast path.
 *
 * The tables (event classes, branch numbers, singletons, ...) are handed over by
 * gearproto._connection through configure() at import, so this file holds no copy of
 * the packet table.  The Python implementation is the reference: the differential
 * tests (tests/test_core_speedups.py) feed both the same streams.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <structmember.h> /* T_OBJECT_EX */

#include <stdint.h>
#include <string.h>

/* Version of the tables configure() expects (gearproto._connection._SPEEDUPS_API). */
#define SPEEDUPS_API 3
#define NTYPES 43 /* packet types 1..42; index 0 unused */
#define HEADER 12

/* Branch numbers of the server loop (Connection._parse_requests). */
enum {
    S_WORK = 1,
    S_SUBMIT,
    S_GRAB,
    S_SLEEP,
    S_ECHO,
    S_ABILITY,
    S_ONE_FIELD,
    S_WORK_STATUS,
    S_WORK_FAIL,
    S_CLIENT_ID,
    S_RESET,
    S_LAST
};

/* Branch numbers of the client loop (Connection._parse_responses). */
enum {
    C_CREATED = 1,
    C_WORK,
    C_NOOP,
    C_NOJOB,
    C_ASSIGN,
    C_ECHO,
    C_WORK_STATUS,
    C_WORK_FAIL,
    C_STATUS,
    C_OPTION,
    C_LAST
};

/* ------------------------------------------------------------------ tables */

static int configured = 0;
static unsigned char server_branch[NTYPES];
static unsigned char client_branch[NTYPES];
static unsigned char ends_job[NTYPES];
static unsigned char assign_nuls[NTYPES];
static PyObject *classes[NTYPES];    /* event class per type */
static PyObject *singletons[NTYPES]; /* event of each bodiless type, else NULL */
static PyObject *priority_of[NTYPES];
static PyObject *background_of[NTYPES];

static PyObject *SubmitJob, *SubmitReduceJob, *EchoReq, *EchoRes, *WorkStatus,
    *WorkFail, *JobCreated, *StatusRes, *OptionRes, *OptionReq, *GetStatus;
static PyObject *submit_classes; /* frozenset */
static PyObject *grab_classes;   /* frozenset */
static PyObject *replies_to;     /* dict: request class -> frozenset of reply classes */
static PyObject *noop_event, *no_job_event;
static Py_ssize_t large_body;
static Py_ssize_t finished_max;
static unsigned long long req_base, res_base;

/* next_event(): the Connection class, the offsets of the slots it reads, the Python
   implementation (for connections on the Python loops) and this module's loops. */
static PyTypeObject *connection_type;
static Py_ssize_t off_ri, off_ready, off_answers, off_answered, off_parse_loop;
static Py_ssize_t off_chunks, off_size, off_need, off_dead, off_line_wait, off_listing,
    off_raise_next, off_state, off_eof, off_line_limit;
static PyObject *python_next_event, *python_receive_data;
static PyObject *loop_requests, *loop_responses;
static PyObject *state_open, *need_data; /* ConnectionState.OPEN, NEED_DATA */
static PyObject *s_next_event, *s_join, *empty_bytes;

/* Interned attribute and method names. */
static PyObject *s_ready, *s_pending, *s_worker_handles, *s_client_handles,
    *s_finished, *s_limits, *s_max_function, *s_max_unique, *s_max_number,
    *s_max_handle, *s_max_text, *s_field_limit, *s_max_packet, *s_grabs,
    *s_sleeping, *s_listing, *s_answers, *s_append, *s_pop, *s_popleft,
    *s_push_run, *s_slow_request, *s_slow_response, *s_trim_finished, *s_next_event_slow;
static PyObject *one; /* the int 1 */

/* ----------------------------------------------------------------- helpers */

/* A reference held in a C local, replaced like a Python assignment. */
#define ASSIGN(var, value)         \
    do {                           \
        PyObject *_old = (var);    \
        (var) = Py_NewRef(value);  \
        Py_XDECREF(_old);          \
    } while (0)

static inline unsigned long long
read_u64(const unsigned char *p)
{
    return ((unsigned long long)p[0] << 56) | ((unsigned long long)p[1] << 48) |
           ((unsigned long long)p[2] << 40) | ((unsigned long long)p[3] << 32) |
           ((unsigned long long)p[4] << 24) | ((unsigned long long)p[5] << 16) |
           ((unsigned long long)p[6] << 8) | (unsigned long long)p[7];
}

static inline Py_ssize_t
read_u32(const unsigned char *p)
{
    /* An unsigned 32-bit value always fits: Py_ssize_t is at least 32 bits, and on
       32-bit platforms values >= 2**31 are clamped (they fail every size test). */
    uint32_t v = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
                 ((uint32_t)p[2] << 8) | (uint32_t)p[3];
#if SIZEOF_SIZE_T < 8
    if (v > (uint32_t)PY_SSIZE_T_MAX)
        return PY_SSIZE_T_MAX;
#endif
    return (Py_ssize_t)v;
}

/* ``bytes.isdigit()``: non-empty and only ASCII digits. */
static inline int
is_digits(const char *p, Py_ssize_t len)
{
    if (len <= 0)
        return 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
    }
    return 1;
}

/* ``int(p[:len])`` for a string of digits (is_digits() was true). */
static PyObject *
digits_to_int(const char *p, Py_ssize_t len)
{
    if (len <= 18) {
        unsigned long long v = 0;
        for (Py_ssize_t i = 0; i < len; i++)
            v = v * 10 + (unsigned long long)(p[i] - '0');
        return PyLong_FromUnsignedLongLong(v);
    }
    /* Longer: exactly what int(bytes) does, digit limits included. */
    PyObject *raw = PyBytes_FromStringAndSize(p, len);
    if (raw == NULL)
        return NULL;
    PyObject *value = PyNumber_Long(raw);
    Py_DECREF(raw);
    return value;
}

/* A limit from Limits (a positive int, possibly beyond Py_ssize_t): clamped. */
static int
as_limit(PyObject *value, Py_ssize_t *out)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0 || v > (long long)PY_SSIZE_T_MAX)
        *out = PY_SSIZE_T_MAX;
    else if (overflow < 0 || v < -1)
        *out = -1;
    else
        *out = (Py_ssize_t)v;
    return 0;
}

static int
attr_limit(PyObject *obj, PyObject *name, Py_ssize_t *out)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    int rc = as_limit(value, out);
    Py_DECREF(value);
    return rc;
}

/* ``tuple.__new__(cls, items)``: an event instance; steals every item, even on error.

   The event is not tracked by the cycle collector when it cannot be part of a
   cycle: its items are bytes, ints and bools (CPython's collector untracks such
   tuples itself the first time it sees them; doing it now spares that traversal),
   or a Priority member -- those live as long as the interpreter, so a cycle
   through one never becomes garbage. */
static PyObject *
make_event_tracked(PyObject *cls, Py_ssize_t n, PyObject **items, int keep_tracked)
{
    PyTypeObject *type = (PyTypeObject *)cls;
    PyObject *event = type->tp_alloc(type, n);
    if (event == NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            Py_DECREF(items[i]);
        return NULL;
    }
    int atomic = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTuple_SET_ITEM(event, i, items[i]);
        atomic &= !PyObject_IS_GC(items[i]);
    }
    if (atomic || !keep_tracked)
        PyObject_GC_UnTrack(event);
    return event;
}

static inline PyObject *
make_event(PyObject *cls, Py_ssize_t n, PyObject **items)
{
    return make_event_tracked(cls, n, items, 1);
}

/* An event of one bytes field, the body src[start:end]. */
static PyObject *
event_of_body(PyObject *cls, const char *src, Py_ssize_t start, Py_ssize_t end)
{
    PyObject *body = PyBytes_FromStringAndSize(src + start, end - start);
    if (body == NULL)
        return NULL;
    return make_event(cls, 1, &body);
}

/* Split src[start:end] like ``bytes.split(b"\0", nuls)``: cuts[i] is where part i
   ends (a NUL, or end for the last part).  Returns how many parts there are. */
static inline Py_ssize_t
split_nul(const char *src, Py_ssize_t start, Py_ssize_t end, Py_ssize_t nuls,
          Py_ssize_t *cuts)
{
    Py_ssize_t parts = 0;
    Py_ssize_t at = start;
    while (parts < nuls) {
        const char *nul = memchr(src + at, 0, (size_t)(end - at));
        if (nul == NULL)
            break;
        cuts[parts++] = nul - src;
        at = nul - src + 1;
    }
    cuts[parts++] = end;
    return parts;
}

/* The parts of a split as new bytes objects (parts[i] = src[from_i:cuts[i]]). */
static int
split_parts(const char *src, Py_ssize_t start, Py_ssize_t count, const Py_ssize_t *cuts,
            PyObject **parts)
{
    Py_ssize_t from = start;
    for (Py_ssize_t i = 0; i < count; i++) {
        parts[i] = PyBytes_FromStringAndSize(src + from, cuts[i] - from);
        if (parts[i] == NULL) {
            for (Py_ssize_t j = 0; j < i; j++)
                Py_DECREF(parts[j]);
            return -1;
        }
        from = cuts[i] + 1;
    }
    return 0;
}

/* ``conn.attr += delta`` for an int attribute. */
static int
add_to_attr(PyObject *conn, PyObject *name, int delta)
{
    PyObject *value = PyObject_GetAttr(conn, name);
    if (value == NULL)
        return -1;
    PyObject *updated =
        delta > 0 ? PyNumber_InPlaceAdd(value, one) : PyNumber_InPlaceSubtract(value, one);
    Py_DECREF(value);
    if (updated == NULL)
        return -1;
    int rc = PyObject_SetAttr(conn, name, updated);
    Py_DECREF(updated);
    return rc;
}

/* Call ``func(arg)``, dropping the result. */
static inline int
call_one(PyObject *func, PyObject *arg)
{
    PyObject *result = PyObject_CallOneArg(func, arg);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* ``[count, work, last, work_last, other_last]``: a run of requests without reply. */
static PyObject *
run_list(Py_ssize_t count, Py_ssize_t work, PyObject *last, PyObject *work_last,
         PyObject *other_last)
{
    PyObject *c = PyLong_FromSsize_t(count);
    if (c == NULL)
        return NULL;
    PyObject *w = PyLong_FromSsize_t(work);
    if (w == NULL) {
        Py_DECREF(c);
        return NULL;
    }
    PyObject *run = PyList_New(5);
    if (run == NULL) {
        Py_DECREF(c);
        Py_DECREF(w);
        return NULL;
    }
    PyList_SET_ITEM(run, 0, c);
    PyList_SET_ITEM(run, 1, w);
    PyList_SET_ITEM(run, 2, Py_NewRef(last));
    PyList_SET_ITEM(run, 3, Py_NewRef(work_last));
    PyList_SET_ITEM(run, 4, Py_NewRef(other_last));
    /* A run only ever holds ints, None and request events (tuples of bytes, ints,
       bools and Priority members), none of which can refer back to it: it cannot be
       part of a cycle, and a server that has many requests queued should not pay
       for traversing them at every collection. */
    PyObject_GC_UnTrack(run);
    return run;
}

/* ``self._push_run(last, count, work, work_last, other_last)`` */
static int
push_run(PyObject *conn, PyObject *last, Py_ssize_t count, Py_ssize_t work,
         PyObject *work_last, PyObject *other_last)
{
    PyObject *c = PyLong_FromSsize_t(count);
    if (c == NULL)
        return -1;
    PyObject *w = PyLong_FromSsize_t(work);
    if (w == NULL) {
        Py_DECREF(c);
        return -1;
    }
    PyObject *args[6] = {conn, last, c, w, work_last, other_last};
    PyObject *result = PyObject_VectorcallMethod(
        s_push_run, args, 6 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(c);
    Py_DECREF(w);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* ``pos, go_on = self.<method>(src, pos)``; returns go_on (0/1) or -1. */
static int
slow_path(PyObject *conn, PyObject *method, PyObject *src, Py_ssize_t *pos)
{
    PyObject *at = PyLong_FromSsize_t(*pos);
    if (at == NULL)
        return -1;
    PyObject *args[3] = {conn, src, at};
    PyObject *result =
        PyObject_VectorcallMethod(method, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(at);
    if (result == NULL)
        return -1;
    if (!PyTuple_Check(result) || PyTuple_GET_SIZE(result) != 2) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_TypeError, "the slow path must return (pos, go_on)");
        return -1;
    }
    Py_ssize_t newpos = PyLong_AsSsize_t(PyTuple_GET_ITEM(result, 0));
    if (newpos == -1 && PyErr_Occurred()) {
        Py_DECREF(result);
        return -1;
    }
    /* The loops read at the position next: never trust it blindly. */
    if (newpos < 0 || newpos > PyBytes_GET_SIZE(src)) {
        Py_DECREF(result);
        PyErr_Format(PyExc_SystemError, "the slow path returned position %zd of %zd",
                     newpos, PyBytes_GET_SIZE(src));
        return -1;
    }
    int go_on = PyObject_IsTrue(PyTuple_GET_ITEM(result, 1));
    Py_DECREF(result);
    if (go_on < 0)
        return -1;
    *pos = newpos;
    return go_on;
}

static PyObject *
get_list(PyObject *conn, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(conn, name);
    if (value != NULL && !PyList_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "Connection.%U must be a list", name);
        Py_CLEAR(value);
    }
    return value;
}

static PyObject *
get_dict(PyObject *conn, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(conn, name);
    if (value != NULL && !PyDict_CheckExact(value)) {
        PyErr_Format(PyExc_TypeError, "Connection.%U must be a dict", name);
        Py_CLEAR(value);
    }
    return value;
}

static int
check_args(PyObject *const *args, Py_ssize_t nargs, const char *name)
{
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "gearproto._speedups is not configured");
        return -1;
    }
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (%zd given)", name, nargs);
        return -1;
    }
    if (!PyBytes_CheckExact(args[1])) {
        PyErr_Format(PyExc_TypeError, "%s() needs bytes, not %.100s", name,
                     Py_TYPE(args[1])->tp_name);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------- shared by both loops */

enum side { SERVER, CLIENT };

/* What a loop holds for one call.  Both sides read the same packet headers and the
   same three work packets (WORK_*, WORK_STATUS, WORK_FAIL), which differ only in how
   the connection keeps the handles they may name; holding that here lets one
   implementation of each serve both loops. */
typedef struct {
    enum side side;
    PyObject *conn;
    PyObject *srcobj;
    const char *src;
    Py_ssize_t n;
    PyObject *ready;   /* Connection._ready, a list */
    PyObject *pending; /* Connection._pending */
    PyObject *limits;
    /* SERVER: the set of handles of the jobs this worker holds.
       CLIENT: dict handle -> how many of this client's foreground submissions
       wait on it. */
    PyObject *handles;
    PyObject *finished; /* CLIENT: Connection._finished, replaced on a trim */
    Py_ssize_t max_function, max_unique;
    Py_ssize_t fast_max; /* larger bodies always take the slow path */
} LoopState;

/* Fill ``lp`` for a call of a loop; -1 on error, after which loop_close() is still
   due (every reference not taken is NULL). */
static int
loop_open(LoopState *lp, enum side side, PyObject *const *args, Py_ssize_t nargs,
          const char *name)
{
    memset(lp, 0, sizeof *lp);
    lp->side = side;
    if (check_args(args, nargs, name) < 0)
        return -1;
    PyObject *conn = lp->conn = args[0];
    lp->srcobj = args[1];
    lp->src = PyBytes_AS_STRING(lp->srcobj);
    lp->n = PyBytes_GET_SIZE(lp->srcobj);
    if ((lp->ready = get_list(conn, s_ready)) == NULL ||
        (lp->pending = PyObject_GetAttr(conn, s_pending)) == NULL)
        return -1;
    if (side == SERVER) {
        if ((lp->handles = PyObject_GetAttr(conn, s_worker_handles)) == NULL)
            return -1;
        if (!PySet_CheckExact(lp->handles)) {
            PyErr_SetString(PyExc_TypeError, "Connection._worker_handles must be a set");
            return -1;
        }
    }
    else if ((lp->handles = get_dict(conn, s_client_handles)) == NULL ||
             (lp->finished = get_dict(conn, s_finished)) == NULL)
        return -1;
    Py_ssize_t max_packet;
    if ((lp->limits = PyObject_GetAttr(conn, s_limits)) == NULL ||
        attr_limit(lp->limits, s_max_function, &lp->max_function) < 0 ||
        attr_limit(lp->limits, s_max_unique, &lp->max_unique) < 0 ||
        attr_limit(conn, s_max_packet, &max_packet) < 0)
        return -1;
    lp->fast_max = large_body - 1 < max_packet ? large_body - 1 : max_packet;
    return 0;
}

static void
loop_close(LoopState *lp)
{
    Py_XDECREF(lp->ready);
    Py_XDECREF(lp->pending);
    Py_XDECREF(lp->limits);
    Py_XDECREF(lp->handles);
    Py_XDECREF(lp->finished);
}

enum { HEADER_SLOW, HEADER_FAST, HEADER_PARTIAL };

/* The header at ``pos``: HEADER_FAST (with the packet type and body size) for a packet
   the fast paths may take, HEADER_PARTIAL for one whose body has not all arrived (the
   loop stops there: the caller buffers the rest), else HEADER_SLOW. */
static inline int
fast_header(const LoopState *lp, Py_ssize_t pos, unsigned long long base,
            unsigned long long *ptype, Py_ssize_t *size)
{
    if (lp->n - pos < HEADER) /* less than a header left */
        return HEADER_SLOW;
    const unsigned char *p = (const unsigned char *)lp->src + pos;
    unsigned long long key = read_u64(p);
    *size = read_u32(p + 8);
    /* magic and type in one test: 1..42 only for the magic of this side's input */
    *ptype = key - base;
    if (!(key > base && *ptype < NTYPES && *size <= lp->fast_max))
        return HEADER_SLOW;
    return pos + HEADER + *size > lp->n ? HEADER_PARTIAL : HEADER_FAST;
}

/* Whether the handle src[start:start+len] names one of the connection's jobs: 1 with
   a new reference to the handle (and, on the client, when ``count`` is not NULL, to
   its count), 0 when it does not (the slow path reports it), -1 on error. */
static int
held_handle(LoopState *lp, Py_ssize_t start, Py_ssize_t len, PyObject **handle,
            PyObject **count)
{
    *handle = PyBytes_FromStringAndSize(lp->src + start, len);
    if (*handle == NULL)
        return -1;
    int held;
    if (lp->side == SERVER)
        held = PySet_Contains(lp->handles, *handle);
    else {
        PyObject *c = PyDict_GetItemWithError(lp->handles, *handle);
        held = c != NULL ? 1 : PyErr_Occurred() ? -1 : 0;
        if (c != NULL && count != NULL)
            *count = Py_NewRef(c);
    }
    if (held <= 0)
        Py_CLEAR(*handle);
    return held;
}

/* The end of the job of ``handle`` (WORK_COMPLETE, WORK_EXCEPTION, WORK_FAIL).  The
   server forgets the handle.  The client, whose count says how many of its
   foreground submissions got this handle, does ``if count == 1: del handles[h];
   finished[h] = None (trimmed) else: handles[h] = count - 1``. */
static int
end_job(LoopState *lp, PyObject *handle, PyObject *count)
{
    if (lp->side == SERVER)
        return PySet_Discard(lp->handles, handle) < 0 ? -1 : 0;
    int is_one = PyObject_RichCompareBool(count, one, Py_EQ);
    if (is_one < 0)
        return -1;
    if (!is_one) {
        PyObject *less = PyNumber_Subtract(count, one);
        if (less == NULL)
            return -1;
        int rc = PyDict_SetItem(lp->handles, handle, less);
        Py_DECREF(less);
        return rc;
    }
    if (PyDict_DelItem(lp->handles, handle) < 0 ||
        PyDict_SetItem(lp->finished, handle, Py_None) < 0)
        return -1;
    if (PyDict_GET_SIZE(lp->finished) > finished_max) {
        PyObject *r = PyObject_CallMethodNoArgs(lp->conn, s_trim_finished);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        /* the trim replaces the dict */
        PyObject *fresh = get_dict(lp->conn, s_finished);
        if (fresh == NULL)
            return -1;
        Py_SETREF(lp->finished, fresh);
    }
    return 0;
}

/* The three work packets below return 1 with the event in ``*event``, 0 when the
   slow path must take the packet, -1 on error. */

/* WORK_COMPLETE, WORK_DATA, WORK_WARNING, WORK_EXCEPTION: handle\0data. */
static int
work_event(LoopState *lp, unsigned long long ptype, Py_ssize_t start, Py_ssize_t end,
           PyObject **event)
{
    const char *src = lp->src;
    const char *nul = memchr(src + start, 0, (size_t)(end - start));
    if (nul == NULL)
        return 0;
    PyObject *handle, *count = NULL;
    int held = held_handle(lp, start, nul - (src + start), &handle, &count);
    if (held <= 0)
        return held;
    /* Each side ends the job where its Python loop does: the client before it makes
       the event, the server after.  Kept apart, not unified, so that an error part
       way (a MemoryError, _trim_finished raising) leaves the handles as each loop
       always has. */
    int ends_here = ends_job[ptype];
    int rc = -1;
    if (ends_here && lp->side == CLIENT && end_job(lp, handle, count) < 0)
        goto done;
    PyObject *data = PyBytes_FromStringAndSize(nul + 1, (src + end) - (nul + 1));
    if (data == NULL)
        goto done;
    PyObject *items[2] = {Py_NewRef(handle), data};
    if ((*event = make_event(classes[ptype], 2, items)) == NULL)
        goto done;
    if (ends_here && lp->side == SERVER && end_job(lp, handle, count) < 0) {
        Py_CLEAR(*event);
        goto done;
    }
    rc = 1;
done:
    Py_DECREF(handle);
    Py_XDECREF(count);
    return rc;
}

/* WORK_STATUS: handle\0numerator\0denominator.  Longer numbers than ``max_digits``
   take the slow path, whose parse_int() caps them. */
static int
work_status_event(LoopState *lp, Py_ssize_t start, Py_ssize_t end, Py_ssize_t max_digits,
                  PyObject **event)
{
    const char *src = lp->src;
    Py_ssize_t cuts[3];
    if (split_nul(src, start, end, 2, cuts) != 3)
        return 0;
    const char *num = src + cuts[0] + 1;
    Py_ssize_t num_len = cuts[1] - (cuts[0] + 1);
    const char *den = src + cuts[1] + 1;
    Py_ssize_t den_len = end - (cuts[1] + 1);
    if (!is_digits(num, num_len) || !is_digits(den, den_len) || num_len > max_digits ||
        den_len > max_digits)
        return 0;
    PyObject *handle;
    int held = held_handle(lp, start, cuts[0] - start, &handle, NULL);
    if (held <= 0)
        return held;
    PyObject *items[3] = {handle, NULL, NULL};
    if ((items[1] = digits_to_int(num, num_len)) == NULL) {
        Py_DECREF(handle);
        return -1;
    }
    if ((items[2] = digits_to_int(den, den_len)) == NULL) {
        Py_DECREF(handle);
        Py_DECREF(items[1]);
        return -1;
    }
    *event = make_event(WorkStatus, 3, items);
    return *event == NULL ? -1 : 1;
}

/* WORK_FAIL: the body is the handle. */
static int
work_fail_event(LoopState *lp, Py_ssize_t start, Py_ssize_t end, PyObject **event)
{
    PyObject *handle, *count = NULL;
    int held = held_handle(lp, start, end - start, &handle, &count);
    if (held <= 0)
        return held;
    int rc = end_job(lp, handle, count);
    Py_XDECREF(count);
    if (rc < 0) {
        Py_DECREF(handle);
        return -1;
    }
    *event = make_event(WorkFail, 1, &handle);
    return *event == NULL ? -1 : 1;
}

/* ---------------------------------------------------------- server loop */

PyDoc_STRVAR(parse_requests_doc,
             "parse_requests(conn, src) -> int\n\n"
             "Connection._parse_requests, compiled: server side, parse the requests in\n"
             "src into conn's ready events; returns the position reached.");

static PyObject *
parse_requests(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    LoopState lp;
    PyObject *owe = NULL, *field_limit = NULL, *result = NULL;
    PyObject *run_last = Py_NewRef(Py_None);
    PyObject *run_wlast = Py_NewRef(Py_None);
    PyObject *run_olast = Py_NewRef(Py_None);
    PyObject *event = NULL;
    Py_ssize_t run_count = 0, run_work = 0;
    Py_ssize_t max_number;

    if (loop_open(&lp, SERVER, args, nargs, "parse_requests") < 0)
        goto error;
    PyObject *conn = lp.conn, *ready = lp.ready, *pending = lp.pending;
    const char *src = lp.src;
    Py_ssize_t pos = 0;
    if ((owe = PyObject_GetAttr(pending, s_append)) == NULL)
        goto error;
    if (attr_limit(lp.limits, s_max_number, &max_number) < 0)
        goto error;
    if ((field_limit = get_list(conn, s_field_limit)) == NULL)
        goto error;
    if (PyList_GET_SIZE(field_limit) < NTYPES) {
        PyErr_SetString(PyExc_TypeError, "Connection._field_limit is too short");
        goto error;
    }
    /* Longer numbers take the slow path, where parse_int() reads them (capped). */
    Py_ssize_t max_digits = max_number < 30 ? max_number : 30;

    /* Continue the run left at the end of the queue (see _parse_requests). */
    Py_ssize_t queued = PyObject_Size(pending);
    if (queued < 0)
        goto error;
    if (queued) {
        PyObject *tail = PySequence_GetItem(pending, -1);
        if (tail == NULL)
            goto error;
        int is_run = PyList_CheckExact(tail);
        Py_DECREF(tail);
        if (is_run) {
            PyObject *run = PyObject_CallMethodNoArgs(pending, s_pop);
            if (run == NULL)
                goto error;
            if (!PyList_CheckExact(run) || PyList_GET_SIZE(run) != 5) {
                Py_DECREF(run);
                PyErr_SetString(PyExc_ValueError, "a queued run must have 5 items");
                goto error;
            }
            run_count = PyLong_AsSsize_t(PyList_GET_ITEM(run, 0));
            run_work = PyLong_AsSsize_t(PyList_GET_ITEM(run, 1));
            ASSIGN(run_last, PyList_GET_ITEM(run, 2));
            ASSIGN(run_wlast, PyList_GET_ITEM(run, 3));
            ASSIGN(run_olast, PyList_GET_ITEM(run, 4));
            Py_DECREF(run);
            if (PyErr_Occurred())
                goto error;
        }
    }

/* Queue the run read so far as one entry (before a request that gets a reply). */
#define FLUSH_RUN()                                                                   \
    do {                                                                              \
        if (run_count) {                                                              \
            PyObject *_run = run_list(run_count, run_work, run_last, run_wlast,       \
                                      run_olast);                                     \
            if (_run == NULL)                                                         \
                goto error;                                                           \
            int _rc = call_one(owe, _run);                                            \
            Py_DECREF(_run);                                                          \
            if (_rc < 0)                                                              \
                goto error;                                                           \
            run_count = run_work = 0;                                                 \
        }                                                                             \
    } while (0)

    while (pos < lp.n) {
        unsigned long long ptype;
        Py_ssize_t size;
        int header = fast_header(&lp, pos, req_base, &ptype, &size);
        if (header == HEADER_PARTIAL)
            break;
        if (header == HEADER_SLOW)
            goto slow;
        Py_ssize_t start = pos + HEADER;
        Py_ssize_t end = start + size;
        int made = 0; /* of a work packet: see work_event() */
        switch (server_branch[ptype]) {
        case S_WORK: /* WORK_COMPLETE, WORK_DATA, WORK_WARNING, WORK_EXCEPTION */
            made = work_event(&lp, ptype, start, end, &event);
            break;
        case S_SUBMIT: { /* SUBMIT_JOB and its five variants */
            Py_ssize_t cuts[3];
            if (split_nul(src, start, end, 2, cuts) != 3)
                break; /* a NUL is missing: the slow path reports it */
            if (cuts[0] - start > lp.max_function || cuts[1] - (cuts[0] + 1) > lp.max_unique)
                break;
            PyObject *items[5];
            if (split_parts(src, start, 3, cuts, items) < 0)
                goto error;
            items[3] = Py_NewRef(priority_of[ptype]); /* a Priority member */
            items[4] = Py_NewRef(background_of[ptype]);
            event = make_event_tracked(SubmitJob, 5, items, 0);
            if (event == NULL)
                goto error;
            FLUSH_RUN();
            if (call_one(owe, event) < 0 || PyList_Append(ready, event) < 0)
                goto error;
            Py_CLEAR(event);
            pos = end;
            continue;
        }
        case S_GRAB: /* GRAB_JOB, GRAB_JOB_UNIQ, GRAB_JOB_ALL */
            FLUSH_RUN();
            if (call_one(owe, singletons[ptype]) < 0 || add_to_attr(conn, s_grabs, 1) < 0 ||
                PyObject_SetAttr(conn, s_sleeping, Py_False) < 0 ||
                PyList_Append(ready, singletons[ptype]) < 0)
                goto error;
            pos = end;
            continue;
        case S_SLEEP: /* PRE_SLEEP */
            ASSIGN(run_last, singletons[ptype]);
            ASSIGN(run_olast, singletons[ptype]);
            if (PyObject_SetAttr(conn, s_sleeping, Py_True) < 0)
                goto error;
            run_count += 1;
            if (PyList_Append(ready, run_last) < 0)
                goto error;
            pos = end;
            continue;
        case S_ECHO: /* ECHO_REQ */
            event = event_of_body(EchoReq, src, start, end);
            if (event == NULL)
                goto error;
            FLUSH_RUN();
            if (call_one(owe, event) < 0 || PyList_Append(ready, event) < 0)
                goto error;
            Py_CLEAR(event);
            pos = end;
            continue;
        case S_ABILITY: /* CAN_DO, CANT_DO */
            if (size > lp.max_function)
                break;
            event = event_of_body(classes[ptype], src, start, end);
            if (event == NULL)
                goto error;
            ASSIGN(run_last, event);
            ASSIGN(run_olast, event);
            run_count += 1;
            if (PyList_Append(ready, event) < 0)
                goto error;
            Py_CLEAR(event);
            pos = end;
            continue;
        case S_ONE_FIELD: { /* GET_STATUS, GET_STATUS_UNIQUE, OPTION_REQ */
            Py_ssize_t limit;
            if (as_limit(PyList_GET_ITEM(field_limit, ptype), &limit) < 0)
                goto error;
            if (size > limit)
                break;
            event = event_of_body(classes[ptype], src, start, end);
            if (event == NULL)
                goto error;
            FLUSH_RUN();
            if (call_one(owe, event) < 0 || PyList_Append(ready, event) < 0)
                goto error;
            Py_CLEAR(event);
            pos = end;
            continue;
        }
        case S_WORK_STATUS: /* WORK_STATUS */
            made = work_status_event(&lp, start, end, max_digits, &event);
            break;
        case S_WORK_FAIL: /* WORK_FAIL */
            made = work_fail_event(&lp, start, end, &event);
            break;
        case S_CLIENT_ID: { /* SET_CLIENT_ID */
            Py_ssize_t limit;
            if (as_limit(PyList_GET_ITEM(field_limit, ptype), &limit) < 0)
                goto error;
            if (size > limit)
                break;
            event = event_of_body(classes[ptype], src, start, end);
            if (event == NULL)
                goto error;
            ASSIGN(run_last, event);
            ASSIGN(run_olast, event);
            run_count += 1;
            if (PyList_Append(ready, event) < 0)
                goto error;
            Py_CLEAR(event);
            pos = end;
            continue;
        }
        case S_RESET: /* RESET_ABILITIES */
            ASSIGN(run_last, singletons[ptype]);
            ASSIGN(run_olast, singletons[ptype]);
            run_count += 1;
            if (PyList_Append(ready, run_last) < 0)
                goto error;
            pos = end;
            continue;
        default:
            break;
        }
        if (made < 0)
            goto error;
        if (made) { /* a work packet gets no reply: it joins the run */
            ASSIGN(run_last, event);
            ASSIGN(run_wlast, event);
            run_count += 1;
            run_work += 1;
            if (PyList_Append(ready, event) < 0)
                goto error;
            Py_CLEAR(event);
            pos = end;
            continue;
        }
    slow:
        if (run_count) {
            if (push_run(conn, run_last, run_count, run_work, run_wlast, run_olast) < 0)
                goto error;
            run_count = run_work = 0;
        }
        {
            int go_on = slow_path(conn, s_slow_request, lp.srcobj, &pos);
            if (go_on < 0)
                goto error;
            if (!go_on)
                break;
        }
    }
#undef FLUSH_RUN
    if (run_count) {
        if (push_run(conn, run_last, run_count, run_work, run_wlast, run_olast) < 0)
            goto error;
    }
    result = PyLong_FromSsize_t(pos);
error:
    loop_close(&lp);
    Py_XDECREF(event);
    Py_XDECREF(owe);
    Py_XDECREF(field_limit);
    Py_XDECREF(run_last);
    Py_XDECREF(run_wlast);
    Py_XDECREF(run_olast);
    return result;
}

/* ---------------------------------------------------------- client loop */

/* ``answers[len(ready)] = request`` */
static inline int
record_answer(PyObject *answers, PyObject *ready, PyObject *request)
{
    PyObject *index = PyLong_FromSsize_t(PyList_GET_SIZE(ready));
    if (index == NULL)
        return -1;
    int rc = PyDict_SetItem(answers, index, request);
    Py_DECREF(index);
    return rc;
}

static inline int
is_flag(const char *p, Py_ssize_t len)
{
    return len == 1 && (p[0] == '0' || p[0] == '1');
}

PyDoc_STRVAR(parse_responses_doc,
             "parse_responses(conn, src) -> int\n\n"
             "Connection._parse_responses, compiled: client side, parse the replies in\n"
             "src into conn's ready events; returns the position reached.");

static PyObject *
parse_responses(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    LoopState lp;
    PyObject *answers = NULL, *popleft = NULL, *result = NULL;
    PyObject *event = NULL, *request = NULL;
    Py_ssize_t max_handle, max_text;

    if (loop_open(&lp, CLIENT, args, nargs, "parse_responses") < 0)
        goto error;
    PyObject *conn = lp.conn, *ready = lp.ready, *pending = lp.pending,
             *client_handles = lp.handles;
    const char *src = lp.src;
    Py_ssize_t pos = 0;
    if ((answers = get_dict(conn, s_answers)) == NULL)
        goto error;
    if ((popleft = PyObject_GetAttr(pending, s_popleft)) == NULL)
        goto error;
    if (attr_limit(lp.limits, s_max_handle, &max_handle) < 0 ||
        attr_limit(lp.limits, s_max_text, &max_text) < 0)
        goto error;

    /* Whether an admin listing is being read: only the slow path changes it. */
    int listing = 0;
    {
        PyObject *value = PyObject_GetAttr(conn, s_listing);
        if (value == NULL)
            goto error;
        listing = value != Py_None;
        Py_DECREF(value);
    }

#define POPLEFT()                                                   \
    do {                                                            \
        PyObject *_gone = PyObject_CallNoArgs(popleft);             \
        if (_gone == NULL)                                          \
            goto error;                                             \
        Py_DECREF(_gone);                                           \
    } while (0)

    while (pos < lp.n) {
        unsigned long long ptype;
        Py_ssize_t size;
        /* every byte of a listing is text */
        int header = listing ? HEADER_SLOW : fast_header(&lp, pos, res_base, &ptype, &size);
        if (header == HEADER_PARTIAL)
            break;
        if (header == HEADER_SLOW)
            goto slow;
        Py_ssize_t start = pos + HEADER;
        Py_ssize_t end = start + size;
        int branch = client_branch[ptype];
        int made = 0; /* of a work packet: see work_event() */
        if (branch == C_WORK) /* WORK_COMPLETE, WORK_DATA, WORK_WARNING, WORK_EXCEPTION */
            made = work_event(&lp, ptype, start, end, &event);
        else if (branch == C_NOOP) {
            if (PyObject_SetAttr(conn, s_sleeping, Py_False) < 0 ||
                PyList_Append(ready, noop_event) < 0)
                goto error;
            pos = end;
            continue;
        }
        else if (branch == C_WORK_STATUS)
            made = work_status_event(&lp, start, end, 30, &event);
        else if (branch == C_WORK_FAIL)
            made = work_fail_event(&lp, start, end, &event);
        else if (branch) {
            /* A reply to the oldest request owed one. */
            Py_ssize_t queued = PyObject_Size(pending);
            if (queued < 0)
                goto error;
            if (queued == 0)
                goto slow;
            Py_XSETREF(request, PySequence_GetItem(pending, 0));
            if (request == NULL)
                goto error;
            if (PyList_CheckExact(request)) {
                /* Requests without reply before it: a reply proves they succeeded. */
                for (;;) {
                    queued = PyObject_Size(pending);
                    if (queued < 0)
                        goto error;
                    if (queued == 0)
                        break;
                    PyObject *head = PySequence_GetItem(pending, 0);
                    if (head == NULL)
                        goto error;
                    int is_run = PyList_CheckExact(head);
                    Py_DECREF(head);
                    if (!is_run)
                        break;
                    POPLEFT();
                }
                if (queued) {
                    Py_XSETREF(request, PySequence_GetItem(pending, 0));
                    if (request == NULL)
                        goto error;
                }
                else {
                    Py_XSETREF(request, Py_NewRef(Py_None));
                }
            }
            PyObject *rclass = (PyObject *)Py_TYPE(request);
            if (branch == C_CREATED) {
                int is_submit = PySet_Contains(submit_classes, rclass);
                if (is_submit < 0)
                    goto error;
                if (!is_submit || size > max_handle)
                    goto slow;
                POPLEFT();
                PyObject *handle = PyBytes_FromStringAndSize(src + start, size);
                if (handle == NULL)
                    goto error;
                /* A foreground submission (inline _is_background). */
                int foreground = 0;
                if (rclass == SubmitJob || rclass == SubmitReduceJob) {
                    PyObject *bg = PySequence_GetItem(request, rclass == SubmitJob ? 4 : 5);
                    if (bg == NULL) {
                        Py_DECREF(handle);
                        goto error;
                    }
                    int truth = PyObject_IsTrue(bg);
                    Py_DECREF(bg);
                    if (truth < 0) {
                        Py_DECREF(handle);
                        goto error;
                    }
                    foreground = !truth;
                }
                if (foreground) {
                    PyObject *count = PyDict_GetItemWithError(client_handles, handle);
                    PyObject *more;
                    if (count != NULL)
                        more = PyNumber_Add(count, one);
                    else if (PyErr_Occurred())
                        more = NULL;
                    else
                        more = Py_NewRef(one); /* 0 + 1 */
                    if (more == NULL) {
                        Py_DECREF(handle);
                        goto error;
                    }
                    int rc = PyDict_SetItem(client_handles, handle, more);
                    Py_DECREF(more);
                    if (rc < 0) {
                        Py_DECREF(handle);
                        goto error;
                    }
                    if (PyDict_GET_SIZE(lp.finished)) {
                        int has = PyDict_Contains(lp.finished, handle);
                        if (has < 0 || (has && PyDict_DelItem(lp.finished, handle) < 0)) {
                            Py_DECREF(handle);
                            goto error;
                        }
                    }
                }
                if (record_answer(answers, ready, request) < 0) {
                    Py_DECREF(handle);
                    goto error;
                }
                event = make_event(JobCreated, 1, &handle);
                if (event == NULL || PyList_Append(ready, event) < 0)
                    goto error;
                Py_CLEAR(event);
                pos = end;
                continue;
            }
            else if (branch == C_ASSIGN) { /* JOB_ASSIGN, JOB_ASSIGN_UNIQ, JOB_ASSIGN_ALL */
                PyObject *cls = classes[ptype];
                int is_grab = PySet_Contains(grab_classes, rclass);
                if (is_grab < 0)
                    goto error;
                if (!is_grab)
                    goto slow;
                PyObject *expected = PyDict_GetItemWithError(replies_to, rclass);
                if (expected == NULL) {
                    if (!PyErr_Occurred())
                        PyErr_SetObject(PyExc_KeyError, rclass);
                    goto error;
                }
                int fits = PySet_Contains(expected, cls);
                if (fits < 0)
                    goto error;
                if (!fits)
                    goto slow;
                Py_ssize_t nuls = assign_nuls[ptype];
                /* configure() keeps nuls in 2..4, so split_nul() sets every cut read
                   below; gcc cannot know that and warns when it inlines split_nul(). */
                Py_ssize_t cuts[5] = {0};
                Py_ssize_t count = split_nul(src, start, end, nuls, cuts);
                if (count != nuls + 1)
                    goto slow;
                Py_ssize_t len0 = cuts[0] - start;
                Py_ssize_t len1 = cuts[1] - (cuts[0] + 1);
                if (len0 > max_handle || len1 > lp.max_function)
                    goto slow;
                if (nuls != 2 && cuts[2] - (cuts[1] + 1) > lp.max_unique)
                    goto slow;
                if (nuls >= 4 && cuts[3] - (cuts[2] + 1) > lp.max_function)
                    goto slow;
                PyObject *items[5];
                if (split_parts(src, start, count, cuts, items) < 0)
                    goto error;
                event = make_event(cls, count, items);
                if (event == NULL)
                    goto error;
                POPLEFT();
                if (add_to_attr(conn, s_grabs, -1) < 0)
                    goto error;
                {
                    PyObject *worker_handles = PyObject_GetAttr(conn, s_worker_handles);
                    if (worker_handles == NULL)
                        goto error;
                    /* the event holds the handle: a borrowed reference is enough */
                    int rc = PySet_Add(worker_handles, PyTuple_GET_ITEM(event, 0));
                    Py_DECREF(worker_handles);
                    if (rc < 0)
                        goto error;
                }
                if (record_answer(answers, ready, request) < 0 ||
                    PyList_Append(ready, event) < 0)
                    goto error;
                Py_CLEAR(event);
                pos = end;
                continue;
            }
            else if (branch == C_NOJOB) {
                int is_grab = PySet_Contains(grab_classes, rclass);
                if (is_grab < 0)
                    goto error;
                if (!is_grab)
                    goto slow;
                POPLEFT();
                if (add_to_attr(conn, s_grabs, -1) < 0 ||
                    record_answer(answers, ready, request) < 0 ||
                    PyList_Append(ready, no_job_event) < 0)
                    goto error;
                pos = end;
                continue;
            }
            else if (branch == C_ECHO) {
                if (rclass != EchoReq)
                    goto slow;
                POPLEFT();
                if (record_answer(answers, ready, request) < 0)
                    goto error;
                event = event_of_body(EchoRes, src, start, end);
                if (event == NULL || PyList_Append(ready, event) < 0)
                    goto error;
                Py_CLEAR(event);
                pos = end;
                continue;
            }
            else if (branch == C_STATUS) {
                Py_ssize_t cuts[5];
                if (rclass != GetStatus || split_nul(src, start, end, 4, cuts) != 5)
                    goto slow;
                const char *known = src + cuts[0] + 1;
                Py_ssize_t known_len = cuts[1] - (cuts[0] + 1);
                const char *running = src + cuts[1] + 1;
                Py_ssize_t running_len = cuts[2] - (cuts[1] + 1);
                const char *num = src + cuts[2] + 1;
                Py_ssize_t num_len = cuts[3] - (cuts[2] + 1);
                const char *den = src + cuts[3] + 1;
                Py_ssize_t den_len = end - (cuts[3] + 1);
                if (!is_flag(known, known_len) || !is_flag(running, running_len) ||
                    !is_digits(num, num_len) || !is_digits(den, den_len) || num_len > 30 ||
                    den_len > 30 || cuts[0] - start > max_handle)
                    goto slow;
                POPLEFT();
                if (record_answer(answers, ready, request) < 0)
                    goto error;
                PyObject *items[5];
                items[0] = PyBytes_FromStringAndSize(src + start, cuts[0] - start);
                if (items[0] == NULL)
                    goto error;
                items[1] = Py_NewRef(known[0] == '1' ? Py_True : Py_False);
                items[2] = Py_NewRef(running[0] == '1' ? Py_True : Py_False);
                if ((items[3] = digits_to_int(num, num_len)) == NULL) {
                    Py_DECREF(items[0]);
                    Py_DECREF(items[1]);
                    Py_DECREF(items[2]);
                    goto error;
                }
                if ((items[4] = digits_to_int(den, den_len)) == NULL) {
                    for (int i = 0; i < 4; i++)
                        Py_DECREF(items[i]);
                    goto error;
                }
                event = make_event(StatusRes, 5, items);
                if (event == NULL || PyList_Append(ready, event) < 0)
                    goto error;
                Py_CLEAR(event);
                pos = end;
                continue;
            }
            else if (branch == C_OPTION) {
                if (rclass != OptionReq || size > max_text)
                    goto slow;
                POPLEFT();
                if (record_answer(answers, ready, request) < 0)
                    goto error;
                event = event_of_body(OptionRes, src, start, end);
                if (event == NULL || PyList_Append(ready, event) < 0)
                    goto error;
                Py_CLEAR(event);
                pos = end;
                continue;
            }
        }
        if (made < 0)
            goto error;
        if (made) {
            if (PyList_Append(ready, event) < 0)
                goto error;
            Py_CLEAR(event);
            pos = end;
            continue;
        }
    slow: {
        int go_on = slow_path(conn, s_slow_response, lp.srcobj, &pos);
        if (go_on < 0)
            goto error;
        if (!go_on)
            break;
        PyObject *value = PyObject_GetAttr(conn, s_listing);
        if (value == NULL)
            goto error;
        listing = value != Py_None;
        Py_DECREF(value);
        /* The slow path may have replaced the finished-jobs dict (a trim). */
        PyObject *fresh = get_dict(conn, s_finished);
        if (fresh == NULL)
            goto error;
        Py_SETREF(lp.finished, fresh);
    }
    }
#undef POPLEFT
    result = PyLong_FromSsize_t(pos);
error:
    loop_close(&lp);
    Py_XDECREF(event);
    Py_XDECREF(request);
    Py_XDECREF(answers);
    Py_XDECREF(popleft);
    return result;
}

/* ------------------------------------------------------------ next_event */

#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* Replace an object slot (``self.<slot> = value``); steals ``value``. */
static inline void
set_slot(PyObject *self, Py_ssize_t offset, PyObject *value)
{
    PyObject *old = SLOT(self, offset);
    SLOT(self, offset) = value;
    Py_XDECREF(old);
}

/* A slot holding an int, as a C integer; -1 with no error set if it is not one. */
static inline int
int_slot(PyObject *self, Py_ssize_t offset, long long *out)
{
    PyObject *value = SLOT(self, offset);
    if (value == NULL || !PyLong_CheckExact(value))
        return -1;
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow)
        return -1;
    return 0;
}

/* Whether the connection parses with this module's loops. */
static inline int
compiled_loops(PyObject *self)
{
    PyObject *loop = SLOT(self, off_parse_loop);
    return loop == loop_requests || loop == loop_responses;
}

static PyObject *next_event(PyObject *self, PyObject *Py_UNUSED(ignored));

/* Connection._parse, compiled, for a connection on the compiled loops whose slots
   hold what the Python code puts there (the caller checked).  0, or -1 on error. */
static int
parse_buffer(PyObject *self)
{
    PyObject *chunks = SLOT(self, off_chunks);
    if (chunks == NULL || !PyList_CheckExact(chunks)) {
        PyErr_SetString(PyExc_TypeError, "Connection._chunks must be a list");
        return -1;
    }
    PyObject *src;
    if (PyList_GET_SIZE(chunks) == 1)
        src = Py_NewRef(PyList_GET_ITEM(chunks, 0));
    else
        src = PyObject_CallMethodOneArg(empty_bytes, s_join, chunks);
    if (src == NULL)
        return -1;
    if (!PyBytes_CheckExact(src)) {
        Py_DECREF(src);
        PyErr_SetString(PyExc_TypeError, "Connection._chunks must hold bytes");
        return -1;
    }
    PyObject *loop = SLOT(self, off_parse_loop);
    PyObject *args[2] = {self, src};
    PyObject *reached = loop == loop_requests ? parse_requests(NULL, args, 2)
                                              : parse_responses(NULL, args, 2);
    if (reached == NULL) {
        Py_DECREF(src);
        return -1;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(reached);
    Py_DECREF(reached);
    if (pos == -1 && PyErr_Occurred()) {
        Py_DECREF(src);
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(src);
    if (pos < 0 || pos > n) {
        Py_DECREF(src);
        PyErr_SetString(PyExc_SystemError, "the receive loop went past its buffer");
        return -1;
    }
    set_slot(self, off_line_wait, Py_NewRef(Py_False));
    PyObject *dead = SLOT(self, off_dead);
    int is_dead = dead == NULL ? 0 : PyObject_IsTrue(dead);
    if (is_dead < 0) {
        Py_DECREF(src);
        return -1;
    }
    PyObject *fresh = NULL, *size = NULL, *need = NULL;
    Py_ssize_t rest = n - pos;
    if (is_dead || rest == 0) {
        /* self._chunks = []; self._size = 0 (and self._need = 1 when all was read) */
        Py_DECREF(src);
        if ((fresh = PyList_New(0)) == NULL || (size = PyLong_FromLong(0)) == NULL ||
            (!is_dead && (need = PyLong_FromLong(1)) == NULL)) {
            Py_XDECREF(fresh);
            Py_XDECREF(size);
            return -1;
        }
        set_slot(self, off_chunks, fresh);
        set_slot(self, off_size, size);
        if (need != NULL)
            set_slot(self, off_need, need);
        return 0;
    }
    /* tail = src[pos:] if pos else src; self._chunks = [tail]; self._size = rest */
    PyObject *tail = pos ? PyBytes_FromStringAndSize(PyBytes_AS_STRING(src) + pos, rest)
                         : Py_NewRef(src);
    Py_DECREF(src);
    if (tail == NULL)
        return -1;
    const unsigned char *t = (const unsigned char *)PyBytes_AS_STRING(tail);
    int line_wait = 0;
    long long wanted;
    PyObject *raise_next = SLOT(self, off_raise_next);
    PyObject *listing = SLOT(self, off_listing);
    if (raise_next != NULL && raise_next != Py_None)
        wanted = 0; /* more may be parseable right after the error */
    else if (t[0] == 0 && listing == Py_None)
        /* a header that reached this point was valid: wait for the whole packet */
        wanted = rest < HEADER ? HEADER
                               : HEADER + (long long)(((uint32_t)t[8] << 24) |
                                                      ((uint32_t)t[9] << 16) |
                                                      ((uint32_t)t[10] << 8) | (uint32_t)t[11]);
    else {
        wanted = 1LL << 62;
        line_wait = 1;
    }
    fresh = PyList_New(1);
    if (fresh == NULL) {
        Py_DECREF(tail);
        return -1;
    }
    PyList_SET_ITEM(fresh, 0, tail);
    if ((size = PyLong_FromSsize_t(rest)) == NULL || (need = PyLong_FromLongLong(wanted)) == NULL) {
        Py_DECREF(fresh);
        Py_XDECREF(size);
        return -1;
    }
    set_slot(self, off_chunks, fresh);
    set_slot(self, off_size, size);
    set_slot(self, off_need, need);
    if (line_wait)
        set_slot(self, off_line_wait, Py_NewRef(Py_True));
    return 0;
}

/* Connection._next_event_slow, compiled for its two common outcomes: nothing to
   parse (NEED_DATA), and a parse that made events.  Every other outcome -- an error
   to raise, EOF, a closed connection -- is left to the Python method, which from
   the state left here does exactly the remaining steps (its own reset of the ready
   events finds nothing to reset, and a second parse finds nothing to parse). */
static PyObject *
next_event_slow(PyObject *self)
{
    PyObject *raise_next = SLOT(self, off_raise_next);
    PyObject *eof = SLOT(self, off_eof);
    long long size, need;
    if (raise_next != Py_None || SLOT(self, off_state) != state_open || eof == NULL ||
        int_slot(self, off_size, &size) < 0 || int_slot(self, off_need, &need) < 0 ||
        SLOT(self, off_dead) != Py_False)
        return PyObject_CallMethodNoArgs(self, s_next_event_slow);
    int more = size >= need;
    if (!more && eof != Py_False) /* EOF: the Python code says how the peer left */
        return PyObject_CallMethodNoArgs(self, s_next_event_slow);
    /* if self._ready: self._ready = []; self._ri = 0; self._answers = {} */
    PyObject *ready = SLOT(self, off_ready);
    if (ready == NULL || !PyList_CheckExact(ready))
        return PyObject_CallMethodNoArgs(self, s_next_event_slow);
    if (PyList_GET_SIZE(ready)) {
        PyObject *fresh_ready = PyList_New(0);
        PyObject *fresh_ri = PyLong_FromLong(0);
        PyObject *fresh_answers = PyDict_New();
        if (fresh_ready == NULL || fresh_ri == NULL || fresh_answers == NULL) {
            Py_XDECREF(fresh_ready);
            Py_XDECREF(fresh_ri);
            Py_XDECREF(fresh_answers);
            return NULL;
        }
        set_slot(self, off_ready, fresh_ready);
        set_slot(self, off_ri, fresh_ri);
        set_slot(self, off_answers, fresh_answers);
    }
    set_slot(self, off_answered, Py_NewRef(Py_None));
    if (!more)
        return Py_NewRef(need_data);
    if (parse_buffer(self) < 0)
        return NULL;
    ready = SLOT(self, off_ready);
    if (ready != NULL && PyList_CheckExact(ready) && PyList_GET_SIZE(ready)) {
        /* return self.next_event() -- through the class, as a subclass may wrap it */
        if (Py_TYPE(self) == connection_type)
            return next_event(self, NULL);
        return PyObject_CallMethodNoArgs(self, s_next_event);
    }
    return PyObject_CallMethodNoArgs(self, s_next_event_slow);
}

/* Connection.next_event, compiled: installed on the class as a method descriptor, so
   ``self`` is always a Connection (or a subclass: slot offsets are inherited).  It
   reads and writes the slots directly; anything unusual, and every connection that
   parses with the Python loops, goes to the Python implementation. */
static PyObject *
next_event(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *ri_obj = SLOT(self, off_ri);
    PyObject *ready = SLOT(self, off_ready);
    PyObject *answers = SLOT(self, off_answers);
    if (!compiled_loops(self) || ri_obj == NULL || ready == NULL || answers == NULL ||
        !PyLong_CheckExact(ri_obj) || !PyList_CheckExact(ready) || !PyDict_CheckExact(answers))
        return PyObject_CallOneArg(python_next_event, self);
    Py_ssize_t ri = PyLong_AsSsize_t(ri_obj);
    if (ri < 0) {
        if (PyErr_Occurred())
            return NULL;
        return PyObject_CallOneArg(python_next_event, self);
    }
    if (ri >= PyList_GET_SIZE(ready))
        return next_event_slow(self);
    /* self._ri = ri + 1; self.answered = answers.pop(ri) if ri in answers else None */
    PyObject *next_ri = PyLong_FromSsize_t(ri + 1);
    if (next_ri == NULL)
        return NULL;
    PyObject *answered = NULL;
    if (PyDict_GET_SIZE(answers)) {
        answered = PyDict_GetItemWithError(answers, ri_obj);
        if (answered != NULL) {
            Py_INCREF(answered);
            if (PyDict_DelItem(answers, ri_obj) < 0) {
                Py_DECREF(answered);
                Py_DECREF(next_ri);
                return NULL;
            }
        }
        else if (PyErr_Occurred()) {
            Py_DECREF(next_ri);
            return NULL;
        }
    }
    if (answered == NULL)
        answered = Py_NewRef(Py_None);
    PyObject *event = Py_NewRef(PyList_GET_ITEM(ready, ri));
    PyObject *old_ri = SLOT(self, off_ri);
    PyObject *old_answered = SLOT(self, off_answered);
    SLOT(self, off_ri) = next_ri;
    SLOT(self, off_answered) = answered;
    Py_XDECREF(old_ri);
    Py_XDECREF(old_answered);
    return event;
}

/* Connection.receive_data, compiled for exact bytes on a connection on the compiled
   loops that is not at EOF; anything else goes to the Python implementation. */
static PyObject *
receive_data(PyObject *self, PyObject *data)
{
    PyObject *chunks = SLOT(self, off_chunks);
    long long size;
    if (!compiled_loops(self) || !PyBytes_CheckExact(data) || SLOT(self, off_eof) != Py_False ||
        chunks == NULL || !PyList_CheckExact(chunks) || int_slot(self, off_size, &size) < 0)
        return PyObject_CallFunctionObjArgs(python_receive_data, self, data, NULL);
    Py_ssize_t length = PyBytes_GET_SIZE(data);
    if (length == 0)
        Py_RETURN_NONE;
    PyObject *dead = SLOT(self, off_dead);
    int is_dead = dead == NULL ? 0 : PyObject_IsTrue(dead);
    if (is_dead < 0)
        return NULL;
    if (is_dead)
        Py_RETURN_NONE;
    PyObject *total = PyLong_FromLongLong(size + (long long)length);
    if (total == NULL || PyList_Append(chunks, data) < 0) {
        Py_XDECREF(total);
        return NULL;
    }
    set_slot(self, off_size, total);
    PyObject *line_wait = SLOT(self, off_line_wait);
    int waiting = line_wait == NULL ? 0 : PyObject_IsTrue(line_wait);
    if (waiting < 0)
        return NULL;
    if (waiting) {
        long long line_limit;
        if (int_slot(self, off_line_limit, &line_limit) < 0) {
            PyErr_SetString(PyExc_TypeError, "Connection._line_limit must be an int");
            return NULL;
        }
        if (memchr(PyBytes_AS_STRING(data), '\n', (size_t)length) != NULL ||
            size + (long long)length >= line_limit) {
            PyObject *zero = PyLong_FromLong(0);
            if (zero == NULL)
                return NULL;
            set_slot(self, off_need, zero);
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef next_event_def = {"next_event", next_event, METH_NOARGS, NULL};
static PyMethodDef receive_data_def = {"receive_data", receive_data, METH_O, NULL};

/* The offset of a writable object slot of the Connection class. */
static int
slot_offset(PyObject *cls, const char *name, Py_ssize_t *out)
{
    PyObject *descr = PyObject_GetAttrString(cls, name);
    if (descr == NULL)
        return -1;
    int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
             ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX &&
             !(((PyMemberDescrObject *)descr)->d_member->flags & READONLY);
    if (ok)
        *out = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_DECREF(descr);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "configure(): Connection.%s must be a slot", name);
        return -1;
    }
    return 0;
}

/* The method descriptor of ``def`` for ``cls``, its docstring from ``doc``. */
static PyObject *
make_method(PyObject *cls, PyMethodDef *def, PyObject *doc)
{
    if (def->ml_doc == NULL && PyUnicode_Check(doc)) {
        /* Kept for the life of the process: descriptors point to it. */
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(doc, &size);
        if (text == NULL)
            return NULL;
        char *copy = PyMem_RawMalloc((size_t)size + 1);
        if (copy == NULL)
            return PyErr_NoMemory();
        memcpy(copy, text, (size_t)size + 1);
        def->ml_doc = copy;
    }
    return PyDescr_NewMethod((PyTypeObject *)cls, def);
}

/* ``methods[def.ml_name] = descriptor``, its docstring from ``tables[doc_key]``. */
static int
add_method(PyObject *methods, PyObject *cls, PyMethodDef *def, PyObject *tables,
           const char *doc_key)
{
    PyObject *doc = PyDict_GetItemString(tables, doc_key); /* borrowed */
    if (doc == NULL) {
        PyErr_Format(PyExc_KeyError, "configure(): missing table %s", doc_key);
        return -1;
    }
    PyObject *method = make_method(cls, def, doc);
    if (method == NULL)
        return -1;
    int rc = PyDict_SetItemString(methods, def->ml_name, method);
    Py_DECREF(method);
    return rc;
}

/* ------------------------------------------------------------- configure */

static int
take_table(PyObject *tables, const char *name, PyObject **out)
{
    PyObject *value = PyDict_GetItemString(tables, name); /* borrowed */
    if (value == NULL) {
        PyErr_Format(PyExc_KeyError, "configure(): missing table %s", name);
        return -1;
    }
    Py_XSETREF(*out, Py_NewRef(value));
    return 0;
}

static int
take_event_class(PyObject *tables, const char *name, PyObject **out)
{
    if (take_table(tables, name, out) < 0)
        return -1;
    PyObject *cls = *out;
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type) ||
        ((PyTypeObject *)cls)->tp_basicsize != PyTuple_Type.tp_basicsize ||
        ((PyTypeObject *)cls)->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_Format(PyExc_TypeError, "configure(): %s must be a NamedTuple class", name);
        return -1;
    }
    return 0;
}

/* A per-type sequence of NTYPES items. */
static PyObject *
per_type(PyObject *tables, const char *name)
{
    PyObject *value = PyDict_GetItemString(tables, name);
    if (value == NULL) {
        PyErr_Format(PyExc_KeyError, "configure(): missing table %s", name);
        return NULL;
    }
    PyObject *seq = PySequence_Fast(value, name);
    if (seq == NULL)
        return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != NTYPES) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "configure(): %s must have %d items", name, NTYPES);
        return NULL;
    }
    return seq;
}

static int
small_ints(PyObject *tables, const char *name, unsigned char *out, long limit)
{
    PyObject *seq = per_type(tables, name);
    if (seq == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < NTYPES; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        if (v < 0 || v > limit) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "configure(): %s[%zd] out of range", name, i);
            return -1;
        }
        out[i] = (unsigned char)v;
    }
    Py_DECREF(seq);
    return 0;
}

static int
objects(PyObject *tables, const char *name, PyObject **out, int none_is_null)
{
    PyObject *seq = per_type(tables, name);
    if (seq == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < NTYPES; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_XSETREF(out[i], (none_is_null && item == Py_None) ? NULL : Py_NewRef(item));
    }
    Py_DECREF(seq);
    return 0;
}

static int
take_size(PyObject *tables, const char *name, Py_ssize_t *out)
{
    PyObject *value = PyDict_GetItemString(tables, name);
    if (value == NULL) {
        PyErr_Format(PyExc_KeyError, "configure(): missing table %s", name);
        return -1;
    }
    Py_ssize_t v = PyLong_AsSsize_t(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

static int
take_magic(PyObject *tables, const char *name, unsigned long long *out)
{
    PyObject *value = PyDict_GetItemString(tables, name);
    if (value == NULL || !PyBytes_Check(value) || PyBytes_GET_SIZE(value) != 4) {
        PyErr_Format(PyExc_ValueError, "configure(): %s must be 4 bytes", name);
        return -1;
    }
    const unsigned char *m = (const unsigned char *)PyBytes_AS_STRING(value);
    *out = ((unsigned long long)m[0] << 56) | ((unsigned long long)m[1] << 48) |
           ((unsigned long long)m[2] << 40) | ((unsigned long long)m[3] << 32);
    return 0;
}

PyDoc_STRVAR(configure_doc,
             "configure(tables) -> dict\n\n"
             "Hand over the tables of gearproto._connection (a dict); called once at its\n"
             "import, before any parse.  Returns the compiled methods to install on\n"
             "Connection, by name.");

static PyObject *
configure(PyObject *module, PyObject *tables)
{
    if (!PyDict_Check(tables)) {
        PyErr_SetString(PyExc_TypeError, "configure() needs a dict");
        return NULL;
    }
    configured = 0;
    if (small_ints(tables, "server_branch", server_branch, S_LAST - 1) < 0 ||
        small_ints(tables, "client_branch", client_branch, C_LAST - 1) < 0 ||
        small_ints(tables, "ends_job", ends_job, 1) < 0 ||
        small_ints(tables, "assign_nuls", assign_nuls, 255) < 0 ||
        objects(tables, "classes", classes, 1) < 0 ||
        objects(tables, "singletons", singletons, 1) < 0 ||
        objects(tables, "priority_of", priority_of, 1) < 0 ||
        objects(tables, "background_of", background_of, 1) < 0)
        return NULL;
    for (int t = 1; t < NTYPES; t++) {
        if (classes[t] == NULL || !PyType_Check(classes[t]) ||
            !PyType_IsSubtype((PyTypeObject *)classes[t], &PyTuple_Type) ||
            ((PyTypeObject *)classes[t])->tp_basicsize != PyTuple_Type.tp_basicsize) {
            PyErr_Format(PyExc_TypeError, "configure(): classes[%d] must be a NamedTuple", t);
            return NULL;
        }
        int needs_singleton = server_branch[t] == S_GRAB || server_branch[t] == S_SLEEP ||
                              server_branch[t] == S_RESET;
        if (needs_singleton && singletons[t] == NULL) {
            PyErr_Format(PyExc_ValueError, "configure(): type %d needs a singleton", t);
            return NULL;
        }
        if (server_branch[t] == S_SUBMIT && (priority_of[t] == NULL || background_of[t] == NULL)) {
            PyErr_Format(PyExc_ValueError, "configure(): type %d needs a priority", t);
            return NULL;
        }
        if (client_branch[t] == C_ASSIGN && (assign_nuls[t] < 2 || assign_nuls[t] > 4)) {
            PyErr_Format(PyExc_ValueError, "configure(): type %d: bad assignment", t);
            return NULL;
        }
    }
    if (take_event_class(tables, "SubmitJob", &SubmitJob) < 0 ||
        take_event_class(tables, "SubmitReduceJob", &SubmitReduceJob) < 0 ||
        take_event_class(tables, "EchoReq", &EchoReq) < 0 ||
        take_event_class(tables, "EchoRes", &EchoRes) < 0 ||
        take_event_class(tables, "WorkStatus", &WorkStatus) < 0 ||
        take_event_class(tables, "WorkFail", &WorkFail) < 0 ||
        take_event_class(tables, "JobCreated", &JobCreated) < 0 ||
        take_event_class(tables, "StatusRes", &StatusRes) < 0 ||
        take_event_class(tables, "OptionRes", &OptionRes) < 0 ||
        take_event_class(tables, "OptionReq", &OptionReq) < 0 ||
        take_event_class(tables, "GetStatus", &GetStatus) < 0 ||
        take_table(tables, "submit_classes", &submit_classes) < 0 ||
        take_table(tables, "grab_classes", &grab_classes) < 0 ||
        take_table(tables, "replies_to", &replies_to) < 0 ||
        take_table(tables, "noop", &noop_event) < 0 ||
        take_table(tables, "no_job", &no_job_event) < 0 ||
        take_size(tables, "large_body", &large_body) < 0 ||
        take_size(tables, "finished_max", &finished_max) < 0 ||
        take_magic(tables, "req", &req_base) < 0 || take_magic(tables, "res", &res_base) < 0)
        return NULL;
    if (!PyFrozenSet_CheckExact(submit_classes) || !PyFrozenSet_CheckExact(grab_classes) ||
        !PyDict_CheckExact(replies_to)) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(): submit_classes and grab_classes must be frozensets, "
                        "replies_to a dict");
        return NULL;
    }
    if (large_body < 1) {
        PyErr_SetString(PyExc_ValueError, "configure(): large_body must be positive");
        return NULL;
    }
    PyObject *cls = NULL;
    if (take_table(tables, "Connection", &cls) < 0)
        return NULL;
    if (!PyType_Check(cls)) {
        Py_DECREF(cls);
        PyErr_SetString(PyExc_TypeError, "configure(): Connection must be a class");
        return NULL;
    }
    Py_XSETREF(connection_type, (PyTypeObject *)cls);
    if (slot_offset(cls, "_ri", &off_ri) < 0 || slot_offset(cls, "_ready", &off_ready) < 0 ||
        slot_offset(cls, "_answers", &off_answers) < 0 ||
        slot_offset(cls, "answered", &off_answered) < 0 ||
        slot_offset(cls, "_parse_loop", &off_parse_loop) < 0 ||
        slot_offset(cls, "_chunks", &off_chunks) < 0 ||
        slot_offset(cls, "_size", &off_size) < 0 || slot_offset(cls, "_need", &off_need) < 0 ||
        slot_offset(cls, "_dead", &off_dead) < 0 ||
        slot_offset(cls, "_line_wait", &off_line_wait) < 0 ||
        slot_offset(cls, "_listing", &off_listing) < 0 ||
        slot_offset(cls, "_raise_next", &off_raise_next) < 0 ||
        slot_offset(cls, "_state", &off_state) < 0 || slot_offset(cls, "_eof", &off_eof) < 0 ||
        slot_offset(cls, "_line_limit", &off_line_limit) < 0 ||
        take_table(tables, "python_next_event", &python_next_event) < 0 ||
        take_table(tables, "python_receive_data", &python_receive_data) < 0 ||
        take_table(tables, "state_open", &state_open) < 0 ||
        take_table(tables, "need_data", &need_data) < 0)
        return NULL;
    if (!PyCallable_Check(python_next_event) || !PyCallable_Check(python_receive_data)) {
        PyErr_SetString(PyExc_TypeError, "configure(): the Python methods must be callable");
        return NULL;
    }
    PyObject *methods = PyDict_New();
    if (methods == NULL)
        return NULL;
    if (add_method(methods, cls, &next_event_def, tables, "next_event_doc") < 0 ||
        add_method(methods, cls, &receive_data_def, tables, "receive_data_doc") < 0) {
        Py_DECREF(methods);
        return NULL;
    }
    PyObject *loop = PyObject_GetAttrString(module, "parse_requests");
    if (loop == NULL) {
        Py_DECREF(methods);
        return NULL;
    }
    Py_XSETREF(loop_requests, loop);
    loop = PyObject_GetAttrString(module, "parse_responses");
    if (loop == NULL) {
        Py_DECREF(methods);
        return NULL;
    }
    Py_XSETREF(loop_responses, loop);
    configured = 1;
    return methods;
}

/* ---------------------------------------------------------------- module */

static PyMethodDef speedups_methods[] = {
    {"configure", (PyCFunction)configure, METH_O, configure_doc},
    {"parse_requests", (PyCFunction)(void (*)(void))parse_requests, METH_FASTCALL,
     parse_requests_doc},
    {"parse_responses", (PyCFunction)(void (*)(void))parse_responses, METH_FASTCALL,
     parse_responses_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(module_doc,
             "The receive loops of gearproto.Connection, compiled (optional accelerator).");

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "gearproto._speedups", module_doc, -1, speedups_methods,
    NULL, NULL, NULL, NULL,
};

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (intern(&s_ready, "_ready") < 0 || intern(&s_pending, "_pending") < 0 ||
        intern(&s_worker_handles, "_worker_handles") < 0 ||
        intern(&s_client_handles, "_client_handles") < 0 ||
        intern(&s_finished, "_finished") < 0 || intern(&s_limits, "limits") < 0 ||
        intern(&s_max_function, "max_function") < 0 ||
        intern(&s_max_unique, "max_unique") < 0 || intern(&s_max_number, "max_number") < 0 ||
        intern(&s_max_handle, "max_handle") < 0 || intern(&s_max_text, "max_text") < 0 ||
        intern(&s_field_limit, "_field_limit") < 0 ||
        intern(&s_max_packet, "_max_packet") < 0 || intern(&s_grabs, "_grabs") < 0 ||
        intern(&s_sleeping, "_sleeping") < 0 || intern(&s_listing, "_listing") < 0 ||
        intern(&s_answers, "_answers") < 0 || intern(&s_append, "append") < 0 ||
        intern(&s_pop, "pop") < 0 || intern(&s_popleft, "popleft") < 0 ||
        intern(&s_push_run, "_push_run") < 0 ||
        intern(&s_slow_request, "_slow_request") < 0 ||
        intern(&s_slow_response, "_slow_response") < 0 ||
        intern(&s_trim_finished, "_trim_finished") < 0 ||
        intern(&s_next_event_slow, "_next_event_slow") < 0 ||
        intern(&s_next_event, "next_event") < 0 || intern(&s_join, "join") < 0)
        return NULL;
    if (empty_bytes == NULL && (empty_bytes = PyBytes_FromStringAndSize(NULL, 0)) == NULL)
        return NULL;
    if (one == NULL && (one = PyLong_FromLong(1)) == NULL)
        return NULL;
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddIntConstant(module, "API_VERSION", SPEEDUPS_API) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
