"""The address of any C-contiguous buffer-protocol object, read-only ones included, without a copy.

ctypes only gives addresses of WRITABLE buffers (from_buffer). Read-only ones (bytes, read-only
NumPy arrays, np.frombuffer views) are just as good as inputs, since the library only reads
them, so on CPython we take a buffer export through the C API (PyObject_GetBuffer): that also
pins the exporter (a bytearray cannot be resized, a NumPy array not reallocated) until the export
is released. Elsewhere (no ctypes.pythonapi) writable buffers still go through from_buffer and
read-only ones are copied by the caller.
"""
import ctypes

_PyBUF_FORMAT = 0x0004
_PyBUF_C_CONTIGUOUS = 0x0038


class _PyBuffer(ctypes.Structure):
    # Py_buffer, unchanged since Python 3.3.
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                ("internal", ctypes.c_void_p)]


try:
    _get = ctypes.pythonapi.PyObject_GetBuffer
    _get.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    _get.restype = ctypes.c_int
    _release = ctypes.pythonapi.PyBuffer_Release
    _release.argtypes = [ctypes.POINTER(_PyBuffer)]
    _release.restype = None
except (AttributeError, OSError):
    _get = _release = None


class Export:
    """A held buffer export: .address is valid until release() (or garbage collection)."""

    def __init__(self, obj):
        self.address = None
        self._view = None
        self._pinned = None
        if _get is not None:
            view = _PyBuffer()
            # Raises BufferError when obj is not C-contiguous: the caller then copies.
            _get(obj, ctypes.byref(view), _PyBUF_C_CONTIGUOUS | _PyBUF_FORMAT)
            self._view = view
            self.address = view.buf
        else:
            mv = memoryview(obj)
            if mv.readonly or not mv.c_contiguous:
                raise BufferError("read-only or non-contiguous buffer")
            self._pinned = (ctypes.c_char * mv.nbytes).from_buffer(mv.cast("B"))
            self.address = ctypes.addressof(self._pinned)

    def release(self):
        if self._view is not None and _release is not None:
            _release(ctypes.byref(self._view))
            self._view = None
        self._pinned = None
        self.address = None

    def __del__(self):
        self.release()
