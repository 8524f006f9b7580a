"""QuantSpec: the frozen, validated description of how expert weights are quantized."""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Mapping

from edgemoe.errors import ConfigError

SCHEMES = ("matryoshka", "float32")
SCALE_DTYPES = ("float16", "float32")
PLANE_WIDTHS = (2, 4)  # bit widths a plane may have (plus the lone 8-bit plane of ladder (8,))
GROUP_SIZES = (16, 32, 64, 128, 256)  # onnxruntime MatMulNBits block sizes
TOP_BITS = 8  # every matryoshka ladder ends at the 8-bit min-max grid
_LADDER_RULE = (
    "a matryoshka ladder is strictly increasing bit counts ending at 8, whose first level and "
    "every step are 2 or 4 bits (e.g. 2,4,8 or 4,8 or 2,4,6,8), or the single level 8"
)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_ladder(ladder: Any) -> tuple[int, ...]:
    """Return ``ladder`` as a tuple of ints if it is a valid matryoshka ladder, else raise."""
    try:
        levels = tuple(ladder)
    except TypeError:
        raise ConfigError(f"ladder must be a sequence of ints, got {ladder!r}; {_LADDER_RULE}") from None
    if not levels or not all(_is_int(b) for b in levels):
        raise ConfigError(f"invalid ladder {ladder!r}: {_LADDER_RULE}")
    levels = tuple(int(b) for b in levels)
    if levels == (TOP_BITS,):
        return levels
    widths = [b - a for a, b in zip((0,) + levels[:-1], levels)]
    if levels[-1] != TOP_BITS or any(w not in PLANE_WIDTHS for w in widths):
        raise ConfigError(f"invalid ladder {levels!r}: {_LADDER_RULE}")
    return levels


def _parse_ints(text: str) -> tuple[int, ...]:
    """Split ``"2,4,8"`` into ints, with an error that shows the expected form."""
    try:
        return tuple(int(p.strip()) for p in str(text).split(","))
    except ValueError:
        raise ConfigError(
            f"cannot parse ladder {text!r}: expected comma-separated bit counts like '2,4,8'"
        ) from None


def parse_ladder(text: str) -> tuple[int, ...]:
    """Parse a comma-separated bit ladder such as ``"2,4,8"``.

    Parameters
    ----------
    text : str
        Comma-separated integers; spaces are allowed.

    Returns
    -------
    tuple of int
        The validated matryoshka ladder.

    Raises
    ------
    ConfigError
        If ``text`` is not a list of integers or breaks the ladder rules.
    """
    return _check_ladder(_parse_ints(text))


@dataclass(frozen=True)
class QuantSpec:
    """How expert matrices are quantized and laid out.

    Attributes
    ----------
    ladder : tuple of int
        Bits of each level, increasing; level k uses the top k bits of each 8-bit code.
    group_size : int
        Quantization group length along the input dimension K (power of two, 16..256).
    scale_dtype : str
        Dtype of the stored per-group scales and offsets: ``"float16"`` or ``"float32"``.
    scheme : str
        ``"matryoshka"`` (bit-nested codes) or ``"float32"`` (unquantized, exact parity).
    """

    ladder: tuple[int, ...] = (2, 4, 8)
    group_size: int = 64
    scale_dtype: str = "float16"
    scheme: str = "matryoshka"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"unknown quant scheme {self.scheme!r}; valid schemes: {', '.join(SCHEMES)}")
        if self.scheme == "float32":
            levels = tuple(self.ladder) if isinstance(self.ladder, (tuple, list)) else self.ladder
            if levels != (32,):
                raise ConfigError(
                    f"scheme 'float32' has the single level (32,), got ladder {self.ladder!r}; "
                    "use QuantSpec.float32()"
                )
        else:
            levels = _check_ladder(self.ladder)
        object.__setattr__(self, "ladder", levels)  # normalise lists to a tuple once
        gs = self.group_size
        if not _is_int(gs) or int(gs) not in GROUP_SIZES:
            raise ConfigError(
                f"invalid group_size {gs!r}; valid group sizes (onnxruntime MatMulNBits block sizes): "
                f"{', '.join(map(str, GROUP_SIZES))}"
            )
        object.__setattr__(self, "group_size", int(gs))
        if self.scale_dtype not in SCALE_DTYPES:
            raise ConfigError(
                f"invalid scale_dtype {self.scale_dtype!r}; valid scale dtypes: {', '.join(SCALE_DTYPES)}"
            )

    @classmethod
    def float32(cls) -> "QuantSpec":
        """Spec that stores experts unquantized as float32 (exact parity with the source)."""
        return cls(ladder=(32,), scheme="float32")

    @property
    def plane_widths(self) -> tuple[int, ...]:
        """Bits each plane adds: ``(2, 2, 4)`` for ladder ``(2, 4, 8)``; ``(32,)`` for float32."""
        return tuple(b - a for a, b in zip((0,) + self.ladder[:-1], self.ladder))

    @property
    def top_bits(self) -> int:
        """Bits of the highest level (8 for matryoshka, 32 for float32)."""
        return self.ladder[-1]

    def level_index(self, bits: int) -> int:
        """0-based position of level ``bits`` in the ladder; ConfigError if it is not a level."""
        if not _is_int(bits) or int(bits) not in self.ladder:
            raise ConfigError(f"{bits!r} bits is not a level of this spec; valid levels: {self.ladder}")
        return self.ladder.index(int(bits))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for manifests (inverse of :meth:`from_dict`)."""
        return {
            "scheme": self.scheme,
            "ladder": list(self.ladder),
            "group_size": self.group_size,
            "scale_dtype": self.scale_dtype,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantSpec":
        """Build a spec from :meth:`to_dict` output; missing keys take defaults, unknown keys fail."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"quant spec must be a mapping, got {type(d).__name__}")
        valid = ("scheme", "ladder", "group_size", "scale_dtype")
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(f"unknown quant spec keys {unknown}; valid keys: {', '.join(valid)}")
        kw = dict(d)
        ladder = kw.get("ladder", (32,) if kw.get("scheme") == "float32" else cls.ladder)
        kw["ladder"] = _parse_ints(ladder) if isinstance(ladder, str) else ladder
        return cls(**kw)
