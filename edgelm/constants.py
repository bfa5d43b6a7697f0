"""Keys and file names of the artifacts edgelm writes, in one place: the writers (export/, bundle) and
the readers (runtime/, formats/) import them from here, as llama.cpp's converter and loader share
gguf-py's constants.py."""

from __future__ import annotations

from pathlib import Path

# --- texts shipped with the package (an installed edgelm has no examples/) -----------------------
# the openings (~24 KB each, more than any default reads) of the six novels in examples/data
TEXTS = Path(__file__).resolve().parent / "assets" / "text"
HELD_OUT_TEXT = TEXTS / "persuasion-opening.txt"  # held out from training: parity, perplexity, bench, the certificate
TRAINING_TEXTS = tuple(TEXTS / f"{name}-opening.txt" for name in  # the five novels the shipped models trained on
                       ("emma", "mansfield-park", "northanger-abbey", "pride-and-prejudice", "sense-and-sensibility"))

# --- GGUF metadata edgelm adds beside llama.cpp's own keys ---------------------------------------
GGUF_VERSION = "edgelm.version"
GGUF_FAMILY = "edgelm.family"
GGUF_POSITION_ENCODING = "edgelm.position_encoding"
GGUF_CONFIG = "edgelm.config"  # the source config.json, as JSON text
GGUF_HEAD_TEMPERATURES = "edgelm.head_temperatures"  # provenance: already folded into the weights
GGUF_CONTEXT_LIMIT = 1 << 24  # positions a GGUF may declare: edgelm writes and reads no more (a context past it is no edge model)
GGUF_HEAD_TEMPERATURES_BAKED = "edgelm.head_temperatures_baked"
GGUF_PARITY = "edgelm.parity."  # + each field of the parity certificate (certificate.py), the probe as JSON text
# + one of TOKENIZER_FILES: that file, a text file as a UTF-8 string, a binary one (tokenizer.model) as
# base64 text under the _BASE64 prefix. Strings, not uint8 arrays: gguf-py's reader parses an array
# element by element (a 270 kB tokenizer.json took 4.7 s to open; as a string, one read)
# llama.cpp ends a generation at eos, at the tokens these keys name (gguf-py's Keys.Tokenizer.EOT_ID, EOM_ID) and at the
# token texts it knows (tokenizer.END_OF_GENERATION_TEXTS): the two ids besides eos a GGUF can state
GGUF_END_TOKEN_KEYS = ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
# the recommended sampling llama.cpp's converter writes from generation_config.json (gguf-py's metadata.py) and its
# common arguments take as defaults, by SamplingOptions' names
GGUF_SAMPLING_KEYS = {"temperature": "general.sampling.temp", "top_k": "general.sampling.top_k", "top_p": "general.sampling.top_p",
                      "min_p": "general.sampling.min_p", "repetition_penalty": "general.sampling.penalty_repeat"}
GGUF_TOKENIZER_FILE = "edgelm.tokenizer_file."
GGUF_TOKENIZER_FILE_BASE64 = "edgelm.tokenizer_file_base64."

# --- Hugging Face-style tokenizer files (model folders, ONNX folders, GGUF extras, bundles) -----
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers 5's place for the template, beside tokenizer_config.json
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", CHAT_TEMPLATE_FILE)

# --- ONNX folders ----------------------------------------------------------------------------------
HF_CONFIG = "config.json"  # the model's Hugging Face config, for Optimum's ORTModelForCausalLM
ONNX_MODEL_FILE = "model.onnx"
ORT_MODEL_FILE = "model.ort"  # ONNX Runtime's mobile format, in bundles
GENAI_CONFIG = "genai_config.json"  # onnxruntime-genai's
ONNX_MANIFEST = "edgelm.json"  # edgelm's facts about an ONNX export
PARITY_CERTIFICATE = "parity_certificate"  # its key in an ONNX export's edgelm.json and in a bundle's manifest
ONNX_METADATA_PARITY = "edgelm.parity"  # the certificate as JSON in the graph's metadata_props
ONNX_METADATA_FACTS = "edgelm.facts"  # beside it: what edgelm.json records that runs the graph (formats/onnx.py recorded_facts)
ONNX_METADATA_GENAI = "edgelm.genai_config_sha256"  # a mobile bundle's graph: the sha256 of the genai_config.json bundled with it

# --- bundles ---------------------------------------------------------------------------------------
BUNDLE_MANIFEST = "edgelm.json"
SAMPLING_DEFAULTS = {"temperature": 0.7, "top_k": 40, "top_p": 0.95}  # chat's and a bundle's where the model recommends none
REQUIRED_OPERATORS = "required_operators.config"
# llama.cpp's LLAMA_MAX_LAYERS (llama-hparams.h): the most blocks a GGUF or a genai_config.json may state
LLAMA_MAX_LAYERS = 512


def llama_cpp_archs() -> frozenset[str]:
    """The architectures stock llama.cpp runs, as the installed gguf-py names them."""
    from gguf import MODEL_ARCH_NAMES

    return frozenset(MODEL_ARCH_NAMES.values())

# --- web bundles (edgelm bundle --target web) ---------------------------------------------------------
# The npm packages the page runs on, pinned as in web/package.json, and the files of each it vendors (a
# flat folder: the bundle's plain-name checks apply): onnxruntime-web's WebGPU build (WebGPU, else WASM)
# and the WASM binary it loads for both, tokenizers.js for tokenizer.json. Each file's sha256 is that of the
# pinned package's (npm ci of web/package-lock.json, whose integrity hashes npm checks): a folder whose
# package.json states the version while its files are other code, or none, is refused, not bundled.
WEB_RUNTIME_FILES = {
    "onnxruntime-web": ("1.30.0", {
        "dist/ort.webgpu.min.mjs": "3dffff71811bc13a3a3d9591c57ca5ee5735b8f5f3eaf789510b02bb040ae3a0",
        "dist/ort-wasm-simd-threaded.asyncify.mjs": "3d1c85995364bb643302fc6fd877a0c3ba5ae72401815e0f24828a53d9191e28",
        "dist/ort-wasm-simd-threaded.asyncify.wasm": "39f9f0894d478800487ed9f7dbe92618498db320cf55c8e3d89adff8dce658da",
    }),
    "@huggingface/tokenizers": ("0.2.0", {
        "dist/tokenizers.min.mjs": "258e46332101335ce8d95aed7745b19ac3b46d37f3e159a89cf894c2ea9b1d3a",
        "LICENSE": "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
    }),
}
WEB_RUNTIME_MAX_BYTES = 64 << 20  # the largest vendored file, the WASM binary, is 26.8 MB
WEB_PAGE_FILES = ("index.html", "edgelm-web.js")  # edgelm/assets/web

# llama.cpp's SentencePiece tokenizer spells a character it has no piece for as byte pieces, and with none it throws
# out of llama_tokenize (unordered_map::at): the process aborts, exit 134 (a stranger's tokenizer trained without
# byte_fallback, given "日本"). Refused at GGUF export and at opening a GGUF.
NO_BYTE_PIECES = ("SentencePiece tokenizer has no byte pieces (trained without byte_fallback): llama.cpp aborts the process on any "
                  "character outside its pieces")
GGUF_TOKEN_TYPE_BYTE = 6  # gguf-py's TokenType.BYTE, llama.cpp's LLAMA_TOKEN_TYPE_BYTE
