"""Every name of the package format lives here; nothing else spells a manifest key."""

FORMAT_NAME = "edgemoe"
FORMAT_VERSION = "1.0"          # major.minor; readers refuse a newer major
MANIFEST = "manifest.yaml"
PARTIAL_SUFFIX = ".partial"     # staging folder while an export is being written

# top-level manifest keys
K_FORMAT = "format"
K_VERSION = "format_version"
K_PRODUCER = "producer"
K_ARCH = "arch"
K_QUANT = "quant"
K_TOKENIZER = "tokenizer"
K_DENSE = "dense"              # optional: how the dense weights are stored (absent = float32)
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

GRAPHS_DIR = "graphs"
EXPERTS_DIR = "experts"
TOKENIZER_FILE = "tokenizer.json"
RECORD_FILE = "records.bin"


def layer_graph_path(i: int) -> str:
    return f"{GRAPHS_DIR}/L{i:03d}.onnx"


def expert_dir(i: int) -> str:
    return f"{EXPERTS_DIR}/L{i:03d}"


def expert_graph_name(e: int, bits: int) -> str:
    return f"E{e:03d}.k{bits}.onnx"
