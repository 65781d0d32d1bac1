# C types for framed.py, which Cython compiles as harpy.server._cframed (setup.py copies both files).
import cython

from harpy.server.connection cimport Connection
from harpy.server.listener cimport Host
# The compiled frame reader, called in C (the pure one never meets a compiled connection).
from harpy.protocol._ccore cimport FrameReader as CFrameReader

cdef class FramedConnection(Connection):
    cdef public object transport
    cdef public object codec
    cdef public object _reader
    cdef public bytes _head
    cdef public str _key
    cdef public object _linger
    cdef public Py_ssize_t _linger_left
    cdef public bint _failed
    cdef public tuple _peer_closed
    cdef public str _peer
    cdef public bint _secure
    cdef public object _host
    cdef public bint _awaiting_proxy

    @cython.locals(reader=CFrameReader, events=list, kind=int, now=double)
    cpdef data_received(self, object data)
    @cython.locals(kind=int)
    cpdef _handle_events(self, list events)
    @cython.locals(reader=CFrameReader, state=int)
    cpdef _follow_reader(self)
    @cython.locals(reader=CFrameReader)
    cpdef _start_close(self, int code, str reason)
    cpdef _transmit(self, object item)
    cpdef _transmit_all(self, list items)
    cpdef Py_ssize_t _transport_buffer(self) except? -1
    cpdef _give_up(self)
    @cython.locals(size=Py_ssize_t, out_size=Py_ssize_t, queued=Py_ssize_t, out=list, server=Host)
    cpdef bint queue_message(self, object message) except -1
    cpdef Py_ssize_t _write_message(self, bytes frame) except? -9

cdef class MeteredConnection(FramedConnection):
    cdef public Py_ssize_t bytes_in
    cdef public Py_ssize_t bytes_out

    cpdef data_received(self, object data)
    cpdef bint queue_message(self, object message) except -1
