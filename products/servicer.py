"""ProductsService over gRPC: translates protos to `Catalog` calls and back, nothing more."""

from __future__ import annotations

from invmesh.products.v1 import products_service_pb2 as pb
from invmesh.products.v1 import products_service_pb2_grpc
from mesh.interceptors import ServicerContext
from mesh.messages import timestamp
from products.catalog import Catalog, Draft, Level, ProductRow, format_price


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

    async def ListProducts(
        self, request: pb.ListProductsRequest, context: ServicerContext
    ) -> pb.ListProductsResponse:
        rows, token = await self._catalog.list(
            page_size=request.page_size, page_token=request.page_token, q=request.q
        )
        return pb.ListProductsResponse(
            products=[product_message(r, r.stock) for r in rows], next_page_token=token
        )

    async def GetProduct(
        self, request: pb.GetProductRequest, context: ServicerContext
    ) -> pb.GetProductResponse:
        row = await self._catalog.get(request.id)
        return pb.GetProductResponse(product=product_message(row, row.stock))

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
