"""kimi-free-api's sans-I/O translator: OpenAI chat completions ⇄ Kimi's web protocol.

Everything the proxy decides about the protocol is decided here, with no I/O, clock or randomness,
so it can be tested without a network. See docs/translator.md for the API and a worked example.

    plan = plan_chat(openai_request)                    # validate, resolve the model, flatten
    call = completion_call(conversation_id, prompt=plan.prompt, flags=plan.flags)
    translator = ResponseTranslator(LegacyDecoder(), completion_id=conversation_id,
                                    model=plan.model, created=now)
    for data in kimi_body:                              # any split of the bytes
        for chunk in translator.feed(data): send(encode_sse(chunk))
    for chunk in translator.close(): send(encode_sse(chunk))
    send(SSE_DONE)
"""

from __future__ import annotations

from ._dataurl import (
    DataURL,
    effective_mime,
    extension_for_mime,
    inline_name,
    kind_for_mime,
    parse_data_url,
    sniff_mime,
)
from ._errors import (
    LocalProtocolError,
    RemoteProtocolError,
    TranslatorError,
)
from ._plan import (
    ChatPlan,
    FileSource,
    InlineFile,
    KimiCall,
    Message,
    ModelFlags,
    OutputFormat,
    ToolSpec,
    UrlFile,
)
from ._sse import (
    DEFAULT_MAX_BYTES,
    SSE_DONE,
    ServerSentEvent,
    SSEDecoder,
    encode_sse,
    encode_sse_comment,
    encode_sse_event,
)
from ._upstream import (
    ContentFiltered,
    ConversationStarted,
    Finished,
    LengthStop,
    MessageId,
    Noise,
    ReasoningDelta,
    SearchResult,
    StreamDecoder,
    TextDelta,
    Unknown,
    UpstreamEvent,
    UpstreamFailure,
)
from ._usage import (
    estimate_tokens,
    token_weight,
    usage_for,
)
from .anthropic._errors import (
    ANTHROPIC_ERROR_TYPES,
    OVERLOADED_STATUS,
    anthropic_error,
)
from .anthropic._request import (
    CLAUDE_MODEL,
    CLAUDE_THINKING_MODEL,
    MAX_STOP_SEQUENCES,
    MessagesCall,
    translate_messages,
)
from .anthropic._stream import (
    STOP_REASONS,
    MessagesEncoder,
    encode_event,
    fold_message,
    thinking_signature,
)
from .chat._assembler import (
    Assembler,
    ShapedAssembler,
    State,
)
from .chat._fold import (
    fold_completion,
)
from .chat._messages import (
    LATEST_FILES_HINT,
    LATEST_HINT,
    flatten_messages,
    normalise_messages,
    wrap_urls,
)
from .chat._models import (
    K1_AGENT_ID,
    MODEL_CATALOG,
    MODEL_NAME,
    MODEL_TABLE,
    ModelRule,
    model_list,
    resolve_model,
)
from .chat._request import (
    plan_chat,
)
from .chat._response import (
    ResponseTranslator,
)
from .chat._validate import (
    check_conversation_id,
    validate_request,
)
from .connect._calls import (
    CHAT_SERVICE,
    DELETE_CHAT_SERVICE,
    DELETE_CHAT_SERVICES,
    DeleteOutcome,
    chat_call,
    delete_chat_call,
    delete_outcome,
    session_headers,
    validate_chat_id,
)
from .connect._frames import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    Envelope,
    EnvelopeDecoder,
    encode_envelope,
)
from .connect._jwt import (
    JwtClaims,
    decode_jwt_claims,
)
from .connect._models import (
    AVAILABLE_MODELS_PATH,
    BUILTIN_CATALOG,
    KimiModel,
    ModelCatalog,
    OfferedModel,
    available_models_call,
    catalog_changes,
    catalog_model_list,
    offered_models,
    read_model_catalog,
    with_catalog,
)
from .connect._stream import (
    MODERATION_REASON_MARKERS,
    ConnectDecoder,
    connect_error,
)
from .legacy._calls import (
    REFRESH_PATH,
    UploadedFile,
    completion_call,
    continuation_call,
    create_conversation_call,
    delete_conversation_call,
    parse_process_call,
    presign_call,
    refresh_token_call,
    register_file_call,
    research_usage_call,
    user_call,
)
from .legacy._errors import (
    error_for_type,
    is_moderation,
    kimi_error,
    retry_after_seconds,
)
from .legacy._stream import (
    KimiEvent,
    LegacyDecoder,
    parse_kimi_event,
)
from .responses._request import (
    ResponsesPlan,
    plan_responses,
)
from .responses._stream import (
    ResponsesEncoder,
    fold_response,
)
from .tools._calls import (
    CallProblem,
    ToolCall,
    decode_json_value,
    validate_call,
)
from .tools._json_schema import (
    check_schema,
    schema_problem,
)
from .tools._parser import (
    RawCall,
    ToolCallParser,
)
from .tools._prompt import (
    CALL_CLOSE,
    CHOICE_RULES,
    OUTPUT_JSON,
    OUTPUT_SCHEMA,
    PARALLEL_RULES,
    REPAIR_LEAD,
    RESULT_CLOSE,
    TOOLS_CLOSE,
    TOOLS_OPEN,
    assistant_text,
    compose_prompt,
    output_instructions,
    plan_prompt,
    render_call,
    render_result,
    repair_json_prompt,
    repair_missing_call_prompt,
    repair_tool_prompt,
    tool_instructions,
    tool_name_problem,
)
from .tools._shaper import (
    AnswerShaper,
    Outcome,
)

__all__ = [
    "ANTHROPIC_ERROR_TYPES",
    "AVAILABLE_MODELS_PATH",
    "BUILTIN_CATALOG",
    "CALL_CLOSE",
    "CHAT_SERVICE",
    "CHOICE_RULES",
    "CLAUDE_MODEL",
    "CLAUDE_THINKING_MODEL",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DELETE_CHAT_SERVICE",
    "DELETE_CHAT_SERVICES",
    "FLAG_COMPRESSED",
    "FLAG_END_STREAM",
    "K1_AGENT_ID",
    "LATEST_FILES_HINT",
    "LATEST_HINT",
    "MAX_STOP_SEQUENCES",
    "MODEL_CATALOG",
    "MODEL_NAME",
    "MODEL_TABLE",
    "MODERATION_REASON_MARKERS",
    "OUTPUT_JSON",
    "OUTPUT_SCHEMA",
    "OVERLOADED_STATUS",
    "PARALLEL_RULES",
    "REFRESH_PATH",
    "REPAIR_LEAD",
    "RESULT_CLOSE",
    "SSE_DONE",
    "STOP_REASONS",
    "TOOLS_CLOSE",
    "TOOLS_OPEN",
    "AnswerShaper",
    "Assembler",
    "CallProblem",
    "ChatPlan",
    "ConnectDecoder",
    "ContentFiltered",
    "ConversationStarted",
    "DataURL",
    "DeleteOutcome",
    "Envelope",
    "EnvelopeDecoder",
    "FileSource",
    "Finished",
    "InlineFile",
    "JwtClaims",
    "KimiCall",
    "KimiEvent",
    "KimiModel",
    "LegacyDecoder",
    "LengthStop",
    "LocalProtocolError",
    "Message",
    "MessageId",
    "MessagesCall",
    "MessagesEncoder",
    "ModelCatalog",
    "ModelFlags",
    "ModelRule",
    "Noise",
    "OfferedModel",
    "Outcome",
    "OutputFormat",
    "RawCall",
    "ReasoningDelta",
    "RemoteProtocolError",
    "ResponseTranslator",
    "ResponsesEncoder",
    "ResponsesPlan",
    "SSEDecoder",
    "SearchResult",
    "ServerSentEvent",
    "ShapedAssembler",
    "State",
    "StreamDecoder",
    "TextDelta",
    "ToolCall",
    "ToolCallParser",
    "ToolSpec",
    "TranslatorError",
    "Unknown",
    "UploadedFile",
    "UpstreamEvent",
    "UpstreamFailure",
    "UrlFile",
    "anthropic_error",
    "assistant_text",
    "available_models_call",
    "catalog_changes",
    "catalog_model_list",
    "chat_call",
    "check_conversation_id",
    "check_schema",
    "completion_call",
    "compose_prompt",
    "connect_error",
    "continuation_call",
    "create_conversation_call",
    "decode_json_value",
    "decode_jwt_claims",
    "delete_chat_call",
    "delete_conversation_call",
    "delete_outcome",
    "effective_mime",
    "encode_envelope",
    "encode_event",
    "encode_sse",
    "encode_sse_comment",
    "encode_sse_event",
    "error_for_type",
    "estimate_tokens",
    "extension_for_mime",
    "flatten_messages",
    "fold_completion",
    "fold_message",
    "fold_response",
    "inline_name",
    "is_moderation",
    "kimi_error",
    "kind_for_mime",
    "model_list",
    "normalise_messages",
    "offered_models",
    "output_instructions",
    "parse_data_url",
    "parse_kimi_event",
    "parse_process_call",
    "plan_chat",
    "plan_prompt",
    "plan_responses",
    "presign_call",
    "read_model_catalog",
    "refresh_token_call",
    "register_file_call",
    "render_call",
    "render_result",
    "repair_json_prompt",
    "repair_missing_call_prompt",
    "repair_tool_prompt",
    "research_usage_call",
    "resolve_model",
    "retry_after_seconds",
    "schema_problem",
    "session_headers",
    "sniff_mime",
    "thinking_signature",
    "token_weight",
    "tool_instructions",
    "tool_name_problem",
    "translate_messages",
    "usage_for",
    "user_call",
    "validate_call",
    "validate_chat_id",
    "validate_request",
    "with_catalog",
    "wrap_urls",
]
