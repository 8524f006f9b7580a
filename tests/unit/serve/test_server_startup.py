"""Start-up refusals of `edgemoe serve`, before anything listens."""
from __future__ import annotations

import socket

import pytest

from edgemoe.errors import ConfigError, PackageError
from edgemoe.serve.server import ServeConfig, _bind, serve


@pytest.mark.parametrize("bad", [dict(parallel=0), dict(ctx_size=1), dict(max_queue=-1), dict(port=70000)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        ServeConfig("x", **bad)


def test_a_port_in_use_is_named():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        with pytest.raises(ConfigError, match="pick another --port"):
            _bind("127.0.0.1", s.getsockname()[1])
    finally:
        s.close()


def test_a_package_without_tokenizer_is_refused(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import tiny_models
    from edgemoe.exporters.export import export

    tiny_models.build("mixtral", tmp_path / "hf")
    pkg = export(tmp_path / "hf", tmp_path / "p.edgemoe")
    with pytest.raises(PackageError, match="no tokenizer"):
        serve(ServeConfig(str(pkg), port=0))
