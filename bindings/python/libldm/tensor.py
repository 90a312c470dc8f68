"""Tensors between Python and libldm.

Inputs: any ldm function taking a tensor accepts a NumPy array, any object with the buffer
protocol (array.array, memoryview, bytearray, ...; its format and shape are used, so raw bytes are
uint8 values: wrap raw float32 bytes with Tensor.frombuffer(data, shape)), a nested list of
numbers, or a Tensor. C-contiguous, aligned float32 / int64 data is passed WITHOUT a copy
(ldm_tensor_wrap); anything else is converted to the dtype the call expects.

Results: NumPy arrays when NumPy is importable (set_numpy(False) switches that off), otherwise
Tensor objects with .shape, .dtype, .tolist(), .tobytes() and .memoryview(). Either way the result
shares the memory the library allocated, which is freed when the last array or view of it goes.
"""
import array
import ctypes
import numbers
import sys
import weakref

from . import _api, _buffer
from .errors import check

try:
    import numpy as _numpy
except ImportError:  # NumPy is optional
    _numpy = None

_use_numpy = _numpy is not None

_KINDS = {"float32": _api.F32, "int64": _api.I64}
_NAMES = {_api.F32: "float32", _api.I64: "int64"}
_FORMATS = {_api.F32: "f", _api.I64: "q"}
_ITEMSIZE = {_api.F32: 4, _api.I64: 8}


def set_numpy(enabled):
    """Chooses what results are: NumPy arrays (True, the default when NumPy is installed) or
    Tensor objects (False). Returns the previous setting."""
    global _use_numpy
    if enabled and _numpy is None:
        raise ImportError("libldm.set_numpy(True): NumPy is not installed")
    previous, _use_numpy = _use_numpy, bool(enabled)
    return previous


def numpy_enabled():
    return _use_numpy


def _kind(dtype):
    try:
        return _KINDS[str(dtype)]
    except KeyError:
        raise ValueError("dtype %r: libldm tensors are 'float32' or 'int64'" % (dtype,)) from None


def _free(handle, export):
    _api.lib.ldm_tensor_free(handle)
    if export is not None:
        export.release()


class _Storage:
    """Owns one ldm_tensor (and, for a view, the buffer export it looks at). Tensors and every
    memoryview / NumPy array made from them hold a reference, so the memory is freed only when
    the last of them goes: no view can outlive its data."""

    def __init__(self, handle, export=None):
        self.handle = handle
        self._finalizer = weakref.finalize(self, _free, handle, export)


class Tensor:
    """A dense row-major float32 or int64 tensor held by libldm.

    Use as a context manager or call close() to drop it early; the memory stays valid while any
    memoryview or NumPy array obtained from it is alive."""

    def __init__(self, storage):
        self._storage = storage

    # ------------------------------------------------------------ construction

    @classmethod
    def _adopt(cls, handle):
        return cls(_Storage(handle))

    @classmethod
    def zeros(cls, shape, dtype="float32"):
        shape = _api.shape(shape)
        out = ctypes.c_void_p()
        check(_api.lib.ldm_tensor_create(_kind(dtype), len(shape), (ctypes.c_int64 * max(1, len(shape)))(*shape),
                                         ctypes.byref(out)), "ldm_tensor_create")
        return cls._adopt(out.value)

    @classmethod
    def frombuffer(cls, buffer, shape=None, dtype="float32"):
        """A zero-copy view of a C-contiguous buffer's bytes as `dtype` with `shape` (default: 1-D).
        The buffer stays pinned (and alive) while the view is. Raises BufferError when the
        buffer is not contiguous or not aligned for dtype."""
        kind = _kind(dtype)
        nbytes = memoryview(buffer).nbytes
        if shape is None:
            shape = (nbytes // _ITEMSIZE[kind],)
        shape = _api.shape(shape)
        if _numel(shape) * _ITEMSIZE[kind] != nbytes:
            raise ValueError("Tensor.frombuffer: %d bytes do not hold %s %s" % (nbytes, dtype, shape))
        return _wrap(buffer, shape, kind)

    # ------------------------------------------------------------ properties

    @property
    def handle(self):
        """The ldm_tensor pointer (an int) for direct ctypes use."""
        if self._storage is None:
            raise ValueError("tensor is closed")
        return self._storage.handle

    @property
    def shape(self):
        h = self.handle
        return tuple(_api.lib.ldm_tensor_dim(h, i) for i in range(_api.lib.ldm_tensor_ndim(h)))

    @property
    def dtype(self):
        return _NAMES[_api.lib.ldm_tensor_dtype(self.handle)]

    @property
    def ndim(self):
        return _api.lib.ldm_tensor_ndim(self.handle)

    @property
    def size(self):
        return _api.lib.ldm_tensor_numel(self.handle)

    @property
    def nbytes(self):
        return self.size * _ITEMSIZE[_api.lib.ldm_tensor_dtype(self.handle)]

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self):
        if self._storage is None:
            return "<libldm.Tensor closed>"
        return "<libldm.Tensor %s %s>" % (self.dtype, "x".join(str(d) for d in self.shape))

    # ------------------------------------------------------------ data access

    def _cbuffer(self):
        """The data as a ctypes byte array that keeps the storage alive."""
        n = self.nbytes
        if n == 0:
            return bytearray()
        buf = (ctypes.c_char * n).from_address(_api.lib.ldm_tensor_data(self.handle))
        buf._ldm_storage = self._storage
        return buf

    def memoryview(self):
        """A writable memoryview with the tensor's format ('f' or 'q') and shape, no copy."""
        fmt = _FORMATS[_api.lib.ldm_tensor_dtype(self.handle)]
        shape = self.shape
        raw = memoryview(self._cbuffer()).cast("B")
        return raw.cast(fmt) if 0 in shape else raw.cast(fmt, shape)

    if sys.version_info >= (3, 12):
        def __buffer__(self, flags):
            return self.memoryview()

    def tobytes(self):
        """The raw data (native-endian float32 / int64), copied."""
        n = self.nbytes
        return ctypes.string_at(_api.lib.ldm_tensor_data(self.handle), n) if n else b""

    def tolist(self):
        """The values as nested Python lists."""
        return self.memoryview().tolist()

    def numpy(self):
        """A NumPy array sharing this tensor's memory."""
        if _numpy is None:
            raise ImportError("Tensor.numpy(): NumPy is not installed")
        dtype = _numpy.float32 if self.dtype == "float32" else _numpy.int64
        return _numpy.frombuffer(self._cbuffer(), dtype=dtype).reshape(self.shape)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a.astype(dtype) if dtype is not None else a

    # ------------------------------------------------------------ lifetime

    def close(self):
        """Drops this object's hold on the memory (freed now unless views of it are alive)."""
        self._storage = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _wrap(obj, shape, kind):
    """ldm_tensor_wrap over obj's memory; BufferError when that is not possible without a copy."""
    export = _buffer.Export(obj)
    if export.address is not None and export.address % _ITEMSIZE[kind] != 0:
        export.release()
        raise BufferError("buffer not aligned for %s" % _NAMES[kind])
    out = ctypes.c_void_p()
    status = _api.lib.ldm_tensor_wrap(kind, len(shape), (ctypes.c_int64 * max(1, len(shape)))(*shape),
                                      export.address, ctypes.byref(out))
    if status != _api.LDM_OK:
        export.release()
        check(status, "ldm_tensor_wrap")
    return Tensor(_Storage(out.value, export))


def _format_kind(fmt, itemsize):
    """The ldm dtype a buffer format is in memory (None: needs converting)."""
    if fmt[:1] in "@=<" and len(fmt) > 1:
        if fmt[0] != "@" and sys.byteorder != "little":
            return None
        fmt = fmt[1:]
    if fmt == "f" and itemsize == 4:
        return _api.F32
    if fmt in ("q", "l") and itemsize == 8:
        return _api.I64
    return None


def _nested_shape(values):
    shape = []
    while isinstance(values, (list, tuple)):
        shape.append(len(values))
        if not values:
            break
        values = values[0]
    return tuple(shape)


def _flatten(values, shape, depth, out):
    if depth == len(shape):
        if isinstance(values, (list, tuple)):
            raise ValueError("ragged nested list: not a tensor")
        out.append(values)
        return
    if not isinstance(values, (list, tuple)) or len(values) != shape[depth]:
        raise ValueError("ragged nested list: not a tensor")
    for v in values:
        _flatten(v, shape, depth + 1, out)


def _from_values(values, kind, shape=None):
    """A tensor holding a copy of nested lists / a scalar, converted to `kind`."""
    if shape is None:
        shape = _nested_shape(values)
    flat = []
    _flatten(values, shape, 0, flat)
    try:
        data = array.array(_FORMATS[kind], flat)
    except TypeError as e:
        raise TypeError("cannot make a %s tensor of these values: %s" % (_NAMES[kind], e)) from None
    except OverflowError as e:
        raise OverflowError("a value does not fit a %s tensor: %s" % (_NAMES[kind], e)) from None
    t = _wrap(data, shape, kind) if flat else Tensor.zeros(shape, _NAMES[kind])
    return t


def as_tensor(obj, dtype="float32"):
    """obj as a Tensor, without a copy when obj is C-contiguous, aligned float32 / int64 memory.
    `dtype` is what other data is converted to (what the call expects)."""
    if isinstance(obj, Tensor):
        return obj
    want = _kind(dtype)
    if _numpy is not None and isinstance(obj, _numpy.ndarray):
        if obj.dtype not in (_numpy.float32, _numpy.int64) or not obj.dtype.isnative:
            obj = obj.astype(_numpy.float32 if want == _api.F32 else _numpy.int64)
        obj = _numpy.ascontiguousarray(obj)
        kind = _api.F32 if obj.dtype == _numpy.float32 else _api.I64
        try:
            return _wrap(obj, obj.shape, kind)
        except BufferError:  # misaligned (a view at an odd offset): copy once
            return _wrap(obj.copy(), obj.shape, kind)
    if isinstance(obj, (bool, int, float, list, tuple)):
        return _from_values(obj, want)
    try:
        mv = memoryview(obj)
    except TypeError:
        raise TypeError("expected a tensor: a NumPy array, a buffer-protocol object, a nested list "
                        "of numbers or a libldm.Tensor, got %s" % type(obj).__name__) from None
    kind = _format_kind(mv.format, mv.itemsize)
    if kind is not None and mv.c_contiguous:
        try:
            return _wrap(obj, mv.shape, kind)
        except BufferError:
            pass  # read-only without ctypes.pythonapi, or misaligned: copy below
    return _from_values(mv.tolist(), kind if kind is not None else want, mv.shape)


def as_output_buffer(obj):
    """A zero-copy float32 tensor over WRITABLE, C-contiguous memory the library fills in place."""
    if isinstance(obj, Tensor):
        return obj
    mv = memoryview(obj)
    if mv.readonly:
        raise ValueError("output buffer is read-only")
    if _format_kind(mv.format, mv.itemsize) != _api.F32 or not mv.c_contiguous:
        raise ValueError("output buffer must be C-contiguous float32 (format 'f'), got format %r" % mv.format)
    return _wrap(obj, mv.shape, _api.F32)


def copy_of(handle):
    """A caller-owned copy of a tensor the library keeps (sampler state), as result() returns."""
    if not handle:
        return None
    lib = _api.lib
    kind = lib.ldm_tensor_dtype(handle)
    shape = [lib.ldm_tensor_dim(handle, i) for i in range(lib.ldm_tensor_ndim(handle))]
    out = ctypes.c_void_p()
    check(lib.ldm_tensor_create(kind, len(shape), (ctypes.c_int64 * max(1, len(shape)))(*shape), ctypes.byref(out)),
          "ldm_tensor_create")
    nbytes = lib.ldm_tensor_numel(handle) * _ITEMSIZE[kind]
    if nbytes:
        ctypes.memmove(lib.ldm_tensor_data(out.value), lib.ldm_tensor_data(handle), nbytes)
    return result(out.value)


def result(handle):
    """What a call returns for a tensor the library handed over: a NumPy array (when enabled)
    or a Tensor, sharing the library's memory either way."""
    return deliver(Tensor._adopt(handle)) if handle else None


def deliver(t):
    """A Tensor as the caller gets results: a NumPy view of it when enabled, else itself."""
    return t.numpy() if _use_numpy else t


def is_number(v):
    """A real scalar (Python or NumPy), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def timesteps_arg(t):
    """Timesteps as (values, dtype): integers travel as int64 (as the reference), fractional
    values (the k-samplers' sigma_to_t) as float32."""
    def fractional(v):
        return is_number(v) and not float(v).is_integer()
    if is_number(t):
        return ([float(t)], "float32") if fractional(t) else ([_api.integer(int(t), "timesteps", "int64")], "int64")
    if isinstance(t, (list, tuple)) and any(fractional(v) for v in t):
        return [float(v) for v in t], "float32"
    if isinstance(t, (list, tuple)):
        return [_api.integer(int(v), "timesteps[%d]" % i, "int64") for i, v in enumerate(t)], "int64"
    return t, "int64"


class Args:
    """Converted inputs of one call, released when the call is over:

        with Args() as a:
            check(lib.ldm_x(a.tensor(x), a.tensor(labels, "int64"), byref(out)), "ldm_x")
    """

    def __init__(self):
        self._temps = []

    def tensor(self, obj, dtype="float32"):
        if obj is None:
            return None
        t = as_tensor(obj, dtype)
        if t is not obj:
            self._temps.append(t)
        return t.handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for t in self._temps:
            t.close()
        self._temps = []
