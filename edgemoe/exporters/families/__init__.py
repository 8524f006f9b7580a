"""Registry of family adapters: one file per family; add a family by adding a file and a line here."""
from __future__ import annotations

from edgemoe.errors import UnsupportedArchitectureError
from edgemoe.exporters.families.base import FamilyAdapter
from edgemoe.exporters.families.deepseek_v2 import DeepseekV2Adapter
from edgemoe.exporters.families.deepseek_v3 import DeepseekV3Adapter
from edgemoe.exporters.families.deepseek_v32 import DeepseekV32Adapter
from edgemoe.exporters.families.dots1 import Dots1Adapter
from edgemoe.exporters.families.ernie4_5_moe import Ernie45MoeAdapter
from edgemoe.exporters.families.flex_olmo import FlexOlmoAdapter
from edgemoe.exporters.families.glm4_moe import Glm4MoeAdapter
from edgemoe.exporters.families.glm4_moe_lite import Glm4MoeLiteAdapter
from edgemoe.exporters.families.gpt_oss import GptOssAdapter
from edgemoe.exporters.families.granitemoe import GraniteMoeAdapter
from edgemoe.exporters.families.granitemoeshared import GraniteMoeSharedAdapter
from edgemoe.exporters.families.hunyuan_v1_moe import HunyuanV1MoeAdapter
from edgemoe.exporters.families.minimax_m2 import MinimaxM2Adapter
from edgemoe.exporters.families.mixtral import MixtralAdapter
from edgemoe.exporters.families.olmoe import OlmoeAdapter
from edgemoe.exporters.families.phimoe import PhimoeAdapter
from edgemoe.exporters.families.qwen2_moe import Qwen2MoeAdapter
from edgemoe.exporters.families.qwen3_moe import Qwen3MoeAdapter
from edgemoe.exporters.families.sarvam_moe import SarvamMoeAdapter

ADAPTERS: tuple[FamilyAdapter, ...] = (
    MixtralAdapter(), Qwen2MoeAdapter(), Qwen3MoeAdapter(), OlmoeAdapter(), PhimoeAdapter(),
    GraniteMoeAdapter(), GraniteMoeSharedAdapter(), Glm4MoeAdapter(), SarvamMoeAdapter(), Dots1Adapter(),
    Ernie45MoeAdapter(), HunyuanV1MoeAdapter(), MinimaxM2Adapter(), FlexOlmoAdapter(), GptOssAdapter(),
    DeepseekV2Adapter(), DeepseekV3Adapter(), DeepseekV32Adapter(),
    Glm4MoeLiteAdapter())


def supported_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(config: dict) -> FamilyAdapter:
    """The adapter for a config.json's ``model_type``; a typed error listing the supported ones."""
    model_type = config.get("model_type")
    for a in ADAPTERS:
        if model_type in a.model_types:
            return a
    raise UnsupportedArchitectureError(
        f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}")
