"""Bytes: a level is one read of exactly its prefix, an upgrade one read of exactly the missing
chunks, a downgrade no read at all; the Runtime at level k reads n_experts * prefix_length(k)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import tiny_models  # noqa: E402
from edgemoe.exporters.export import export  # noqa: E402
from edgemoe.package.reader import Package  # noqa: E402
from edgemoe.quant.record import decode_record  # noqa: E402
from edgemoe.quant.spec import QuantSpec  # noqa: E402
from edgemoe.runtime.engine import Runtime  # noqa: E402
from edgemoe.package.record_store import ExpertStore  # noqa: E402

LADDER = (2, 4, 8)


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    d = tmp_path_factory.mktemp("bytes")
    tiny_models.build("mixtral", d / "hf")
    return Package(export(d / "hf", d / "q.edgemoe", QuantSpec()))


@pytest.fixture
def store(pkg):
    s = ExpertStore(pkg)
    yield s
    s.close()


def test_prefixes_grow_and_are_page_aligned(pkg):
    p = [pkg.layout.prefix_length(b) for b in LADDER]
    assert p == sorted(p) and len(set(p)) == 3 and p[-1] == pkg.layout.length
    assert all(n % 4096 == 0 for n in p)


@pytest.mark.parametrize("bits", LADDER)
def test_level_k_is_one_read_of_its_prefix(pkg, store, bits):
    buf = store.read(1, 3, bits)
    assert store.reads == 1
    assert store.bytes_read == pkg.layout.prefix_length(bits)
    assert buf.nbytes == pkg.layout.length      # room for later upgrades


@pytest.mark.parametrize("have, want", [(2, 4), (4, 8), (2, 8)])
def test_upgrade_reads_only_the_missing_chunks(pkg, store, have, want):
    layout = pkg.layout
    buf = store.read(0, 1, have)
    low = decode_record(buf, layout, have)
    r0, b0 = store.reads, store.bytes_read
    up = store.read(0, 1, want, buf=buf, have_bits=have)
    assert up is buf                                             # in place
    assert store.reads - r0 == 1                                 # one read
    assert store.bytes_read - b0 == layout.prefix_length(want) - layout.prefix_length(have)
    fresh = decode_record(ExpertStore(pkg).read(0, 1, want), layout, want)
    got = decode_record(up, layout, want)
    for m in fresh:                                              # bit-identical to a fresh read
        assert got[m].tobytes() == fresh[m].tobytes()
    again = decode_record(up, layout, have)                      # the lower level is untouched
    for m in low:
        assert again[m].tobytes() == low[m].tobytes()


def test_downgrade_reads_nothing(pkg, store):
    buf = store.read(1, 0, 8)
    r0, b0 = store.reads, store.bytes_read
    assert store.read(1, 0, 2, buf=buf, have_bits=8) is buf
    assert (store.reads, store.bytes_read) == (r0, b0)
    w = decode_record(buf, pkg.layout, 2)
    fresh = decode_record(ExpertStore(pkg).read(1, 0, 2), pkg.layout, 2)
    assert all(np.array_equal(w[m], fresh[m]) for m in w)


def test_levels_differ(pkg, store):
    """Guard against a vacuous bit-identity check: the levels really decode differently."""
    w = {b: decode_record(store.read(0, 2, b), pkg.layout, b)["down"] for b in LADDER}
    assert not np.array_equal(w[2], w[4]) and not np.array_equal(w[4], w[8])


@pytest.mark.parametrize("bits", LADDER)
def test_runtime_reads_each_expert_once_at_its_level(pkg, bits):
    rt = Runtime(pkg, level=bits)
    n = pkg.arch.num_experts * len(pkg.arch.moe_layers)
    assert len(pkg.experts) == n == 8
    assert rt.store.reads == n
    assert rt.store.bytes_read == n * pkg.layout.prefix_length(bits) == pkg.level_bytes(bits)
    r = rt.generate([1, 2, 3], 4, stop_at_eos=False)
    assert len(r.ids) == 4
    assert r.stats["expert_bytes_read"] == rt.store.bytes_read     # decoding reads nothing more
    rt.close()
