"""edgemoe: run mixture-of-experts language models on small devices under a hard memory budget."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Runtime", "Package", "__version__"]


def __getattr__(name):  # lazy: `import edgemoe` stays cheap and torch-free
    if name == "Runtime":
        from edgemoe.runtime.engine import Runtime
        return Runtime
    if name == "Package":
        from edgemoe.package.reader import Package
        return Package
    raise AttributeError(name)
