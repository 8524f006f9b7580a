"""Expert backends, one folder each, behind one interface (see base.py)."""
from __future__ import annotations

from edgemoe.backends.base import ExpertBackend
from edgemoe.errors import ConfigError


def get_backend(name: str, **kw) -> ExpertBackend:
    """Instantiate an expert backend by name: 'ort', 'planes', 'hls' or 'reference'."""
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
    raise ConfigError(f"unknown backend {name!r}; available: ort, planes, hls, reference")
