"""DeepSeek-V3.2 (``deepseek_v32``): DeepSeek-V3 plus the DSA lightning indexer, which keeps the
``index_topk`` (2048) best keys per query. While a sequence holds at most that many tokens the
indexer selects all of them and the model equals DeepSeek-V3, so the export ignores the indexer's
weights and caps the context at ``index_topk`` (said at export and in the package's
``max_position``)."""
import sys
from dataclasses import replace

from edgemoe.exporters.families.deepseek_v3 import DeepseekV3Adapter


class DeepseekV32Adapter(DeepseekV3Adapter):
    name = "deepseek_v32"
    model_types = ("deepseek_v32",)
    ignorable = ("rotary_emb.inv_freq", "self_attn.indexer.")

    def arch(self, cfg):
        a = super().arch({**cfg, "layer_types": None})     # 'indexed_attention': see above
        cap = int(cfg.get("index_topk") or 2048)
        if a.max_position > cap:
            print(f"note: deepseek_v32's sparse indexer is not exported; the context is capped at its "
                  f"index_topk = {cap} tokens (max_position_embeddings {a.max_position}), where the "
                  f"model equals DeepSeek-V3", file=sys.stderr)
        return replace(a, family=self.name, max_position=min(a.max_position, cap))
