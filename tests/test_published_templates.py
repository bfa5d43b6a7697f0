"""The chat templates Llama 3.2, Qwen2.5, Qwen3 and SmolLM2 publish, as edgelm, onnxruntime-genai and llama.cpp's
`llama-server --jinja` render them, against transformers' own `apply_chat_template`.

The templates are the publishers' text (Llama 3.2's from llama.cpp's models/templates, Qwen2.5's and
SmolLM2's from their tokenizer_config.json; Qwen3's as its release's tokenizer_config.json carries it,
put together from two public copies that agree line for line where both have it, not compared with
the hub's file here), with their special tokens in a byte-level BPE trained here
(the published vocabularies are not on this machine) and each family's special-token names. Each
conversation is three user turns, with and without a system prompt: Qwen2.5 and SmolLM2 write their own
default system turn when none is given; Llama 3.2 prints today's date from `strftime_now`.
"""

import json
from pathlib import Path

import pytest
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from edgelm.chat import Conversation
from edgelm.export.gguf import export_gguf
from edgelm.export.onnx import export_onnx
from edgelm.formats import LoadOptions, open_artifact
from edgelm.models import open_checkpoint
from edgelm.quantize.calibration import DEFAULT_TEXTS

from .test_chat import LLAMA_SERVER, _llama_server_template

LLAMA_32 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN_25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

QWEN_3 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are "
           "a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] "
           "+ '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
           "{% endif %}")

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|endoftext|>",
            "<|im_start|>", "<|im_end|>"]
# family → (config class, template, tokenizer_config's special tokens as published)
PUBLISHED = {
    "llama3.2": (transformers.LlamaConfig, LLAMA_32, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "qwen2.5": (transformers.Qwen2Config, QWEN_25, {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
    "smollm2": (transformers.LlamaConfig, SMOLLM2, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}),
    "qwen3": (transformers.Qwen3Config, QWEN_3, {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}),
}
MODEL_CLASSES = {transformers.Qwen2Config: transformers.Qwen2ForCausalLM, transformers.Qwen3Config: transformers.Qwen3ForCausalLM}
SYSTEM = "You are a patient reader of Jane Austen."
EXCHANGES = [("Who is Emma Woodhouse?", "The heroine of Emma."), ("Where does she live?", "At Hartfield, in Highbury."),
             ("And Mr. Knightley?", "Her neighbour at Donwell Abbey.")]


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([DEFAULT_TEXTS[0].read_text()], trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def published(tmp_path_factory, tokenizer_json):
    made = {}

    def get(family):
        if family not in made:
            config_class, template, specials = PUBLISHED[family]
            folder = tmp_path_factory.mktemp(family.replace(".", "")) / "model"
            config = config_class(vocab_size=Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(), hidden_size=64,
                                  intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                  max_position_embeddings=512, tie_word_embeddings=True)
            MODEL_CLASSES.get(config_class, transformers.LlamaForCausalLM)(config).save_pretrained(folder)
            (folder / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
            (folder / "tokenizer_config.json").write_text(json.dumps(specials | {
                "chat_template": template, "add_bos_token": False, "tokenizer_class": "PreTrainedTokenizerFast"}))
            made[family] = folder
        return made[family]

    return get


def conversations():
    """Every prefix of the chat a person holds, with and without a system prompt: (messages, user turns)."""
    for system in (None, SYSTEM):
        messages = [{"role": "system", "content": system}] if system else []
        for user, reply in EXCHANGES:
            messages = messages + [{"role": "user", "content": user}]
            yield list(messages)
            messages = messages + [{"role": "assistant", "content": reply}]


def edgelm_render(tokenizer, messages):
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    conversation = Conversation(tokenizer, 512, 16, system)
    conversation.turns = messages[1 if system else 0:-1]
    ids, dropped = conversation.prompt_ids(messages[-1]["content"])
    assert dropped == 0
    return conversation.render(conversation.turns), ids


def reference(folder, messages):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    return text, list(ids)


@pytest.mark.parametrize("family", PUBLISHED)
@pytest.mark.parametrize("form", ["folder", "gguf"])
def test_edgelm_renders_and_encodes_as_transformers(published, tmp_path, family, form):
    folder = published(family)
    path = folder if form == "folder" else export_gguf(open_checkpoint(folder, position_encoding="rope"), tmp_path / "m.gguf",
                                                        "f16", certificate=False).path
    compared = 0
    with open_artifact(path, LoadOptions(context_length=512, position_encoding="rope" if form == "folder" else None)) as artifact:
        for messages in conversations():
            text, ids = edgelm_render(artifact.tokenizer, messages)
            assert (text, ids) == reference(folder, messages)
            compared += 1
    assert compared == 6


@pytest.mark.parametrize("family", PUBLISHED)
def test_onnxruntime_genai_renders_as_transformers(published, tmp_path, family):
    import onnxruntime_genai as og

    folder = published(family)
    onnx = export_onnx(open_checkpoint(folder, position_encoding="rope"), tmp_path / "onnx", "f32", certificate=False).path
    tokenizer = og.Tokenizer(og.Model(str(onnx)))
    template = (onnx / "chat_template.jinja").read_text() if (onnx / "chat_template.jinja").exists() else \
        json.loads((onnx / "tokenizer_config.json").read_text())["chat_template"]
    assert template == PUBLISHED[family][1]
    for messages in conversations():
        rendered = tokenizer.apply_chat_template(json.dumps(messages), template_str=template, add_generation_prompt=True)
        assert rendered == reference(folder, messages)[0]


@pytest.mark.skipif(not LLAMA_SERVER.exists(), reason="build/llama-server is missing: `make test` builds it (make build/llama-server)")
@pytest.mark.parametrize("family", PUBLISHED)
def test_llama_server_jinja_renders_as_transformers(published, tmp_path, family):
    folder = published(family)
    gguf = export_gguf(open_checkpoint(folder, position_encoding="rope"), tmp_path / "m.gguf", "f16", certificate=False).path
    messages = list(conversations())[-1]  # the longest, with the system prompt
    assert _llama_server_template(gguf, messages, tmp_path / "server.log") == reference(folder, messages)[0]


TOOL_RESULT = [{"role": "user", "content": "Is it raining at Hartfield?"}, {"role": "assistant", "content": "Let me look."},
               {"role": "tool", "content": '{"weather": "rain"}'}]


@pytest.mark.parametrize("form", ["folder", "gguf"])
def test_qwen3_thinking_off_and_a_tool_result_render_as_transformers(published, tmp_path, run_cli, form):
    """Stranger findings: Qwen3's thinking could not be switched off (nothing set the template's enable_thinking,
    which transformers' apply_chat_template(enable_thinking=False) and llama-server's chat_template_kwargs set), and
    Model.chat refused a tool's result (role "tool"), which Qwen's templates render. Both as transformers gives them."""
    import edgelm

    folder = published("qwen3")
    path = folder if form == "folder" else export_gguf(open_checkpoint(folder, position_encoding="rope"), tmp_path / "m.gguf",
                                                        "f16", certificate=False).path
    hf = transformers.AutoTokenizer.from_pretrained(folder)
    cases = [([{"role": "user", "content": EXCHANGES[0][0]}], {"enable_thinking": False}), (TOOL_RESULT, {})]
    options = LoadOptions(context_length=512, position_encoding="rope" if form == "folder" else None)
    with open_artifact(path, options) as artifact:
        for messages, variables in cases:
            conversation = Conversation(artifact.tokenizer, 512, 16, template_kwargs=variables)
            conversation.turns = messages[:-1]
            ids, _ = conversation.prompt_ids(messages[-1]["content"], messages[-1]["role"])
            expected = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False, **variables)
            assert ids == list(expected["input_ids"] if isinstance(expected, dict) else expected)
            assert (hf.decode(ids).endswith("<think>\n\n</think>\n\n")) == bool(variables)
    model = edgelm.load(path, position_encoding="rope" if form == "folder" else None, context_length=512)
    assert isinstance(model.chat(TOOL_RESULT, max_new_tokens=2, chat_template_kwargs={"enable_thinking": False}), str)
    for given, words in (("[false]", "is a JSON list, not an object"), ("{enable_thinking: false}", "is not valid JSON"),
                         ('{"messages": []}', "variable messages is set by edgelm"),
                         ('{"a": NaN}', "not JSON data"), ('{"a": 1e999}', "not JSON data")):  # stranger round 12: tracebacks
        code, out, err = run_cli("chat", path, "--chat-template-kwargs", given)
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def _llama_cpp_chatml(messages) -> str:
    """llama.cpp's own rendering of `messages` by its built-in chatml template (llama_chat_apply_template, the C API its
    Android and iOS examples call), which it falls back to for a model without a template."""
    import ctypes

    import llama_cpp

    chat = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(role=m["role"].encode(), content=m["content"].encode()) for m in messages])
    buffer = ctypes.create_string_buffer(1 << 16)
    length = llama_cpp.llama_chat_apply_template(b"chatml", chat, len(messages), True, buffer, len(buffer))
    assert 0 < length <= len(buffer)
    return buffer.raw[:length].decode()


def test_a_chatml_vocabulary_without_a_template_chats_in_chatml_as_llama_cpp(published, tmp_path):
    """Stranger finding: a model whose vocabulary has <|im_start|> and <|im_end|> and no chat template chatted in plain
    User:/Assistant: lines, which it never saw in training; llama.cpp falls back to ChatML. Rendered as llama.cpp's
    chatml renders it; a vocabulary without those markers keeps the plain template."""
    import shutil

    folder = shutil.copytree(published("qwen2.5"), tmp_path / "untemplated")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    with open_artifact(folder, LoadOptions(context_length=512, position_encoding="rope")) as artifact:
        for messages in conversations():
            conversation = Conversation(artifact.tokenizer, 512, 16, messages[0]["content"] if messages[0]["role"] == "system" else None)
            assert conversation.template_name.startswith("ChatML")
            conversation.turns = messages[1 if conversation.system else 0:-1]
            assert conversation.render(conversation.turns + messages[-1:]) == _llama_cpp_chatml(messages)
    from edgelm.chat import PLAIN_TEMPLATE
    from edgelm.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(Path(__file__).resolve().parents[1] / "examples" / "models" / "tiny-rope")  # no ChatML markers
    tokenizer.config = {k: v for k, v in tokenizer.config.items() if k != "chat_template"}
    plain = Conversation(tokenizer, 512, 16)
    assert plain.template_source == PLAIN_TEMPLATE and plain.template_name.startswith("a plain")
