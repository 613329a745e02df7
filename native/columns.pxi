# -- history rows into columns (store/series.py) ------------------------------------------------
# The store's series writer turns each batch of rows into one column per key. This is its per
# value loop, in C: a type check, a dict look-up and two appends per value.

from cpython.list cimport PyList_Append


def split_rows(rows, last):
    """``(steps, times, floats, ints, late, rest)`` of history ``rows`` (objects with
    ``step``, ``time_us``, ``values``) whose steps must be above ``last`` to be appended:
    ``steps``/``times`` of those rows; ``floats``/``ints``: key -> ``(steps, values)`` of their
    float and int64 values; ``late``: the rows at or below ``last`` (None: no step is stored)
    or at or below a step before
    them); ``rest``: ``(row, values)`` of the appended rows' other values (bools, text, rich
    values, ints beyond int64). The same as ``_twin.split_rows``."""
    cdef list steps = [], times = [], late = [], rest = []
    cdef dict floats = {}, ints = {}
    cdef dict values, other
    cdef object r, col, step_obj
    cdef long long step
    cdef PyObject *k
    cdef PyObject *v
    cdef PyObject *found
    cdef Py_ssize_t pos
    cdef int overflow
    cdef bint bounded = last is not None
    cdef long long top = last if bounded else 0
    for r in rows:
        step_obj = r.step
        step = step_obj
        if bounded and step <= top:
            late.append(r)
            continue
        top = step
        bounded = True
        PyList_Append(steps, step_obj)
        PyList_Append(times, r.time_us)
        values = r.values
        other = None
        pos = 0
        while PyDict_Next(values, &pos, &k, &v):
            if PyFloat_CheckExact(<object>v):
                found = PyDict_GetItem(floats, <object>k)
                if found == NULL:
                    col = ([], [])
                    floats[<object>k] = col
                else:
                    col = <object>found
            elif PyLong_CheckExact(<object>v):
                PyLong_AsLongLongAndOverflow(<object>v, &overflow)
                if overflow:
                    if other is None:
                        other = {}
                    other[<object>k] = <object>v
                    continue
                found = PyDict_GetItem(ints, <object>k)
                if found == NULL:
                    col = ([], [])
                    ints[<object>k] = col
                else:
                    col = <object>found
            else:
                if other is None:
                    other = {}
                other[<object>k] = <object>v
                continue
            PyList_Append(<list>(<tuple>col)[0], step_obj)
            PyList_Append(<list>(<tuple>col)[1], <object>v)
        if other is not None:
            rest.append((r, other))
    return steps, times, floats, ints, late, rest
