from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExecuteCommand(_message.Message):
    __slots__ = ("argv", "env", "timeout_s")
    class EnvironmentEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: bytes
        value: bytes
        def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...
    ARGV_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    argv: _containers.RepeatedScalarFieldContainer[bytes]
    env: _containers.RepeatedCompositeFieldContainer[ExecuteCommand.EnvironmentEntry]
    timeout_s: int
    def __init__(self, argv: _Optional[_Iterable[bytes]] = ..., env: _Optional[_Iterable[_Union[ExecuteCommand.EnvironmentEntry, _Mapping]]] = ..., timeout_s: _Optional[int] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("exit_code", "stderr", "timed_out_after_s")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    stderr: str
    timed_out_after_s: int
    def __init__(self, exit_code: _Optional[int] = ..., stderr: _Optional[str] = ..., timed_out_after_s: _Optional[int] = ...) -> None: ...

class ExecuteCancel(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecuteEvent(_message.Message):
    __slots__ = ("command", "cancel")
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    command: ExecuteCommand
    cancel: ExecuteCancel
    def __init__(self, command: _Optional[_Union[ExecuteCommand, _Mapping]] = ..., cancel: _Optional[_Union[ExecuteCancel, _Mapping]] = ...) -> None: ...

class ExecuteCommandStream(_message.Message):
    __slots__ = ("request", "id")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    request: ExecuteCommand
    id: int
    def __init__(self, request: _Optional[_Union[ExecuteCommand, _Mapping]] = ..., id: _Optional[int] = ...) -> None: ...

class ExecuteResponseStream(_message.Message):
    __slots__ = ("response", "id")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    response: ExecuteResponse
    id: int
    def __init__(self, response: _Optional[_Union[ExecuteResponse, _Mapping]] = ..., id: _Optional[int] = ...) -> None: ...
