import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.api import field_behavior_pb2 as _field_behavior_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
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

class ReservationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESERVATION_STATE_UNSPECIFIED: _ClassVar[ReservationState]
    ACTIVE: _ClassVar[ReservationState]
    CONFIRMED: _ClassVar[ReservationState]
    RELEASED: _ClassVar[ReservationState]
    EXPIRED: _ClassVar[ReservationState]
MOVEMENT_TYPE_UNSPECIFIED: MovementType
IN: MovementType
OUT: MovementType
ADJUSTMENT: MovementType
RESERVATION_STATE_UNSPECIFIED: ReservationState
ACTIVE: ReservationState
CONFIRMED: ReservationState
RELEASED: ReservationState
EXPIRED: ReservationState

class InventoryItem(_message.Message):
    __slots__ = ("product_id", "quantity", "updated_at", "reserved", "available", "locations", "low_stock")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    LOW_STOCK_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    quantity: int
    updated_at: _timestamp_pb2.Timestamp
    reserved: int
    available: int
    locations: _containers.RepeatedCompositeFieldContainer[LocationStock]
    low_stock: bool
    def __init__(self, product_id: _Optional[str] = ..., quantity: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reserved: _Optional[int] = ..., available: _Optional[int] = ..., locations: _Optional[_Iterable[_Union[LocationStock, _Mapping]]] = ..., low_stock: _Optional[bool] = ...) -> None: ...

class LocationStock(_message.Message):
    __slots__ = ("location_id", "on_hand", "reserved", "available", "reorder_point", "low_stock")
    LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    ON_HAND_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REORDER_POINT_FIELD_NUMBER: _ClassVar[int]
    LOW_STOCK_FIELD_NUMBER: _ClassVar[int]
    location_id: str
    on_hand: int
    reserved: int
    available: int
    reorder_point: int
    low_stock: bool
    def __init__(self, location_id: _Optional[str] = ..., on_hand: _Optional[int] = ..., reserved: _Optional[int] = ..., available: _Optional[int] = ..., reorder_point: _Optional[int] = ..., low_stock: _Optional[bool] = ...) -> None: ...

class Location(_message.Message):
    __slots__ = ("id", "code", "name", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    code: str
    name: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., code: _Optional[str] = ..., name: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Reservation(_message.Message):
    __slots__ = ("id", "product_id", "location_id", "quantity", "state", "expires_at", "reference", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    product_id: str
    location_id: str
    quantity: int
    state: ReservationState
    expires_at: _timestamp_pb2.Timestamp
    reference: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., product_id: _Optional[str] = ..., location_id: _Optional[str] = ..., quantity: _Optional[int] = ..., state: _Optional[_Union[ReservationState, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reference: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Movement(_message.Message):
    __slots__ = ("id", "product_id", "type", "quantity", "balance_after", "reason", "reference", "actor", "request_id", "created_at", "location_id", "transfer_id", "reservation_id", "actor_email")
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
    LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_EMAIL_FIELD_NUMBER: _ClassVar[int]
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
    location_id: str
    transfer_id: str
    reservation_id: str
    actor_email: str
    def __init__(self, id: _Optional[str] = ..., product_id: _Optional[str] = ..., type: _Optional[_Union[MovementType, str]] = ..., quantity: _Optional[int] = ..., balance_after: _Optional[int] = ..., reason: _Optional[str] = ..., reference: _Optional[str] = ..., actor: _Optional[str] = ..., request_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., location_id: _Optional[str] = ..., transfer_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., actor_email: _Optional[str] = ...) -> None: ...

class ListInventoryItemsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "location_id", "low_stock")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    LOW_STOCK_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    location_id: str
    low_stock: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., location_id: _Optional[str] = ..., low_stock: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("product_id", "type", "quantity", "reason", "reference", "request_id", "location_id")
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
    LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    type: RecordMovementRequest.Direction
    quantity: int
    reason: str
    reference: str
    request_id: str
    location_id: str
    def __init__(self, product_id: _Optional[str] = ..., type: _Optional[_Union[RecordMovementRequest.Direction, str]] = ..., quantity: _Optional[int] = ..., reason: _Optional[str] = ..., reference: _Optional[str] = ..., request_id: _Optional[str] = ..., location_id: _Optional[str] = ...) -> None: ...

class RecordMovementResponse(_message.Message):
    __slots__ = ("movement", "item")
    MOVEMENT_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    movement: Movement
    item: InventoryItem
    def __init__(self, movement: _Optional[_Union[Movement, _Mapping]] = ..., item: _Optional[_Union[InventoryItem, _Mapping]] = ...) -> None: ...

class SetStockRequest(_message.Message):
    __slots__ = ("product_id", "quantity", "reason", "request_id", "location_id", "reorder_point")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    REORDER_POINT_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    quantity: int
    reason: str
    request_id: str
    location_id: str
    reorder_point: int
    def __init__(self, product_id: _Optional[str] = ..., quantity: _Optional[int] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ..., location_id: _Optional[str] = ..., reorder_point: _Optional[int] = ...) -> None: ...

class SetStockResponse(_message.Message):
    __slots__ = ("movement", "item")
    MOVEMENT_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    movement: Movement
    item: InventoryItem
    def __init__(self, movement: _Optional[_Union[Movement, _Mapping]] = ..., item: _Optional[_Union[InventoryItem, _Mapping]] = ...) -> None: ...

class ListMovementsRequest(_message.Message):
    __slots__ = ("product_id", "page_size", "page_token", "type", "location_id", "start_time", "end_time")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    page_size: int
    page_token: str
    type: MovementType
    location_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, product_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., type: _Optional[_Union[MovementType, str]] = ..., location_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListMovementsResponse(_message.Message):
    __slots__ = ("movements", "next_page_token", "retired", "feed_cursor")
    MOVEMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    FEED_CURSOR_FIELD_NUMBER: _ClassVar[int]
    movements: _containers.RepeatedCompositeFieldContainer[Movement]
    next_page_token: str
    retired: bool
    feed_cursor: str
    def __init__(self, movements: _Optional[_Iterable[_Union[Movement, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., retired: _Optional[bool] = ..., feed_cursor: _Optional[str] = ...) -> None: ...

class WatchMovementsRequest(_message.Message):
    __slots__ = ("after", "product_id", "location_id")
    AFTER_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    after: str
    product_id: str
    location_id: str
    def __init__(self, after: _Optional[str] = ..., product_id: _Optional[str] = ..., location_id: _Optional[str] = ...) -> None: ...

class WatchMovementsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[MovementFeedEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[MovementFeedEvent, _Mapping]]] = ...) -> None: ...

class MovementFeedEvent(_message.Message):
    __slots__ = ("cursor", "movement", "low_stock", "restocked", "heartbeat")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    MOVEMENT_FIELD_NUMBER: _ClassVar[int]
    LOW_STOCK_FIELD_NUMBER: _ClassVar[int]
    RESTOCKED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    movement: Movement
    low_stock: StockSignal
    restocked: StockSignal
    heartbeat: Heartbeat
    def __init__(self, cursor: _Optional[str] = ..., movement: _Optional[_Union[Movement, _Mapping]] = ..., low_stock: _Optional[_Union[StockSignal, _Mapping]] = ..., restocked: _Optional[_Union[StockSignal, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class StockSignal(_message.Message):
    __slots__ = ("product_id", "location_id", "on_hand", "reorder_point", "movement_id", "created_at")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    ON_HAND_FIELD_NUMBER: _ClassVar[int]
    REORDER_POINT_FIELD_NUMBER: _ClassVar[int]
    MOVEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    location_id: str
    on_hand: int
    reorder_point: int
    movement_id: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, product_id: _Optional[str] = ..., location_id: _Optional[str] = ..., on_hand: _Optional[int] = ..., reorder_point: _Optional[int] = ..., movement_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at",)
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DeleteInventoryItemRequest(_message.Message):
    __slots__ = ("product_id",)
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    def __init__(self, product_id: _Optional[str] = ...) -> None: ...

class DeleteInventoryItemResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateTransferRequest(_message.Message):
    __slots__ = ("product_id", "from_location_id", "to_location_id", "quantity", "reason", "request_id")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    TO_LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    from_location_id: str
    to_location_id: str
    quantity: int
    reason: str
    request_id: str
    def __init__(self, product_id: _Optional[str] = ..., from_location_id: _Optional[str] = ..., to_location_id: _Optional[str] = ..., quantity: _Optional[int] = ..., reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateTransferResponse(_message.Message):
    __slots__ = ("transfer_id", "outgoing", "incoming", "item")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    OUTGOING_FIELD_NUMBER: _ClassVar[int]
    INCOMING_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    outgoing: Movement
    incoming: Movement
    item: InventoryItem
    def __init__(self, transfer_id: _Optional[str] = ..., outgoing: _Optional[_Union[Movement, _Mapping]] = ..., incoming: _Optional[_Union[Movement, _Mapping]] = ..., item: _Optional[_Union[InventoryItem, _Mapping]] = ...) -> None: ...

class ListLocationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLocationsResponse(_message.Message):
    __slots__ = ("locations", "next_page_token")
    LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    locations: _containers.RepeatedCompositeFieldContainer[Location]
    next_page_token: str
    def __init__(self, locations: _Optional[_Iterable[_Union[Location, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetLocationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetLocationResponse(_message.Message):
    __slots__ = ("location",)
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    location: Location
    def __init__(self, location: _Optional[_Union[Location, _Mapping]] = ...) -> None: ...

class CreateLocationRequest(_message.Message):
    __slots__ = ("location",)
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    location: Location
    def __init__(self, location: _Optional[_Union[Location, _Mapping]] = ...) -> None: ...

class CreateLocationResponse(_message.Message):
    __slots__ = ("location",)
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    location: Location
    def __init__(self, location: _Optional[_Union[Location, _Mapping]] = ...) -> None: ...

class UpdateLocationRequest(_message.Message):
    __slots__ = ("location", "update_mask")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    location: Location
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, location: _Optional[_Union[Location, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateLocationResponse(_message.Message):
    __slots__ = ("location",)
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    location: Location
    def __init__(self, location: _Optional[_Union[Location, _Mapping]] = ...) -> None: ...

class DeleteLocationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteLocationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateReservationRequest(_message.Message):
    __slots__ = ("product_id", "location_id", "quantity", "ttl_seconds", "reference", "request_id")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    location_id: str
    quantity: int
    ttl_seconds: int
    reference: str
    request_id: str
    def __init__(self, product_id: _Optional[str] = ..., location_id: _Optional[str] = ..., quantity: _Optional[int] = ..., ttl_seconds: _Optional[int] = ..., reference: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateReservationResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class GetReservationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetReservationResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...

class ListReservationsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "product_id", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    product_id: str
    state: ReservationState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., product_id: _Optional[str] = ..., state: _Optional[_Union[ReservationState, str]] = ...) -> None: ...

class ListReservationsResponse(_message.Message):
    __slots__ = ("reservations", "next_page_token")
    RESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    reservations: _containers.RepeatedCompositeFieldContainer[Reservation]
    next_page_token: str
    def __init__(self, reservations: _Optional[_Iterable[_Union[Reservation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ConfirmReservationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ConfirmReservationResponse(_message.Message):
    __slots__ = ("reservation", "movement")
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    MOVEMENT_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    movement: Movement
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ..., movement: _Optional[_Union[Movement, _Mapping]] = ...) -> None: ...

class ReleaseReservationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ReleaseReservationResponse(_message.Message):
    __slots__ = ("reservation",)
    RESERVATION_FIELD_NUMBER: _ClassVar[int]
    reservation: Reservation
    def __init__(self, reservation: _Optional[_Union[Reservation, _Mapping]] = ...) -> None: ...
