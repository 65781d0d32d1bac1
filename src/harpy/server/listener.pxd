# C types for listener.py, which Cython compiles as harpy.server._clistener (setup.py copies both
# files); the compiled connections cimport Host from here, to read and count the output budget
# per delivery in C.
import cython

cdef class Host:
    cdef public list _dirty
    cdef public Py_ssize_t _freed
    cdef public bint _trim_pending
    cdef public double _trimmed_at
    cdef public dict _warned_at
    cdef public bint closing
    cdef public set connections
    cdef public dict drops
    cdef public double handshake_timeout
    cdef public object loop
    cdef public Py_ssize_t max_header_size
    cdef public Py_ssize_t output_bound
    cdef public Py_ssize_t output_budget
    cdef public object proxy
    cdef public Py_ssize_t queued
    cdef public Py_ssize_t sample_above
    cdef public object wheel

    @cython.locals(now=double)
    cpdef count_drop(self, str reason)
    cpdef Py_ssize_t fair_share(self) except -1
    cpdef released(self, Py_ssize_t held)
    cpdef flush_later(self, object conn)
    @cython.locals(dirty=list)
    cpdef _flush_dirty(self)
