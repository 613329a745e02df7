# -- history rows into columns (store/series.py) ------------------------------------------------
# The store's series writer turns each batch of rows into one column per key. This is its per
# value loop, in C: a type check, a dict look-up and two appends per value.

from cpython.list cimport PyList_Append
from cpython.object cimport Py_SIZE
from cpython cimport array as carray
import array as _array

cdef carray.array _STEPS = _array.array("q")
cdef carray.array _FLOATS = _array.array("d")


def split_rows(rows, last, keep=()):
    """``(steps, times, floats, ints, late, rest)`` of history ``rows`` (objects with
    ``step``, ``time_us``, ``values``) whose steps must be above ``last`` to be appended:
    ``steps``/``times`` of those rows; ``floats``/``ints``: key -> ``(steps, values)`` of their
    float and int64 values, as ``array.array`` ("q" steps; "d" floats, "q" ints: numpy takes
    them without a copy); ``late``: the rows at or below ``last`` (None: no step is stored) or
    at or below a step before them); ``rest``: ``(row, values)`` of the appended rows' other
    values (bools, text, rich values, ints beyond int64, and any value of a key in ``keep``).
    The same as ``_twin.split_rows``."""
    cdef list steps = [], times = [], late = [], rest = []
    cdef dict floats = {}, ints = {}
    cdef dict values, other
    cdef object r, col, step_obj, kept
    cdef carray.array col_steps, col_values
    cdef long long ivalue
    cdef long long step
    cdef PyObject *k
    cdef PyObject *v
    cdef PyObject *found
    cdef Py_ssize_t pos
    cdef int overflow
    cdef bint bounded = last is not None
    for kept in keep:  # found as None: such a key's values stay with the row's others
        floats[kept] = None
        ints[kept] = None
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
                    col = (carray.clone(_STEPS, 0, False), carray.clone(_FLOATS, 0, False))
                    floats[<object>k] = col
                else:
                    col = <object>found
                    if col is None:  # a key of `keep`: not a column
                        if other is None:
                            other = {}
                        other[<object>k] = <object>v
                        continue
                col_steps = <carray.array>(<tuple>col)[0]
                col_values = <carray.array>(<tuple>col)[1]
                carray.resize_smart(col_values, Py_SIZE(col_values) + 1)
                col_values.data.as_doubles[Py_SIZE(col_values) - 1] = PyFloat_AS_DOUBLE(<object>v)
            elif PyLong_CheckExact(<object>v):
                ivalue = PyLong_AsLongLongAndOverflow(<object>v, &overflow)
                if overflow:
                    if other is None:
                        other = {}
                    other[<object>k] = <object>v
                    continue
                found = PyDict_GetItem(ints, <object>k)
                if found == NULL:
                    col = (carray.clone(_STEPS, 0, False), carray.clone(_STEPS, 0, False))
                    ints[<object>k] = col
                else:
                    col = <object>found
                    if col is None:  # a key of `keep`: not a column
                        if other is None:
                            other = {}
                        other[<object>k] = <object>v
                        continue
                col_steps = <carray.array>(<tuple>col)[0]
                col_values = <carray.array>(<tuple>col)[1]
                carray.resize_smart(col_values, Py_SIZE(col_values) + 1)
                col_values.data.as_longlongs[Py_SIZE(col_values) - 1] = ivalue
            else:
                if other is None:
                    other = {}
                other[<object>k] = <object>v
                continue
            carray.resize_smart(col_steps, Py_SIZE(col_steps) + 1)
            col_steps.data.as_longlongs[Py_SIZE(col_steps) - 1] = step
        if other is not None:
            rest.append((r, other))
    for kept in keep:
        del floats[kept], ints[kept]
    return steps, times, floats, ints, late, rest
