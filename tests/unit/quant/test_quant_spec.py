"""QuantSpec validation, normalisation and round trips."""
import pytest

from edgemoe.errors import ConfigError
from edgemoe.quant import QuantSpec, parse_ladder


def test_defaults():
    s = QuantSpec()
    assert s.ladder == (2, 4, 8) and s.group_size == 64 and s.scale_dtype == "float16"
    assert s.plane_widths == (2, 2, 4)
    assert s.top_bits == 8


@pytest.mark.parametrize(
    "ladder, widths",
    [((2, 4, 8), (2, 2, 4)), ((4, 8), (4, 4)), ((2, 4, 6, 8), (2, 2, 2, 2)), ((8,), (8,)), ((4, 6, 8), (4, 2, 2))],
)
def test_valid_ladders(ladder, widths):
    assert QuantSpec(ladder=ladder).plane_widths == widths


@pytest.mark.parametrize(
    "ladder",
    [
        (2, 4), (3, 8), (2, 8), (4, 4, 8), (8, 4), (2, 4, 8, 10), (),
        (1, 2, 4, 8), (2, 4.0, 8), (True, 4, 8), (6, 8), (16,),
    ],
)
def test_bad_ladder_names_the_rule(ladder):
    with pytest.raises(ConfigError, match=r"2,4,8.*single level 8"):
        QuantSpec(ladder=ladder)


@pytest.mark.parametrize("gs", [0, 8, 48, 100, 512, 64.0, True])
def test_bad_group_size_names_valid_values(gs):
    with pytest.raises(ConfigError, match="16, 32, 64, 128, 256"):
        QuantSpec(group_size=gs)


def test_bad_scale_dtype_and_scheme():
    with pytest.raises(ConfigError, match="float16, float32"):
        QuantSpec(scale_dtype="bfloat16")
    with pytest.raises(ConfigError, match="matryoshka, float32"):
        QuantSpec(scheme="int4")
    with pytest.raises(ConfigError, match=r"float32\(\)"):
        QuantSpec(scheme="float32")  # default ladder is not (32,)


def test_config_error_is_value_error():
    with pytest.raises(ValueError):
        QuantSpec(group_size=3)


def test_list_ladder_normalised_to_tuple_and_hashable():
    s = QuantSpec(ladder=[2, 4, 8])
    assert s.ladder == (2, 4, 8) and isinstance(s.ladder, tuple)
    assert hash(s) == hash(QuantSpec()) and s == QuantSpec()


def test_float32_spec():
    s = QuantSpec.float32()
    assert s.scheme == "float32" and s.ladder == (32,) and s.plane_widths == (32,) and s.top_bits == 32


@pytest.mark.parametrize("spec", [QuantSpec(), QuantSpec((4, 8), 128, "float32"), QuantSpec.float32()])
def test_dict_round_trip(spec):
    d = spec.to_dict()
    assert d["ladder"] == list(spec.ladder)
    assert QuantSpec.from_dict(d) == spec


def test_from_dict_rejects_unknown_keys_and_accepts_string_ladder():
    with pytest.raises(ConfigError, match="valid keys"):
        QuantSpec.from_dict({"bits": [2, 4, 8]})
    assert QuantSpec.from_dict({"ladder": "4,8"}).ladder == (4, 8)
    assert QuantSpec.from_dict({"scheme": "float32"}) == QuantSpec.float32()


def test_level_index():
    s = QuantSpec()
    assert [s.level_index(b) for b in (2, 4, 8)] == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"valid levels: \(2, 4, 8\)"):
        s.level_index(3)


def test_parse_ladder():
    assert parse_ladder("2,4,8") == (2, 4, 8)
    assert parse_ladder(" 4 , 8 ") == (4, 8)
    for junk in ["", "2;4;8", "two,four", "2,,8", "2.5,8"]:
        with pytest.raises(ConfigError, match="'2,4,8'"):
            parse_ladder(junk)
    with pytest.raises(ConfigError, match="ending at 8"):
        parse_ladder("2,4")
