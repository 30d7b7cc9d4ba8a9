from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdvertiseKeys(_message.Message):
    __slots__ = ("client_id", "c_pk", "s_pk", "signature", "inbox_root", "inbox_keys")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    C_PK_FIELD_NUMBER: _ClassVar[int]
    S_PK_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    INBOX_ROOT_FIELD_NUMBER: _ClassVar[int]
    INBOX_KEYS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    c_pk: bytes
    s_pk: bytes
    signature: bytes
    inbox_root: bytes
    inbox_keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, client_id: _Optional[str] = ..., c_pk: _Optional[bytes] = ..., s_pk: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., inbox_root: _Optional[bytes] = ..., inbox_keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("from_client_id", "to_client_id", "ciphertext", "signature", "proof")
    FROM_CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TO_CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    from_client_id: str
    to_client_id: str
    ciphertext: bytes
    signature: bytes
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, from_client_id: _Optional[str] = ..., to_client_id: _Optional[str] = ..., ciphertext: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ShareKeys(_message.Message):
    __slots__ = ("client_id", "shares", "signature")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    signature: bytes
    def __init__(self, client_id: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ConsistencySignature(_message.Message):
    __slots__ = ("client_id", "signature")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    signature: bytes
    def __init__(self, client_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class KeyShare(_message.Message):
    __slots__ = ("owner_client_id", "share")
    OWNER_CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner_client_id: str
    share: bytes
    def __init__(self, owner_client_id: _Optional[str] = ..., share: _Optional[bytes] = ...) -> None: ...

class UnmaskResponse(_message.Message):
    __slots__ = ("client_id", "self_mask_shares", "mask_key_shares")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[KeyShare]
    mask_key_shares: _containers.RepeatedCompositeFieldContainer[KeyShare]
    def __init__(self, client_id: _Optional[str] = ..., self_mask_shares: _Optional[_Iterable[_Union[KeyShare, _Mapping]]] = ..., mask_key_shares: _Optional[_Iterable[_Union[KeyShare, _Mapping]]] = ...) -> None: ...

class KeyBroadcast(_message.Message):
    __slots__ = ("session_id", "keys", "inbox_keys")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    INBOX_KEYS_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    keys: _containers.RepeatedCompositeFieldContainer[AdvertiseKeys]
    inbox_keys: _containers.RepeatedCompositeFieldContainer[SecAggInboxKey]
    def __init__(self, session_id: _Optional[bytes] = ..., keys: _Optional[_Iterable[_Union[AdvertiseKeys, _Mapping]]] = ..., inbox_keys: _Optional[_Iterable[_Union[SecAggInboxKey, _Mapping]]] = ...) -> None: ...

class SecAggInboxKey(_message.Message):
    __slots__ = ("owner_client_id", "key", "proof")
    OWNER_CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    owner_client_id: str
    key: bytes
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, owner_client_id: _Optional[str] = ..., key: _Optional[bytes] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SecAggShareComplaint(_message.Message):
    __slots__ = ("accused_client_id", "ciphertext", "share_signature", "inbox_private_key", "signature", "share_proof")
    ACCUSED_CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    SHARE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    INBOX_PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SHARE_PROOF_FIELD_NUMBER: _ClassVar[int]
    accused_client_id: str
    ciphertext: bytes
    share_signature: bytes
    inbox_private_key: bytes
    signature: bytes
    share_proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, accused_client_id: _Optional[str] = ..., ciphertext: _Optional[bytes] = ..., share_signature: _Optional[bytes] = ..., inbox_private_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., share_proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ShareDelivery(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class SurvivorList(_message.Message):
    __slots__ = ("survivors", "share_senders", "masked_with")
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    SHARE_SENDERS_FIELD_NUMBER: _ClassVar[int]
    MASKED_WITH_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    share_senders: _containers.RepeatedScalarFieldContainer[str]
    masked_with: _containers.RepeatedCompositeFieldContainer[SecAggMaskedWith]
    def __init__(self, survivors: _Optional[_Iterable[str]] = ..., share_senders: _Optional[_Iterable[str]] = ..., masked_with: _Optional[_Iterable[_Union[SecAggMaskedWith, _Mapping]]] = ...) -> None: ...

class SecAggMaskedWith(_message.Message):
    __slots__ = ("client_id", "signature", "complaints")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    COMPLAINTS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    signature: bytes
    complaints: _containers.RepeatedCompositeFieldContainer[SecAggShareComplaint]
    def __init__(self, client_id: _Optional[str] = ..., signature: _Optional[bytes] = ..., complaints: _Optional[_Iterable[_Union[SecAggShareComplaint, _Mapping]]] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("survivors", "dropped", "signatures")
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    signatures: _containers.RepeatedCompositeFieldContainer[ConsistencySignature]
    def __init__(self, survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., signatures: _Optional[_Iterable[_Union[ConsistencySignature, _Mapping]]] = ...) -> None: ...
