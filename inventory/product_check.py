"""Whether a product exists, as the products service says, remembered for a while.

Every movement and stock read names a product, and asking the products service each time
costs a gRPC round trip per call. A confirmed product is remembered for `ttl` seconds, so a
product in use is asked about about once a `ttl`. Only existence is remembered, never absence:
a product created a moment ago must be usable at once.

A product deleted meanwhile is still refused at once: the products service retires its
inventory item before DeleteProduct answers (when inventory is up), this replica forgets it
then, and every change and read checks the item's `retired_at` in its own transaction anyway.
Only while that retirement cannot be delivered may another replica accept a movement on it,
for at most `ttl` seconds; the retirement then keeps the ledger, movement included.
"""

from __future__ import annotations

import grpc
from cachetools import TTLCache

from invmesh.products.v1 import products_service_pb2, products_service_pb2_grpc
from mesh.errors import NotFound, Unavailable, from_peer

REMEMBERED = 50_000  # products; the least recently used confirmation goes first beyond that


class ProductCheck:
    def __init__(
        self, products: products_service_pb2_grpc.ProductsServiceStub, *, ttl: float, size: int = REMEMBERED
    ) -> None:
        self._products = products
        self._confirmed: TTLCache[str, bool] | None = TTLCache(size, ttl) if ttl > 0 else None

    async def confirm(self, product_id: str) -> None:
        """Returns if the product exists; NOT_FOUND if not; UNAVAILABLE if nobody can say."""
        if self._confirmed is not None and product_id in self._confirmed:
            return
        try:
            reply = await self._products.BatchGetProducts(
                products_service_pb2.BatchGetProductsRequest(ids=[product_id])
            )
        except grpc.aio.AioRpcError as error:
            outage = Unavailable(
                f"the products service could not confirm product {product_id}; retry later",
                reason="PRODUCTS_UNAVAILABLE",
            )
            raise from_peer(error, outage) from None
        if not any(product.id == product_id for product in reply.products):
            self.forget(product_id)
            raise not_found(product_id)
        if self._confirmed is not None:
            self._confirmed[product_id] = True

    def forget(self, product_id: str) -> None:
        """The product was retired: ask again next time."""
        if self._confirmed is not None:
            self._confirmed.pop(product_id, None)


def not_found(product_id: str) -> NotFound:
    return NotFound(f"product {product_id} does not exist", reason="PRODUCT_NOT_FOUND")
