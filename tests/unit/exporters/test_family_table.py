"""The family table: every registered model type has a tiny-model parity test, and back."""
import tiny_models
from edgemoe.exporters.families import ADAPTERS, supported_model_types


def test_every_registered_family_has_a_tiny_parity_model():
    """Per adapter: its model type (the first; later ones are aliases of the same config and
    weights, as kimi_k2 of deepseek_v3) has a tiny model in the parity tests."""
    missing = sorted(a.model_types[0] for a in ADAPTERS if a.model_types[0] not in tiny_models.FAMILIES)
    assert not missing, f"families without a parity test (add them to tests/tiny_models.py): {missing}"


def test_every_tiny_model_is_a_registered_family():
    assert sorted(set(tiny_models.FAMILIES) - set(supported_model_types())) == []


def test_one_adapter_per_model_type():
    types = [t for a in ADAPTERS for t in a.model_types]
    assert len(types) == len(set(types))
