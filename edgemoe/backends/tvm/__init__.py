"""Apache TVM expert kernels that compute on the bit planes of the record (optional: ``edgemoe[tvm]``).

``compile.compile_package`` builds them ahead of time into ``PKG/kernels/<device>/``;
``backend.TvmBackend`` loads and runs them. Nothing here imports TVM until it is used, so edgemoe
imports without it.
"""
from __future__ import annotations

from edgemoe.errors import ConfigError

INSTALL_HINT = "pip install 'edgemoe[tvm]' (apache-tvm 0.27 with apache-tvm-ffi 0.1.14.post1)"


def tvm_missing_reason() -> str | None:
    """Why apache-tvm cannot be used here, or None if it can."""
    try:
        import tvm  # noqa: F401
        import tvm.s_tir  # noqa: F401  (0.27 layout; older releases lack it)
    except ImportError as e:
        return f"apache-tvm is not importable ({e}); {INSTALL_HINT}"
    except (OSError, RuntimeError) as e:   # a broken install: missing shared library, ABI mismatch
        return f"apache-tvm failed to load ({e}); reinstall it: {INSTALL_HINT}"
    return None


def require_tvm():
    """The ``tvm`` module, or ConfigError saying how to install it."""
    reason = tvm_missing_reason()
    if reason:
        raise ConfigError(f"the tvm backend needs apache-tvm: {reason}")
    import tvm

    return tvm
