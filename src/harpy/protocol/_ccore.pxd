# C types for _core.py when Cython compiles it as harpy.protocol._ccore (see setup.py).
import cython

@cython.locals(n=Py_ssize_t, i=Py_ssize_t, words=Py_ssize_t, out=bytes, dst="unsigned char*",
               src="unsigned char*", key="unsigned char*", kb="unsigned char*",
               d8="unsigned long long*", s8="unsigned long long*")
cdef bytes _unmask(bytes data, Py_ssize_t start, Py_ssize_t end)

cdef dict _SHORT_HEADERS

@cython.locals(b0=int, short=tuple)
cpdef bytes frame_header(int opcode, Py_ssize_t length, bint rsv1=*)
cpdef bytes build_frame(int opcode, bytes payload, bint rsv1=*)

cdef class FrameReader:
    cdef public object inflater
    cdef public Py_ssize_t max_message_size
    cdef public bint client
    cdef public int state
    cdef public bint close_sent
    cdef public bint close_received
    cdef public int close_code
    cdef public str close_reason
    cdef bytes _out
    cdef list _buf
    cdef Py_ssize_t _have
    cdef Py_ssize_t _need
    cdef bint _failed
    cdef int _frag_opcode
    cdef list _frag_parts
    cdef Py_ssize_t _frag_size
    cdef bint _frag_compressed
    cdef object _frag_decoder
    cdef Py_ssize_t _part_done
    cdef bytes _part_key
    cdef Py_ssize_t _skip

    @cython.locals(end=Py_ssize_t, pos=Py_ssize_t, need=Py_ssize_t, b0=int, b1=int,
                   length=Py_ssize_t, hlen=Py_ssize_t, opcode=int,
                   pstart=Py_ssize_t, fin=int, rsv=int, compressed=bint, max_size=Py_ssize_t,
                   events=list, payload=bytes, arrived=bytes, op_text=int, op_binary=int,
                   op_cont=int, op_close=int, client=bint, keylen=Py_ssize_t,
                   done=Py_ssize_t, checked=Py_ssize_t, skip=Py_ssize_t, buf=list, parts=list)
    cpdef list feed(self, bytes data)
    cpdef bytes send_close(self, int code=*, str reason=*)
    cpdef bytes data_to_send(self)
    cdef bytes _close_frame(self, int code, str reason)
    cdef void _stop(self)
    @cython.locals(n=Py_ssize_t, shift=Py_ssize_t, key=bytes)
    cdef bint _check_part(self, bytes data, bint masked=*)
    cdef list _bad_part(self, list events, Py_ssize_t rest)
    cdef list _close_event(self, list events, bytes payload)
    cdef list _mask_error(self, list events, int opcode, str message)
    cdef list _too_big(self, list events)
    cdef list _fail(self, list events, str message, int code=*)
    @cython.locals(skip=Py_ssize_t)
    cdef list _error(self, list events, object exc)
