// edgelm's web runtime: the same KV-cache loop as edgelm's onnxruntime backend (edgelm/runtime/onnx_backend.py),
// on onnxruntime-web (WebGPU where the browser has an adapter, WASM otherwise), with the model's own
// tokenizer.json through Hugging Face's tokenizers.js. Everything is read from this folder: no network.
import * as ort from "./ort.webgpu.min.mjs";
import { Tokenizer } from "./tokenizers.min.mjs";

ort.env.wasm.wasmPaths = new URL("./", import.meta.url).href;
// WASM threads share one SharedArrayBuffer, which browsers allow only in a cross-origin isolated page
// (served with COOP same-origin + COEP require-corp: `edgelm serve BUNDLE`); anywhere else, one thread.
export const wasmThreads = self.crossOriginIsolated ? Math.max(1, navigator.hardwareConcurrency || 1) : 1;
export const threadsReason = self.crossOriginIsolated
  ? `${wasmThreads} threads (cross-origin isolated)`
  : "1 thread: this page is not cross-origin isolated (its server sends no COOP/COEP headers); serve it with `edgelm serve DIR` for every core";
ort.env.wasm.numThreads = wasmThreads;

const json = async (path) => (await fetch(path)).json();

// The bytes of `path`, counted as they arrive: onProgress(bytes so far) after every chunk. Written into one
// buffer of the size the manifest states (a 0.9 GB weights file is not held twice while it arrives).
async function fetchCounted(path, expected, onProgress) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  const reader = response.body.getReader();
  const bytes = new Uint8Array(expected);
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (loaded + value.length > expected) throw new Error(`${path} is larger than the ${expected} bytes edgelm.json lists: make the bundle again`);
    bytes.set(value, loaded);
    loaded += value.length;
    onProgress(loaded);
  }
  if (loaded !== expected) throw new Error(`${path} has ${loaded} bytes, edgelm.json lists ${expected}: make the bundle again`);
  return bytes;
}

// A software adapter (Chrome's SwiftShader, or one the browser marks as fallback) emulates the GPU on
// the CPU's cores: ~20× slower than WASM on the same page (0.8 tok/s against 16.9), so it counts as no GPU.
export function isSoftwareAdapter(adapter, info = adapter.info || {}) {
  const names = `${info.vendor || ""} ${info.architecture || ""} ${info.device || ""} ${info.description || ""}`.toLowerCase();
  return Boolean(adapter.isFallbackAdapter || info.isFallbackAdapter) || /swiftshader|llvmpipe|lavapipe|software|microsoft basic render/.test(names);
}

// requested: "auto" (WebGPU on a hardware adapter, else WASM), "webgpu" (any adapter, software too) or "wasm";
// the reason is kept for the page and the test
export async function pickBackend(requested = "auto") {
  if (!["auto", "webgpu", "wasm"].includes(requested)) throw new Error(`unknown backend "${requested}": use ?backend=auto, webgpu or wasm`);
  if (requested === "wasm") return { backend: "wasm", reason: "asked for wasm" };
  if (!navigator.gpu) return { backend: "wasm", reason: "this browser has no navigator.gpu" };
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) return { backend: "wasm", reason: "navigator.gpu.requestAdapter() gave no adapter" };
  // adapter.info (Chrome 127+); requestAdapterInfo() before it
  const info = adapter.info || (adapter.requestAdapterInfo ? await adapter.requestAdapterInfo() : {});
  const name = `${info.vendor || "?"} ${info.architecture || ""}`.trim();
  if (requested === "auto" && isSoftwareAdapter(adapter, info)) {
    return { backend: "wasm", reason: `the WebGPU adapter (${name}) is a software one, slower than WASM; ?backend=webgpu uses it anyway` };
  }
  return { backend: "webgpu", reason: `${requested === "webgpu" ? "asked for webgpu: " : ""}adapter ${name}` };
}

// onnxruntime-web's WASM build has no 4-bit kernel: MatMulNBits dequantizes its whole weight to float at every
// call (a 2048×5632 matrix: 190 ms on one thread, against 8 ms for the same MatMul in int8, MatMulInteger on
// WASM SIMD); at 1.1B parameters, ~20 s a token. WebGPU has the kernel.
export function wasmNote(quantization) {
  return String(quantization).split("+").includes("int4")  // "int4+int8": a graph with both, read from its operators
    ? "int4 runs slowly on WASM (onnxruntime-web dequantizes every int4 weight at every step): for browsers without a GPU, bundle an int8 export"
    : "";
}

export class EdgelmModel {
  // onStatus({phase, ...}) reports what loading is doing: "download" {loaded, total} (bytes of the graph and
  // its external weights), then "session" (onnxruntime-web builds the session: weights into WASM memory)
  static async load(folder, requested, onStatus = () => {}) {
    const model = new EdgelmModel();
    model.manifest = await json(`${folder}/edgelm.json`);  // the bundle's manifest
    model.genai = await json(`${folder}/genai_config.json`);
    model.tokenizer = new Tokenizer(await json(`${folder}/tokenizer.json`), await json(`${folder}/tokenizer_config.json`));
    model.tokenizerConfig = await json(`${folder}/tokenizer_config.json`);
    Object.assign(model, await pickBackend(requested));
    const decoder = model.genai.model.decoder;
    const options = { executionProviders: [model.backend], graphOptimizationLevel: "all" };
    if (model.backend === "webgpu") options.preferredOutputLocation = "gpu-buffer";  // the cache stays on the GPU
    // the graph and its external weights fetched here, not by onnxruntime-web, so the page can count the bytes
    const external = model.manifest.external_data || [];
    const names = [decoder.filename, ...external];
    const sizes = names.map((name) => model.manifest.files[name]?.bytes ?? 0);
    const total = sizes.reduce((a, b) => a + b, 0), loaded = names.map(() => 0);
    const report = () => onStatus({ phase: "download", loaded: loaded.reduce((a, b) => a + b, 0), total });
    const bytes = await Promise.all(names.map((name, i) => fetchCounted(`${folder}/${name}`, sizes[i], (n) => { loaded[i] = n; report(); })));
    if (external.length) options.externalData = external.map((name, i) => ({ path: name, data: bytes[i + 1] }));
    onStatus({ phase: "session", total });
    model.session = await ort.InferenceSession.create(bytes[0], options);
    model.threads = model.backend === "wasm" ? threadsReason : "";
    model.note = model.backend === "wasm" ? wasmNote(model.manifest.quantization) : "";
    model.layers = decoder.num_hidden_layers;
    model.contextLength = model.genai.model.context_length;
    model.emptyCache = [1, decoder.num_key_value_heads, 0, decoder.head_size];
    const io = { ...decoder.inputs, ...decoder.outputs };
    model.names = io;
    model.cacheNames = [];
    for (let i = 0; i < model.layers; i++)
      for (const side of ["key", "value"])
        model.cacheNames.push([io[`past_${side}_names`].replace("%d", i), io[`present_${side}_names`].replace("%d", i)]);
    model.reset();
    return model;
  }

  reset() {
    // The cache grows: each step's present, [1, kv_heads, past + n, head_size], is the next step's past
    // (GroupQueryAttention appends when its past is shorter than the buffer; Optimum's graphs run this way
    // in edgelm's Python backend). edgelm's CPU loop instead binds one full-length buffer as both past
    // and present, written in place; onnxruntime-web cannot bind a WASM tensor to an input and an output
    // at once, so that buffer would be copied in and out whole at every step (tiny-rope f32 on WASM:
    // 24 ms a token with a 4,096-position buffer, 6 ms growing).
    this.cache = this.cacheNames.map(() => new ort.Tensor("float32", new Float32Array(0), this.emptyCache));
    this.position = 0;
  }

  encode(text) {
    const ids = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    const bos = this.tokenizer.token_to_id(this.tokenizerConfig.bos_token?.content ?? this.tokenizerConfig.bos_token);
    return this.tokenizerConfig.add_bos_token && bos !== undefined ? [bos, ...ids] : ids;
  }

  decode(ids) {
    return ids.length ? this.tokenizer.decode(ids, { skip_special_tokens: true }) : "";
  }

  // logits [vocab] of the token after the last of `ids`, appending ids to the cache
  async forward(ids) {
    const n = ids.length, total = this.position + n;
    if (total > this.contextLength) throw new Error(`${total} tokens exceed the model's context of ${this.contextLength}`);
    const feeds = {
      [this.names.input_ids]: new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, n]),
      [this.names.attention_mask]: new ort.Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]),
    };
    this.cacheNames.forEach(([past], i) => { feeds[past] = this.cache[i]; });
    const out = await this.session.run(feeds);
    const old = this.cache;
    this.cache = this.cacheNames.map(([, present]) => out[present]);
    old.forEach((t) => t.location === "gpu-buffer" && t.dispose());
    const logits = out[this.names.logits];
    const data = logits.location === "gpu-buffer" ? await logits.getData(true) : logits.data;
    const vocab = logits.dims[logits.dims.length - 1];
    this.position = total;
    return data.subarray(data.length - vocab);
  }

  // greedy unless temperature > 0 (then top-p sampling); yields {id, text} per new token
  // onStatus({phase: "prefill", tokens}) before the prompt goes through the model
  async *generate(prompt, { maxNewTokens = 32, temperature = 0, topP = 1, seed = 1, onStatus = () => {} } = {}) {
    this.reset();
    const ids = this.encode(prompt);
    if (ids.length >= this.contextLength) throw new Error(`the prompt is ${ids.length} tokens, the context holds ${this.contextLength}`);
    maxNewTokens = Math.min(maxNewTokens, this.contextLength - ids.length);
    const random = mulberry32(seed);
    onStatus({ phase: "prefill", tokens: ids.length });
    let logits = await this.forward(ids);
    const generated = [];
    const eos = this.genai.model.eos_token_id;
    for (let step = 0; step < maxNewTokens; step++) {
      const id = temperature > 0 ? sample(logits, temperature, topP, random) : argmax(logits);
      if (id === eos || (Array.isArray(eos) && eos.includes(id))) break;
      const before = this.decode(generated);
      generated.push(id);
      yield { id, text: this.decode(generated).slice(before.length) };  // the whole text decoded: pieces of one character join
      if (step + 1 < maxNewTokens) logits = await this.forward([id]);
    }
  }
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function sample(logits, temperature, topP, random) {
  const max = logits[argmax(logits)];  // not Math.max(...logits): a 100k-entry spread overflows the stack
  const weights = Array.from(logits, (v, i) => [Math.exp((v - max) / temperature), i]).sort((a, b) => b[0] - a[0]);
  const total = weights.reduce((s, [w]) => s + w, 0);
  let kept = 0, cut = weights.length;
  for (let i = 0; i < weights.length; i++) { kept += weights[i][0] / total; if (kept >= topP) { cut = i + 1; break; } }
  let r = random() * weights.slice(0, cut).reduce((s, [w]) => s + w, 0);
  for (const [w, i] of weights.slice(0, cut)) { r -= w; if (r <= 0) return i; }
  return weights[0][1];
}

function mulberry32(seed) {
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
