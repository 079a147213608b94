"""ProductsService over gRPC: translates protos to `Catalog` calls and back, nothing more.

GetProduct and ListProducts send their answers as `Catalog` made and keeps them: serialized
once per read of the database (`product_answer`, `page_answer`), sent as they are
(`add_to_server`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from sqlalchemy import Row

from invmesh.products.v1 import products_service_pb2 as pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh.interceptors import ServicerContext
from mesh.messages import timestamp
from products.catalog import Catalog, Draft, Level, ProductRow, format_price

_SERVICE = pb.DESCRIPTOR.services_by_name["ProductsService"].full_name


def product_message(product: ProductRow, stock: int | None) -> pb.Product:
    return pb.Product(
        id=product.id,
        sku=product.sku,
        name=product.name,
        description=product.description,
        price=format_price(product.price_minor, product.currency),
        currency=product.currency,
        stock=stock,
        created_at=timestamp(product.created_at),
        updated_at=timestamp(product.updated_at),
    )


def product_answer(row: Row[Any]) -> bytes:
    """GetProduct's answer for a row with its stock, serialized."""
    return pb.GetProductResponse(product=product_message(row, row.stock)).SerializeToString()


def page_answer(rows: Sequence[Row[Any]], next_page_token: str) -> bytes:
    """ListProducts' answer for a page of rows with their stock, serialized."""
    products = [product_message(row, row.stock) for row in rows]
    return pb.ListProductsResponse(products=products, next_page_token=next_page_token).SerializeToString()


def _draft(product: pb.Product) -> Draft:
    return Draft(
        sku=product.sku,
        name=product.name,
        description=product.description,
        price=product.price,
        currency=product.currency,
    )


class ProductsServicer(products_service_pb2_grpc.ProductsServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    async def ListProducts(  # type: ignore[override]  # bytes, which add_to_server sends as they are
        self, request: pb.ListProductsRequest, context: ServicerContext
    ) -> bytes:
        return await self._catalog.list(
            page_size=request.page_size, page_token=request.page_token, q=request.q
        )

    async def GetProduct(  # type: ignore[override]  # bytes, which add_to_server sends as they are
        self, request: pb.GetProductRequest, context: ServicerContext
    ) -> bytes:
        return await self._catalog.get(request.id)

    async def BatchGetProducts(
        self, request: pb.BatchGetProductsRequest, context: ServicerContext
    ) -> pb.BatchGetProductsResponse:
        rows = await self._catalog.batch_get(request.ids)
        return pb.BatchGetProductsResponse(products=[product_message(row, None) for row in rows])

    async def CreateProduct(
        self, request: pb.CreateProductRequest, context: ServicerContext
    ) -> pb.CreateProductResponse:
        product = await self._catalog.create(_draft(request.product))
        return pb.CreateProductResponse(product=product_message(product, 0))  # a new product never moved

    async def UpdateProduct(
        self, request: pb.UpdateProductRequest, context: ServicerContext
    ) -> pb.UpdateProductResponse:
        mask = list(request.update_mask.paths) if request.HasField("update_mask") else None
        product, stock = await self._catalog.update(request.product.id, _draft(request.product), mask=mask)
        return pb.UpdateProductResponse(product=product_message(product, stock))

    async def DeleteProduct(
        self, request: pb.DeleteProductRequest, context: ServicerContext
    ) -> pb.DeleteProductResponse:
        await self._catalog.delete(request.id)
        return pb.DeleteProductResponse()

    async def UpdateStockLevels(
        self, request: pb.UpdateStockLevelsRequest, context: ServicerContext
    ) -> pb.UpdateStockLevelsResponse:
        await self._catalog.record_levels(
            [Level(level.product_id, level.quantity, level.version) for level in request.levels]
        )
        return pb.UpdateStockLevelsResponse()


def add_to_server(servicer: ProductsServicer, server: grpc.aio.Server) -> None:
    """Adds the servicer as add_ProductsServiceServicer_to_server does, but GetProduct and
    ListProducts send the bytes their methods return as they are (no response serializer).
    Registered again, a method's new handler replaces the first."""
    products_service_pb2_grpc.add_ProductsServiceServicer_to_server(servicer, server)
    answered_as_bytes: dict[str, grpc.RpcMethodHandler[Any, bytes]] = {
        "GetProduct": grpc.unary_unary_rpc_method_handler(
            servicer.GetProduct, request_deserializer=pb.GetProductRequest.FromString
        ),
        "ListProducts": grpc.unary_unary_rpc_method_handler(
            servicer.ListProducts, request_deserializer=pb.ListProductsRequest.FromString
        ),
    }
    server.add_registered_method_handlers(_SERVICE, answered_as_bytes)
