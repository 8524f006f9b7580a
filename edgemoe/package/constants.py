"""Every name of the package format lives here; nothing else spells a manifest key."""

FORMAT_NAME = "edgemoe"
FORMAT_VERSION = "2.2"          # major.minor; readers refuse another major
# 2.0: layer graphs attend over an in-place KV cache (GroupQueryAttention), one graph per KV type
# 2.1: optional tokenizer.chat_template (file) and tokenizer.special_tokens (older 2.x readers ignore them)
# 2.2: arch.router (RouterSpec) replaces routing / norm_topk_prob / router_jitter_noise / routed_scaling
#      (2.0 and 2.1 manifests are read as settings of it); new arch keys (rope_scaling, post_norm,
#      sliding windows, sinks, expert_act, expert_bias, ...); records may hold bias vectors; layer
#      graphs may hold router_selection_bias / moe_out_norm. 2.0/2.1 readers refuse 2.2 arch keys.
MANIFEST = "manifest.yaml"
PARTIAL_SUFFIX = ".partial"     # staging folder while an export is being written
JOURNAL = "export-journal.yaml"  # in the staging folder: the layers finished so far (--resume)

# top-level manifest keys
K_FORMAT = "format"
K_VERSION = "format_version"
K_PRODUCER = "producer"
K_ARCH = "arch"
K_QUANT = "quant"
K_TOKENIZER = "tokenizer"
K_DENSE = "dense"              # optional: how the dense weights are stored (absent = float32)
K_KV_SCALES = "kv_int8_scales"  # optional: file of per-layer int8 KV cache scales [L, 2, KVH*D] float32
K_FILES = "files"
K_GRAPHS = "graphs"
K_EXPERTS = "experts"
REQUIRED_KEYS = (K_FORMAT, K_VERSION, K_PRODUCER, K_ARCH, K_QUANT, K_FILES, K_GRAPHS, K_EXPERTS)

# nested keys
K_LENGTH = "length"
K_SHA256 = "sha256"
K_FILE = "file"
K_EMBED = "embed"
K_HEAD = "head"
K_LAYERS = "layers"
K_LAYER = "layer"
K_OFFSET = "offset"
K_RECORDS = "records"
K_EXPERT = "expert"
K_LEVELS = "levels"
K_BITS = "bits"
K_PREFIX = "prefix_length"
K_GRAPH = "graph"
K_ADD_BOS = "add_bos"
K_CHAT_TEMPLATE = "chat_template"     # optional: file of the checkpoint's jinja chat template
K_SPECIAL_TOKENS = "special_tokens"   # optional: {bos_token, eos_token, ...} strings the template uses

GRAPHS_DIR = "graphs"
EXPERTS_DIR = "experts"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"   # in a checkpoint: chat_template, special tokens
CHAT_TEMPLATE_FILE = "chat_template.jinja"       # in a checkpoint (newer transformers) and a package
RECORD_FILE = "records.bin"
KV_SCALES_FILE = GRAPHS_DIR + "/kv_int8_scales.bin"


def layer_graph_path(i: int, kv: str = "f32") -> str:
    """Layer i's graph for a KV cache of element type ``kv``; the f32 one names the weights file
    (``L003.onnx.data``) that every type's graph of the layer reads."""
    return f"{GRAPHS_DIR}/L{i:03d}.onnx" if kv == "f32" else f"{GRAPHS_DIR}/L{i:03d}.kv-{kv}.onnx"


def expert_dir(i: int) -> str:
    return f"{EXPERTS_DIR}/L{i:03d}"


def expert_graph_name(e: int, bits: int) -> str:
    return f"E{e:03d}.k{bits}.onnx"
