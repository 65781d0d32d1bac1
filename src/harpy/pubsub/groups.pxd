# C types for groups.py, which Cython compiles as harpy.pubsub._cgroups (setup.py copies both files).
import cython

@cython.locals(sent=Py_ssize_t, items=list)
cpdef Py_ssize_t fan_out(object receivers, object message, object skip=*) except -1
