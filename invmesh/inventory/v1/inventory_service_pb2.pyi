import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from invmesh.api.v1 import access_pb2 as _access_pb2
from invmesh.api.v1 import limits_pb2 as _limits_pb2
from invmesh.api.v1 import rest_pb2 as _rest_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MovementType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MOVEMENT_TYPE_UNSPECIFIED: _ClassVar[MovementType]
    IN: _ClassVar[MovementType]
    OUT: _ClassVar[MovementType]
    ADJUSTMENT: _ClassVar[MovementType]
MOVEMENT_TYPE_UNSPECIFIED: MovementType
IN: MovementType
OUT: MovementType
ADJUSTMENT: MovementType

class InventoryItem(_message.Message):
    __slots__ = ("product_id", "quantity", "updated_at")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    quantity: int
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, product_id: _Optional[str] = ..., quantity: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Movement(_message.Message):
    __slots__ = ("id", "product_id", "type", "quantity", "balance_after", "reason", "reference", "actor", "request_id", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_AFTER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    product_id: str
    type: MovementType
    quantity: int
    balance_after: int
    reason: str
    reference: str
    actor: str
    request_id: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., product_id: _Optional[str] = ..., type: _Optional[_Union[MovementType, str]] = ..., quantity: _Optional[int] = ..., balance_after: _Optional[int] = ..., reason: _Optional[str] = ..., reference: _Optional[str] = ..., actor: _Optional[str] = ..., request_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListInventoryItemsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInventoryItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InventoryItem]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[InventoryItem, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetInventoryItemRequest(_message.Message):
    __slots__ = ("product_id",)
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    def __init__(self, product_id: _Optional[str] = ...) -> None: ...

class GetInventoryItemResponse(_message.Message):
    __slots__ = ("item",)
    ITEM_FIELD_NUMBER: _ClassVar[int]
    item: InventoryItem
    def __init__(self, item: _Optional[_Union[InventoryItem, _Mapping]] = ...) -> None: ...

class BatchGetInventoryItemsRequest(_message.Message):
    __slots__ = ("product_ids",)
    PRODUCT_IDS_FIELD_NUMBER: _ClassVar[int]
    product_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, product_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class BatchGetInventoryItemsResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[InventoryItem]
    def __init__(self, items: _Optional[_Iterable[_Union[InventoryItem, _Mapping]]] = ...) -> None: ...

class RecordMovementRequest(_message.Message):
    __slots__ = ("product_id", "type", "quantity", "reason", "reference", "request_id")
    class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DIRECTION_UNSPECIFIED: _ClassVar[RecordMovementRequest.Direction]
        IN: _ClassVar[RecordMovementRequest.Direction]
        OUT: _ClassVar[RecordMovementRequest.Direction]
    DIRECTION_UNSPECIFIED: RecordMovementRequest.Direction
    IN: RecordMovementRequest.Direction
    OUT: RecordMovementRequest.Direction
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    type: RecordMovementRequest.Direction
    quantity: int
    reason: str
    reference: str
    request_id: str
    def __init__(self, product_id: _Optional[str] = ..., type: _Optional[_Union[RecordMovementRequest.Direction, str]] = ..., quantity: _Optional[int] = ..., reason: _Optional[str] = ..., reference: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class RecordMovementResponse(_message.Message):
    __slots__ = ("movement", "item")
    MOVEMENT_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    movement: Movement
    item: InventoryItem
    def __init__(self, movement: _Optional[_Union[Movement, _Mapping]] = ..., item: _Optional[_Union[InventoryItem, _Mapping]] = ...) -> None: ...

class SetStockRequest(_message.Message):
    __slots__ = ("product_id", "quantity", "reason", "request_id")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    quantity: int
    reason: str
    request_id: str
    def __init__(self, product_id: _Optional[str] = ..., quantity: _Optional[int] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetStockResponse(_message.Message):
    __slots__ = ("movement", "item")
    MOVEMENT_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    movement: Movement
    item: InventoryItem
    def __init__(self, movement: _Optional[_Union[Movement, _Mapping]] = ..., item: _Optional[_Union[InventoryItem, _Mapping]] = ...) -> None: ...

class ListMovementsRequest(_message.Message):
    __slots__ = ("product_id", "page_size", "page_token")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    page_size: int
    page_token: str
    def __init__(self, product_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMovementsResponse(_message.Message):
    __slots__ = ("movements", "next_page_token", "retired")
    MOVEMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    movements: _containers.RepeatedCompositeFieldContainer[Movement]
    next_page_token: str
    retired: bool
    def __init__(self, movements: _Optional[_Iterable[_Union[Movement, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., retired: _Optional[bool] = ...) -> None: ...

class DeleteInventoryItemRequest(_message.Message):
    __slots__ = ("product_id",)
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    def __init__(self, product_id: _Optional[str] = ...) -> None: ...

class DeleteInventoryItemResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
