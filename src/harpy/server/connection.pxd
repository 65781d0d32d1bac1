# C types for connection.py, which Cython compiles as harpy.server._cconnection (setup.py copies
# both files); the compiled _cframed cimports Connection from here.
# Every field is public: the transports written in Python (the ASGI one) subclass this class and
# use the protected members of SUBCLASS_INTERFACE, as the pure-Python source lets them.
import cython

from harpy.server.listener cimport Host

cdef class Connection:
    cdef public Host _server
    cdef public object ready_state
    cdef public object request
    cdef public Py_ssize_t dropped
    cdef public Py_ssize_t messages_out
    cdef public Py_ssize_t timer_slot
    cdef public object _on_message
    cdef public object _on_event
    cdef public list _out
    cdef public Py_ssize_t _out_size
    cdef public Py_ssize_t _held
    cdef public bint _corked
    cdef public bint _write_paused
    cdef public object _limits
    cdef public double _deadline
    cdef public double _last_seen
    cdef public double _last_active
    cdef public double _ping_at
    cdef public double _ping_sent
    cdef public int _missed_pongs

    cpdef _enter(self, object state)
    cpdef _started(self)
    cpdef _open(self, object limits)
    cpdef _enter_closing(self)
    cpdef _ended(self, int code, str reason, object exc=*)
    cpdef _pong_received(self, bytes data)
    cpdef _transmit(self, object item)
    cpdef _transmit_all(self, list items)
    cpdef Py_ssize_t _transport_buffer(self) except? -1
    cpdef _start_close(self, int code, str reason)
    cpdef _give_up(self)
    cpdef Py_ssize_t _write(self, object item, Py_ssize_t size) except? -9
    @cython.locals(server=Host, out=list)
    cpdef bint _enqueue(self, object item, Py_ssize_t size) except -1
    @cython.locals(server=Host)
    cpdef bint _past_limit(self, Py_ssize_t size) except -1
    cpdef bint _over_budget(self, Py_ssize_t size) except -1
    @cython.locals(held=Py_ssize_t)
    cdef _recount(self)
    cpdef bint _over_limit(self, Py_ssize_t size) except -1
    cpdef _drop_at_limit(self)
    cpdef _drop(self, str reason)
    cpdef int _drop_closing(self) except -1
    @cython.locals(out=list, size=Py_ssize_t, held=Py_ssize_t, server=Host)
    cpdef _flush(self)
    @cython.locals(due=double)
    cdef double _next_deadline(self, double now) except? -1.0
    @cython.locals(idle=double, due=double)
    cdef double _idle_deadline(self, object limits) except? -1.0
    cdef _send_ping(self, double now)
    cpdef bint queue_message(self, object message) except -1

cdef double _earliest(double a, double b)
