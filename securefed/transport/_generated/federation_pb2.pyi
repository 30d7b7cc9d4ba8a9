from . import secagg_pb2 as _secagg_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_REGISTER: _ClassVar[Stage]
    STAGE_PLAN: _ClassVar[Stage]
    STAGE_ADVERTISE_KEYS: _ClassVar[Stage]
    STAGE_SHARE_KEYS: _ClassVar[Stage]
    STAGE_MASKED_INPUT: _ClassVar[Stage]
    STAGE_CONSISTENCY_CHECK: _ClassVar[Stage]
    STAGE_UNMASK: _ClassVar[Stage]
    STAGE_CIPHERTEXT_UPLOAD: _ClassVar[Stage]
    STAGE_PLAINTEXT_UPLOAD: _ClassVar[Stage]
    STAGE_AGGREGATE: _ClassVar[Stage]
    STAGE_PRIVACY_REPORT: _ClassVar[Stage]
    STAGE_STATUS: _ClassVar[Stage]

class AggregationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_MODE_UNSPECIFIED: _ClassVar[AggregationMode]
    AGGREGATION_MODE_SECAGG: _ClassVar[AggregationMode]
    AGGREGATION_MODE_CKKS: _ClassVar[AggregationMode]
    AGGREGATION_MODE_PLAINTEXT: _ClassVar[AggregationMode]

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_FEDAVG: _ClassVar[Strategy]
    STRATEGY_FEDPROX: _ClassVar[Strategy]
    STRATEGY_SCAFFOLD: _ClassVar[Strategy]
    STRATEGY_FEDNOVA: _ClassVar[Strategy]

class PlanDeclineKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLAN_DECLINE_KIND_UNSPECIFIED: _ClassVar[PlanDeclineKind]
    PLAN_DECLINE_KIND_POLICY: _ClassVar[PlanDeclineKind]
    PLAN_DECLINE_KIND_PRIVACY_BUDGET: _ClassVar[PlanDeclineKind]
    PLAN_DECLINE_KIND_PLANNED_ROUNDS_DONE: _ClassVar[PlanDeclineKind]
    PLAN_DECLINE_KIND_BASE_MODEL: _ClassVar[PlanDeclineKind]
    PLAN_DECLINE_KIND_LIBRARY_VERSIONS: _ClassVar[PlanDeclineKind]
    PLAN_DECLINE_KIND_LOCAL_STORAGE: _ClassVar[PlanDeclineKind]

class FederationEnding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEDERATION_ENDING_UNSPECIFIED: _ClassVar[FederationEnding]
    FEDERATION_ENDING_COMPLETED: _ClassVar[FederationEnding]
    FEDERATION_ENDING_BUDGET_EXHAUSTED: _ClassVar[FederationEnding]
    FEDERATION_ENDING_GAVE_UP: _ClassVar[FederationEnding]

class RingBits(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RING_BITS_UNSPECIFIED: _ClassVar[RingBits]
    RING_BITS_32: _ClassVar[RingBits]
    RING_BITS_64: _ClassVar[RingBits]

class AggregateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATE_KIND_UNSPECIFIED: _ClassVar[AggregateKind]
    AGGREGATE_KIND_GLOBAL_ADAPTER: _ClassVar[AggregateKind]
    AGGREGATE_KIND_CKKS_CIPHERTEXT_SUM: _ClassVar[AggregateKind]

class TransferKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_KIND_UNSPECIFIED: _ClassVar[TransferKind]
    TRANSFER_KIND_RING_VECTOR: _ClassVar[TransferKind]
    TRANSFER_KIND_CIPHERTEXTS: _ClassVar[TransferKind]

class RoundState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_STATE_UNSPECIFIED: _ClassVar[RoundState]
    ROUND_STATE_IDLE: _ClassVar[RoundState]
    ROUND_STATE_RUNNING: _ClassVar[RoundState]
    ROUND_STATE_AGGREGATING: _ClassVar[RoundState]
    ROUND_STATE_ABORTED: _ClassVar[RoundState]
    ROUND_STATE_FINISHED: _ClassVar[RoundState]

class MemberActivity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MEMBER_ACTIVITY_UNSPECIFIED: _ClassVar[MemberActivity]
    MEMBER_ACTIVITY_PREPARING: _ClassVar[MemberActivity]
    MEMBER_ACTIVITY_TRAINING: _ClassVar[MemberActivity]
    MEMBER_ACTIVITY_PROTECTING: _ClassVar[MemberActivity]
    MEMBER_ACTIVITY_WAITING: _ClassVar[MemberActivity]

class SecurityAlertKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SECURITY_ALERT_KIND_UNSPECIFIED: _ClassVar[SecurityAlertKind]
    SECURITY_ALERT_KIND_PLAN_REFUSED: _ClassVar[SecurityAlertKind]
    SECURITY_ALERT_KIND_DIGEST_MISMATCH: _ClassVar[SecurityAlertKind]
    SECURITY_ALERT_KIND_LEDGER_CONFLICT: _ClassVar[SecurityAlertKind]
    SECURITY_ALERT_KIND_AUTHENTICATION: _ClassVar[SecurityAlertKind]
STAGE_UNSPECIFIED: Stage
STAGE_REGISTER: Stage
STAGE_PLAN: Stage
STAGE_ADVERTISE_KEYS: Stage
STAGE_SHARE_KEYS: Stage
STAGE_MASKED_INPUT: Stage
STAGE_CONSISTENCY_CHECK: Stage
STAGE_UNMASK: Stage
STAGE_CIPHERTEXT_UPLOAD: Stage
STAGE_PLAINTEXT_UPLOAD: Stage
STAGE_AGGREGATE: Stage
STAGE_PRIVACY_REPORT: Stage
STAGE_STATUS: Stage
AGGREGATION_MODE_UNSPECIFIED: AggregationMode
AGGREGATION_MODE_SECAGG: AggregationMode
AGGREGATION_MODE_CKKS: AggregationMode
AGGREGATION_MODE_PLAINTEXT: AggregationMode
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_FEDAVG: Strategy
STRATEGY_FEDPROX: Strategy
STRATEGY_SCAFFOLD: Strategy
STRATEGY_FEDNOVA: Strategy
PLAN_DECLINE_KIND_UNSPECIFIED: PlanDeclineKind
PLAN_DECLINE_KIND_POLICY: PlanDeclineKind
PLAN_DECLINE_KIND_PRIVACY_BUDGET: PlanDeclineKind
PLAN_DECLINE_KIND_PLANNED_ROUNDS_DONE: PlanDeclineKind
PLAN_DECLINE_KIND_BASE_MODEL: PlanDeclineKind
PLAN_DECLINE_KIND_LIBRARY_VERSIONS: PlanDeclineKind
PLAN_DECLINE_KIND_LOCAL_STORAGE: PlanDeclineKind
FEDERATION_ENDING_UNSPECIFIED: FederationEnding
FEDERATION_ENDING_COMPLETED: FederationEnding
FEDERATION_ENDING_BUDGET_EXHAUSTED: FederationEnding
FEDERATION_ENDING_GAVE_UP: FederationEnding
RING_BITS_UNSPECIFIED: RingBits
RING_BITS_32: RingBits
RING_BITS_64: RingBits
AGGREGATE_KIND_UNSPECIFIED: AggregateKind
AGGREGATE_KIND_GLOBAL_ADAPTER: AggregateKind
AGGREGATE_KIND_CKKS_CIPHERTEXT_SUM: AggregateKind
TRANSFER_KIND_UNSPECIFIED: TransferKind
TRANSFER_KIND_RING_VECTOR: TransferKind
TRANSFER_KIND_CIPHERTEXTS: TransferKind
ROUND_STATE_UNSPECIFIED: RoundState
ROUND_STATE_IDLE: RoundState
ROUND_STATE_RUNNING: RoundState
ROUND_STATE_AGGREGATING: RoundState
ROUND_STATE_ABORTED: RoundState
ROUND_STATE_FINISHED: RoundState
MEMBER_ACTIVITY_UNSPECIFIED: MemberActivity
MEMBER_ACTIVITY_PREPARING: MemberActivity
MEMBER_ACTIVITY_TRAINING: MemberActivity
MEMBER_ACTIVITY_PROTECTING: MemberActivity
MEMBER_ACTIVITY_WAITING: MemberActivity
SECURITY_ALERT_KIND_UNSPECIFIED: SecurityAlertKind
SECURITY_ALERT_KIND_PLAN_REFUSED: SecurityAlertKind
SECURITY_ALERT_KIND_DIGEST_MISMATCH: SecurityAlertKind
SECURITY_ALERT_KIND_LEDGER_CONFLICT: SecurityAlertKind
SECURITY_ALERT_KIND_AUTHENTICATION: SecurityAlertKind

class RequestHeader(_message.Message):
    __slots__ = ("client_id", "session_id", "round", "stage", "sequence")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    session_id: bytes
    round: int
    stage: Stage
    sequence: int
    def __init__(self, client_id: _Optional[str] = ..., session_id: _Optional[bytes] = ..., round: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., sequence: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "total_size", "data", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    total_size: int
    data: bytes
    sha256: bytes
    def __init__(self, offset: _Optional[int] = ..., total_size: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("header", "identity_public_key", "software_version", "supported_modes")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_MODES_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    identity_public_key: bytes
    software_version: str
    supported_modes: _containers.RepeatedScalarFieldContainer[AggregationMode]
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., identity_public_key: _Optional[bytes] = ..., software_version: _Optional[str] = ..., supported_modes: _Optional[_Iterable[_Union[AggregationMode, str]]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("client_id", "federation_id", "current_round", "max_message_bytes", "chunk_bytes", "heartbeat_interval_ms")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    federation_id: str
    current_round: int
    max_message_bytes: int
    chunk_bytes: int
    heartbeat_interval_ms: int
    def __init__(self, client_id: _Optional[str] = ..., federation_id: _Optional[str] = ..., current_round: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class StrategyParams(_message.Message):
    __slots__ = ("strategy", "proximal_mu", "server_learning_rate", "client_learning_rate", "local_epochs", "max_local_steps")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    SERVER_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_LOCAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    strategy: Strategy
    proximal_mu: float
    server_learning_rate: float
    client_learning_rate: float
    local_epochs: int
    max_local_steps: int
    def __init__(self, strategy: _Optional[_Union[Strategy, str]] = ..., proximal_mu: _Optional[float] = ..., server_learning_rate: _Optional[float] = ..., client_learning_rate: _Optional[float] = ..., local_epochs: _Optional[int] = ..., max_local_steps: _Optional[int] = ...) -> None: ...

class SecAggParams(_message.Message):
    __slots__ = ("threshold", "neighbours", "ring_bits", "frac_bits", "clip")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    RING_BITS_FIELD_NUMBER: _ClassVar[int]
    FRAC_BITS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    threshold: int
    neighbours: int
    ring_bits: int
    frac_bits: int
    clip: float
    def __init__(self, threshold: _Optional[int] = ..., neighbours: _Optional[int] = ..., ring_bits: _Optional[int] = ..., frac_bits: _Optional[int] = ..., clip: _Optional[float] = ...) -> None: ...

class CkksParams(_message.Message):
    __slots__ = ("poly_modulus_degree", "coeff_mod_bit_sizes", "global_scale_bits", "public_context_sha256")
    POLY_MODULUS_DEGREE_FIELD_NUMBER: _ClassVar[int]
    COEFF_MOD_BIT_SIZES_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_SCALE_BITS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    poly_modulus_degree: int
    coeff_mod_bit_sizes: _containers.RepeatedScalarFieldContainer[int]
    global_scale_bits: int
    public_context_sha256: bytes
    def __init__(self, poly_modulus_degree: _Optional[int] = ..., coeff_mod_bit_sizes: _Optional[_Iterable[int]] = ..., global_scale_bits: _Optional[int] = ..., public_context_sha256: _Optional[bytes] = ...) -> None: ...

class CohortMember(_message.Message):
    __slots__ = ("client_id", "identity_public_key", "certificate")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    identity_public_key: bytes
    certificate: bytes
    def __init__(self, client_id: _Optional[str] = ..., identity_public_key: _Optional[bytes] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class RoundPlan(_message.Message):
    __slots__ = ("round", "global_adapter_sha256", "mode", "strategy", "secagg", "ckks", "cohort", "vector_length", "stage_timeout_ms", "plan_sha256", "base_model_fingerprint", "revocation_list", "federation_id", "federation_round", "expected_library_versions", "require_library_versions")
    class ExpectedLibraryVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_ADAPTER_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    CKKS_FIELD_NUMBER: _ClassVar[int]
    COHORT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    STAGE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PLAN_SHA256_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    REVOCATION_LIST_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_ROUND_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_LIBRARY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_LIBRARY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    round: int
    global_adapter_sha256: bytes
    mode: AggregationMode
    strategy: StrategyParams
    secagg: SecAggParams
    ckks: CkksParams
    cohort: _containers.RepeatedCompositeFieldContainer[CohortMember]
    vector_length: int
    stage_timeout_ms: int
    plan_sha256: bytes
    base_model_fingerprint: bytes
    revocation_list: bytes
    federation_id: str
    federation_round: int
    expected_library_versions: _containers.ScalarMap[str, str]
    require_library_versions: bool
    def __init__(self, round: _Optional[int] = ..., global_adapter_sha256: _Optional[bytes] = ..., mode: _Optional[_Union[AggregationMode, str]] = ..., strategy: _Optional[_Union[StrategyParams, _Mapping]] = ..., secagg: _Optional[_Union[SecAggParams, _Mapping]] = ..., ckks: _Optional[_Union[CkksParams, _Mapping]] = ..., cohort: _Optional[_Iterable[_Union[CohortMember, _Mapping]]] = ..., vector_length: _Optional[int] = ..., stage_timeout_ms: _Optional[int] = ..., plan_sha256: _Optional[bytes] = ..., base_model_fingerprint: _Optional[bytes] = ..., revocation_list: _Optional[bytes] = ..., federation_id: _Optional[str] = ..., federation_round: _Optional[int] = ..., expected_library_versions: _Optional[_Mapping[str, str]] = ..., require_library_versions: _Optional[bool] = ...) -> None: ...

class PlanDecision(_message.Message):
    __slots__ = ("participate", "decline_reason", "decline_kind")
    PARTICIPATE_FIELD_NUMBER: _ClassVar[int]
    DECLINE_REASON_FIELD_NUMBER: _ClassVar[int]
    DECLINE_KIND_FIELD_NUMBER: _ClassVar[int]
    participate: bool
    decline_reason: str
    decline_kind: PlanDeclineKind
    def __init__(self, participate: _Optional[bool] = ..., decline_reason: _Optional[str] = ..., decline_kind: _Optional[_Union[PlanDeclineKind, str]] = ...) -> None: ...

class PollTaskRequest(_message.Message):
    __slots__ = ("header", "max_wait_ms")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    max_wait_ms: int
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., max_wait_ms: _Optional[int] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ("retry_after_ms", "reason")
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    retry_after_ms: int
    reason: str
    def __init__(self, retry_after_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("final_round", "reason", "federation_id", "global_adapter_sha256", "ending", "ended_at", "server_certificate", "signature")
    FINAL_ROUND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_ADAPTER_SHA256_FIELD_NUMBER: _ClassVar[int]
    ENDING_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    SERVER_CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    final_round: int
    reason: str
    federation_id: str
    global_adapter_sha256: bytes
    ending: FederationEnding
    ended_at: str
    server_certificate: bytes
    signature: bytes
    def __init__(self, final_round: _Optional[int] = ..., reason: _Optional[str] = ..., federation_id: _Optional[str] = ..., global_adapter_sha256: _Optional[bytes] = ..., ending: _Optional[_Union[FederationEnding, str]] = ..., ended_at: _Optional[str] = ..., server_certificate: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RoundAborted(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class AggregateReady(_message.Message):
    __slots__ = ("total_size", "sha256")
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    total_size: int
    sha256: bytes
    def __init__(self, total_size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("request_sha256", "confirmations")
    REQUEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    request_sha256: bytes
    confirmations: _containers.RepeatedCompositeFieldContainer[_secagg_pb2.ConsistencySignature]
    def __init__(self, request_sha256: _Optional[bytes] = ..., confirmations: _Optional[_Iterable[_Union[_secagg_pb2.ConsistencySignature, _Mapping]]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("session_id", "round", "stage", "wait", "done", "plan", "key_broadcast", "share_delivery", "survivor_list", "unmask_request", "aggregate_ready", "aborted", "decrypt_request")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    KEY_BROADCAST_FIELD_NUMBER: _ClassVar[int]
    SHARE_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    SURVIVOR_LIST_FIELD_NUMBER: _ClassVar[int]
    UNMASK_REQUEST_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_READY_FIELD_NUMBER: _ClassVar[int]
    ABORTED_FIELD_NUMBER: _ClassVar[int]
    DECRYPT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    round: int
    stage: Stage
    wait: Wait
    done: Done
    plan: RoundPlan
    key_broadcast: _secagg_pb2.KeyBroadcast
    share_delivery: _secagg_pb2.ShareDelivery
    survivor_list: _secagg_pb2.SurvivorList
    unmask_request: _secagg_pb2.UnmaskRequest
    aggregate_ready: AggregateReady
    aborted: RoundAborted
    decrypt_request: DecryptRequest
    def __init__(self, session_id: _Optional[bytes] = ..., round: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., wait: _Optional[_Union[Wait, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., plan: _Optional[_Union[RoundPlan, _Mapping]] = ..., key_broadcast: _Optional[_Union[_secagg_pb2.KeyBroadcast, _Mapping]] = ..., share_delivery: _Optional[_Union[_secagg_pb2.ShareDelivery, _Mapping]] = ..., survivor_list: _Optional[_Union[_secagg_pb2.SurvivorList, _Mapping]] = ..., unmask_request: _Optional[_Union[_secagg_pb2.UnmaskRequest, _Mapping]] = ..., aggregate_ready: _Optional[_Union[AggregateReady, _Mapping]] = ..., aborted: _Optional[_Union[RoundAborted, _Mapping]] = ..., decrypt_request: _Optional[_Union[DecryptRequest, _Mapping]] = ...) -> None: ...

class SubmitResultRequest(_message.Message):
    __slots__ = ("header", "plan_decision", "advertise_keys", "share_keys", "consistency_signature", "unmask_response", "masked_input_signature")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PLAN_DECISION_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    UNMASK_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    plan_decision: PlanDecision
    advertise_keys: _secagg_pb2.AdvertiseKeys
    share_keys: _secagg_pb2.ShareKeys
    consistency_signature: _secagg_pb2.ConsistencySignature
    unmask_response: _secagg_pb2.UnmaskResponse
    masked_input_signature: _secagg_pb2.SecAggMaskedWith
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., plan_decision: _Optional[_Union[PlanDecision, _Mapping]] = ..., advertise_keys: _Optional[_Union[_secagg_pb2.AdvertiseKeys, _Mapping]] = ..., share_keys: _Optional[_Union[_secagg_pb2.ShareKeys, _Mapping]] = ..., consistency_signature: _Optional[_Union[_secagg_pb2.ConsistencySignature, _Mapping]] = ..., unmask_response: _Optional[_Union[_secagg_pb2.UnmaskResponse, _Mapping]] = ..., masked_input_signature: _Optional[_Union[_secagg_pb2.SecAggMaskedWith, _Mapping]] = ...) -> None: ...

class SubmitResultResponse(_message.Message):
    __slots__ = ("accepted", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    detail: str
    def __init__(self, accepted: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class MaskedInputChunk(_message.Message):
    __slots__ = ("header", "ring_bits", "num_elements", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RING_BITS_FIELD_NUMBER: _ClassVar[int]
    NUM_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    ring_bits: RingBits
    num_elements: int
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., ring_bits: _Optional[_Union[RingBits, str]] = ..., num_elements: _Optional[int] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class CiphertextChunk(_message.Message):
    __slots__ = ("header", "index", "count", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    index: int
    count: int
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class UploadReceipt(_message.Message):
    __slots__ = ("bytes_received", "sha256")
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    bytes_received: int
    sha256: bytes
    def __init__(self, bytes_received: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class DownloadAggregateRequest(_message.Message):
    __slots__ = ("header", "resume_content_sha256", "resume_offset")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    RESUME_CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    RESUME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    resume_content_sha256: bytes
    resume_offset: int
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., resume_content_sha256: _Optional[bytes] = ..., resume_offset: _Optional[int] = ...) -> None: ...

class AggregateChunk(_message.Message):
    __slots__ = ("round", "kind", "index", "count", "chunk", "content_sha256", "part_sizes")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    PART_SIZES_FIELD_NUMBER: _ClassVar[int]
    round: int
    kind: AggregateKind
    index: int
    count: int
    chunk: Chunk
    content_sha256: bytes
    part_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, round: _Optional[int] = ..., kind: _Optional[_Union[AggregateKind, str]] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., content_sha256: _Optional[bytes] = ..., part_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class TransferOpenRequest(_message.Message):
    __slots__ = ("header", "kind", "ring_bits", "part_sizes", "sha256")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RING_BITS_FIELD_NUMBER: _ClassVar[int]
    PART_SIZES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    kind: TransferKind
    ring_bits: RingBits
    part_sizes: _containers.RepeatedScalarFieldContainer[int]
    sha256: bytes
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., kind: _Optional[_Union[TransferKind, str]] = ..., ring_bits: _Optional[_Union[RingBits, str]] = ..., part_sizes: _Optional[_Iterable[int]] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class TransferState(_message.Message):
    __slots__ = ("transfer_id", "committed", "total_size", "complete", "chunk_bytes")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    transfer_id: bytes
    committed: int
    total_size: int
    complete: bool
    chunk_bytes: int
    def __init__(self, transfer_id: _Optional[bytes] = ..., committed: _Optional[int] = ..., total_size: _Optional[int] = ..., complete: _Optional[bool] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class TransferChunk(_message.Message):
    __slots__ = ("transfer_id", "offset", "data")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    transfer_id: bytes
    offset: int
    data: bytes
    def __init__(self, transfer_id: _Optional[bytes] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class LedgerHeaderRecord(_message.Message):
    __slots__ = ("body", "header_hash", "signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    HEADER_HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    header_hash: bytes
    signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., header_hash: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PrivacyEventReport(_message.Message):
    __slots__ = ("header", "sequence", "prev_hash", "entry", "entry_hash", "signature", "ledger_header")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    ENTRY_HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    LEDGER_HEADER_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    sequence: int
    prev_hash: bytes
    entry: bytes
    entry_hash: bytes
    signature: bytes
    ledger_header: LedgerHeaderRecord
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., sequence: _Optional[int] = ..., prev_hash: _Optional[bytes] = ..., entry: _Optional[bytes] = ..., entry_hash: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., ledger_header: _Optional[_Union[LedgerHeaderRecord, _Mapping]] = ...) -> None: ...

class PrivacyEventAck(_message.Message):
    __slots__ = ("recorded_sequence",)
    RECORDED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    recorded_sequence: int
    def __init__(self, recorded_sequence: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("header",)
    HEADER_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("protocol_version", "server_version", "client_id", "current_round", "stage", "state", "registered_clients", "cohort_size", "completed_rounds", "global_adapter_sha256", "detail")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    COHORT_SIZE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_ADAPTER_SHA256_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    server_version: str
    client_id: str
    current_round: int
    stage: Stage
    state: RoundState
    registered_clients: int
    cohort_size: int
    completed_rounds: int
    global_adapter_sha256: bytes
    detail: str
    def __init__(self, protocol_version: _Optional[str] = ..., server_version: _Optional[str] = ..., client_id: _Optional[str] = ..., current_round: _Optional[int] = ..., stage: _Optional[_Union[Stage, str]] = ..., state: _Optional[_Union[RoundState, str]] = ..., registered_clients: _Optional[int] = ..., cohort_size: _Optional[int] = ..., completed_rounds: _Optional[int] = ..., global_adapter_sha256: _Optional[bytes] = ..., detail: _Optional[str] = ...) -> None: ...

class MemberHeartbeat(_message.Message):
    __slots__ = ("header", "activity", "step", "total_steps", "epsilon_spent", "target_epsilon")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    activity: MemberActivity
    step: int
    total_steps: int
    epsilon_spent: float
    target_epsilon: float
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., activity: _Optional[_Union[MemberActivity, str]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epsilon_spent: _Optional[float] = ..., target_epsilon: _Optional[float] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("heartbeat_interval_ms", "attempt_over")
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_OVER_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_ms: int
    attempt_over: bool
    def __init__(self, heartbeat_interval_ms: _Optional[int] = ..., attempt_over: _Optional[bool] = ...) -> None: ...

class SecurityAlertReport(_message.Message):
    __slots__ = ("header", "kind", "detail")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    header: RequestHeader
    kind: SecurityAlertKind
    detail: str
    def __init__(self, header: _Optional[_Union[RequestHeader, _Mapping]] = ..., kind: _Optional[_Union[SecurityAlertKind, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class SecurityAlertAck(_message.Message):
    __slots__ = ("recorded",)
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    def __init__(self, recorded: _Optional[bool] = ...) -> None: ...
