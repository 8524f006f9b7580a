"""Expert backends, one folder each, behind one interface (see base.py)."""
from __future__ import annotations

from edgemoe.backends.base import ExpertBackend
from edgemoe.errors import ConfigError


def get_backend(name: str, **kw) -> ExpertBackend:
    """Instantiate an expert backend by name: 'ort', 'planes', 'hls', 'reference' or 'tvm'."""
    if name == "ort":
        from edgemoe.backends.ort.backend import OrtBackend
        return OrtBackend(**kw)
    if name == "planes":
        from edgemoe.backends.planes.backend import PlanesBackend
        return PlanesBackend(**kw)
    if name == "hls":
        from edgemoe.backends.hls.backend import HlsBackend
        return HlsBackend(**kw)
    if name == "reference":
        from edgemoe.backends.reference.backend import ReferenceBackend
        return ReferenceBackend(**kw)
    if name == "tvm":
        from edgemoe.backends.tvm.backend import TvmBackend
        backend = TvmBackend(**kw)
        if not backend.is_available():
            raise ConfigError(f"backend 'tvm' is not available: {backend.unavailable_reason}")
        return backend
    raise ConfigError(f"unknown backend {name!r}; available: ort, planes, hls, reference, tvm")
