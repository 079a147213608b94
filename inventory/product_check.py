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

import time
from collections import OrderedDict

import grpc

from invmesh.products.v1 import products_service_pb2, products_service_pb2_grpc
from mesh.errors import NotFound, Unavailable, from_peer

REMEMBERED = 50_000  # products; the oldest confirmation goes first beyond that


class ProductCheck:
    def __init__(
        self, products: products_service_pb2_grpc.ProductsServiceStub, *, ttl: float, size: int = REMEMBERED
    ) -> None:
        self._products = products
        self._ttl = ttl
        self._size = size
        self._confirmed: OrderedDict[str, float] = OrderedDict()  # product id -> when it expires

    async def confirm(self, product_id: str) -> None:
        """Returns if the product exists; NOT_FOUND if not; UNAVAILABLE if nobody can say."""
        expires = self._confirmed.get(product_id)
        if expires is not None and time.monotonic() < expires:
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
        if self._ttl > 0:
            self._remember(product_id)

    def forget(self, product_id: str) -> None:
        """The product was retired: ask again next time."""
        self._confirmed.pop(product_id, None)

    def _remember(self, product_id: str) -> None:
        self._confirmed.pop(product_id, None)  # re-inserted last, so the oldest stays first
        if len(self._confirmed) >= self._size:
            self._confirmed.popitem(last=False)
        self._confirmed[product_id] = time.monotonic() + self._ttl


def not_found(product_id: str) -> NotFound:
    return NotFound(f"product {product_id} does not exist", reason="PRODUCT_NOT_FOUND")
