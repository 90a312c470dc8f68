"""Finding and loading the shared library libldm.so.0.

The search order (also in the package docstring and README.md):
  1. $LDM_LIBRARY: the path of the library file, or of a directory holding libldm.so.0. When it is
     set it is the only place looked at: a wrong path is an error, not a silent fallback to some
     other copy of the library.
  2. libldm.so.0 in this package's own directory (a wheel or a copy that bundles the library).
  3. the system's dynamic-loader path (LD_LIBRARY_PATH, /etc/ld.so.cache, /usr/lib, ...).
"""
import ctypes
import os
import sys

if sys.platform == "darwin":
    SONAME = "libldm.0.dylib"
elif sys.platform == "win32":
    SONAME = "ldm.dll"
else:
    SONAME = "libldm.so.0"

ENV_VAR = "LDM_LIBRARY"


def _from_env(value):
    path = os.path.join(value, SONAME) if os.path.isdir(value) else value
    try:
        return ctypes.CDLL(path), path
    except OSError as e:
        raise ImportError("libldm: cannot load the library named by $%s (%s): %s" % (ENV_VAR, path, e)) from e


def load():
    """Returns (ctypes.CDLL, path it was loaded from) following the documented order."""
    env = os.environ.get(ENV_VAR)
    if env:
        return _from_env(env)
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), SONAME)
    if os.path.exists(bundled):
        return ctypes.CDLL(bundled), bundled
    try:
        return ctypes.CDLL(SONAME), SONAME
    except OSError as e:
        raise ImportError(
            "libldm: %s not found: set $%s to the library file, put the library next to this package "
            "(%s), or install libldm (make install) so the dynamic loader finds it (%s)"
            % (SONAME, ENV_VAR, os.path.dirname(bundled), e)) from e
